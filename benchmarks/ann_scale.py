"""HNSW recall and latency as the catalogue grows: fixed parameters against scaled ones.

    python benchmarks/ann_scale.py [--sizes 250000 500000] [--million] [--dim 64]
                                   [--data clustered|random] [--queries 200] [--repeats 3]
                                   [--build-threads 2] [--json results.json]

Per catalogue size, item vectors are drawn (``clustered``: 1,000 Gaussian clusters, each item
its centre plus noise, so near neighbours are crowded as in a trained model; ``random``:
standard normal) and two HNSW graphs (inner product, as exported) are built over them:

- **fixed**: the parameters serving used before they scaled (M 32, efConstruction 80, efSearch 256);
- **scaled**: :func:`rayrec.models.ann.scaled_hnsw_parameters` for the size (what export writes
  and serving uses when ``retrieval.ann`` leaves them null). Up to 250k items both are the same
  graph, built once.

Queries are fresh draws from the same distribution (new "users"). Each is answered by
``ItemIndex.search`` (the call serving makes, k = 10, nothing excluded) and by exact search;
recall@10 is the share of the exact top 10 found. ``--repeats`` query sets; printed are the
medians over them of recall@10 and of the p50 search latency (one thread, as a replica runs;
the graphs are built with ``--build-threads``). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rayrec.models.ann import (DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M, HnswParameters,  # noqa: E402
                               build_hnsw, scaled_hnsw_parameters)
from rayrec.serving.stages.index import ItemIndex  # noqa: E402

FIXED = HnswParameters(DEFAULT_M, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH)
CLUSTERS = 1000


def draw(kind: str, rows: int, dim: int, rng: np.random.Generator, centres: np.ndarray | None) -> np.ndarray:
    """``rows`` vectors (rows, dim) float32 of the named distribution (clusters: ``centres``)."""
    if kind == "random":
        return rng.standard_normal((rows, dim), dtype=np.float32)
    picked = centres[rng.integers(0, len(centres), rows)]
    return picked + 0.5 * rng.standard_normal((rows, dim), dtype=np.float32)


def measure(index: ItemIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    """(recall@k against exact search, p50 milliseconds of one ItemIndex.search)."""
    allowed = index.allowed_mask([])
    found, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        rows, _ = index.search(query, k, allowed)
        seconds.append(time.perf_counter() - start)
        scores = vectors @ query
        exact = np.argpartition(scores, len(scores) - k)[-k:]
        found.append(len(set(rows.tolist()) & set(exact.tolist())) / k)
    return float(np.mean(found)), 1000 * float(np.median(seconds))


def run_size(rows: int, args: argparse.Namespace) -> list[dict]:
    import faiss

    rng = np.random.default_rng(rows)
    centres = rng.standard_normal((CLUSTERS, args.dim), dtype=np.float32) if args.data == "clustered" else None
    vectors = draw(args.data, rows, args.dim, rng, centres)
    query_sets = [draw(args.data, args.queries, args.dim, rng, centres) for _ in range(args.repeats)]
    ids = [str(row) for row in range(rows)]
    results = []
    scaled = scaled_hnsw_parameters(rows)
    for name, parameters in (("fixed", FIXED), ("scaled", scaled)):
        if name == "scaled" and parameters == FIXED:
            results.append({**results[-1], "parameters": "scaled (= fixed)"})
            print_row(results[-1])
            continue
        faiss.omp_set_num_threads(args.build_threads)
        start = time.perf_counter()
        graph = build_hnsw(vectors, parameters.m, parameters.ef_construction)
        build_s = time.perf_counter() - start
        faiss.omp_set_num_threads(1)
        index = ItemIndex(ids, vectors, exact_max_items=0, ann_index=graph, hnsw_m=parameters.m,
                          ef_construction=parameters.ef_construction, ef_search=parameters.ef_search)
        measured = [measure(index, vectors, queries) for queries in query_sets]
        results.append({"items": rows, "parameters": name, **parameters.as_record(), "build_s": round(build_s, 1),
                        "recall_at_10": round(statistics.median(m[0] for m in measured), 4),
                        "p50_ms": round(statistics.median(m[1] for m in measured), 3)})
        print_row(results[-1])
        del graph, index
    return results


def print_row(row: dict) -> None:
    print(f"{row['items']:>9,}  {row['parameters']:<16} M {row['m']:>2}  efC {row['ef_construction']:>3}  "
          f"efS {row['ef_search']:>4}  build {row['build_s']:>6.1f} s  recall@10 {row['recall_at_10']:.3f}  "
          f"p50 {row['p50_ms']:.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000])
    parser.add_argument("--million", action="store_true", help="also 1,000,000 items (minutes more to build)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--queries", type=int, default=200, help="queries per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="query sets; medians over them are printed")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sizes = args.sizes + ([1_000_000] if args.million and 1_000_000 not in args.sizes else [])
    print(f"{args.data} item vectors, dim {args.dim}; {args.repeats} x {args.queries} queries, k = 10; "
          f"medians over the repeats")
    rows = [row for size in sizes for row in run_size(size, args)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
