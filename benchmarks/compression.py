"""What compressed item vectors (``retrieval.vectors``) save and cost: float32, float16, int8, PQ.

    python benchmarks/compression.py [--model DIR] [--sizes 100000 1000000] [--queries 200]
                                     [--workdir /tmp/rayrec-compression] [--json results.json]

Two parts, printed side by side per variant:

- **Quality** on ml-latest-small: a model trained by ``rayrec train --no-search --epochs 30``
  on the leave-one-out split of ``benchmarks/_leave_one_out.py`` (or ``--model``, a model
  trained on that split's ``train.csv``). Every evaluated user's top 10 comes from
  ``ItemIndex.search`` (the code path serving uses, history filtered as ``filter_seen`` does);
  NDCG@10 and HR@10 on the test items, recall@10 against the float32 answers.
- **Cost** at ``--sizes`` items: the trained item vectors resampled with Gaussian noise
  (SYNTHETIC vectors with the trained ones' structure; the queries are the model's user
  vectors). Each variant runs in a fresh subprocess, as a scorer replica does: it memory-maps
  item_embeddings.npy and the codes ``rayrec index build`` saved, then searches. Printed:
  bytes per item, resident memory (the resident pages of the float32 file's and the codes'
  mappings after the searches, from /proc/self/smaps, and the process's RSS), p50 latency of a
  top-10 ``ItemIndex.search`` with 50 excluded items, and recall@10 against float32. For
  float16 and int8 it also times the other way to a top-10 (every score by numpy over blocks
  of decoded rows, then argpartition), which is why search goes through FAISS.

One BLAS/OpenMP thread per process, as serving replicas run. A benchmark, not a test: medians
and ratios are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATASETS, rayrec_command  # noqa: E402

VARIANTS = ("float32", "float16", "int8", "pq")
#: Rows of the tables: (label, retrieval.vectors, retrieval.pq.rerank). PQ with a few re-scoring
#: depths: its own scores (0), the default (100), and a deeper one for big catalogues.
ROWS = (("float32", "float32", 0), ("float16", "float16", 0), ("int8", "int8", 0),
        ("pq rerank 0", "pq", 0), ("pq rerank 100", "pq", 100), ("pq rerank 1000", "pq", 1000))
EXCLUDED_PER_QUERY = 50
TRAIN_ARGS = ["--no-search", "--epochs", "30"]


# -- the model and its quality per variant ---------------------------------------------------------
def trained_model(workdir: Path, model: str | None, log) -> tuple[Path, object]:
    from _leave_one_out import load_leave_one_out

    data = load_leave_one_out("ml-latest-small", DATASETS / "ml-latest-small")
    if model:
        return Path(model), data
    directory = workdir / "ml-latest-small"
    model_dir = directory / "model"
    if not (model_dir / "config.json").exists():
        train_csv, items_csv = data.write_rayrec_inputs(directory)
        command = [*rayrec_command(), "train", "--interactions", str(train_csv), "--items", str(items_csv),
                   "--out", str(model_dir), *TRAIN_ARGS, "--in-process"]
        log(f"training: {' '.join(command)}")
        with open(directory / "train.log", "w") as handle:
            subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return model_dir, data


def user_vectors(model) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Every training user's id, vector (U, D) and history (item ids), as serving would see them."""
    users = [u for u in range(len(model.user_vocab)) if len(model.training_history_indices(u))]
    vectors = []
    for start in range(0, len(users), 256):
        batch = users[start: start + 256]
        vectors.append(model.user_vectors([model.training_history_indices(u) for u in batch], batch))
    histories = [model.item_vocab.decode(model.training_history_indices(u)) for u in users]
    return [model.user_vocab.ids[u] for u in users], np.concatenate(vectors).astype(np.float32), histories


def quality(model_dir: Path, data, log) -> tuple[dict[str, dict], np.ndarray]:
    from rayrec.models.servable import load_model_dir
    from rayrec.serving.stages.index import ItemIndex

    model = load_model_dir(model_dir)
    ids, vectors, histories = user_vectors(model)
    results, reference = {}, None
    for label, kind, rerank in ROWS:
        index = ItemIndex(list(model.item_ids), model.item_embeddings, model.item_popularity,
                          exact_max_items=10**9, vector_kind=kind, pq_rerank=rerank)
        lists = {}
        for user, query, history in zip(ids, vectors, histories):
            rows, _ = index.search(query, 10, index.allowed_mask(history))
            lists[user] = [index.row_ids[r] for r in rows]
        scores = data.score_lists_on_test(lists)
        if reference is None:
            reference = lists
        recall = np.mean([len(set(lists[u]) & set(reference[u])) / max(1, len(reference[u])) for u in ids])
        results[label] = {"ndcg": scores["NDCG@10"], "hr": scores["HR@10"], "users": scores["users"],
                          "recall": float(recall), "bytes_per_item": index.vector_bytes / len(model.item_ids)}
        log(f"  quality {label}: NDCG@10 {scores['NDCG@10']:.4f} recall@10 {recall:.3f}")
    return results, vectors


# -- synthetic catalogues, one fresh process per variant --------------------------------------------
def synthetic_catalogue(workdir: Path, model_dir: Path, size: int, log) -> Path:
    """``size`` rows: trained item vectors picked at random plus Gaussian noise (30% of each
    dimension's spread), with every compressed variant saved by ``write_compressed``."""
    from rayrec.models.ann import write_compressed

    directory = workdir / f"synthetic-{size}"
    done = directory / "done.json"
    if done.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    trained = np.load(model_dir / "item_embeddings.npy")
    rng = np.random.default_rng(size)
    spread = trained.std(axis=0)
    out = np.lib.format.open_memmap(directory / "item_embeddings.npy", mode="w+", dtype=np.float32,
                                    shape=(size, trained.shape[1]))
    for start in range(0, size, 100_000):
        rows = min(100_000, size - start)
        out[start: start + rows] = trained[rng.integers(0, len(trained), rows)] + 0.3 * spread * rng.normal(
            size=(rows, trained.shape[1])).astype(np.float32)
    out.flush()
    del out
    (directory / "config.json").write_text(json.dumps({"model_version": f"synthetic-{size}", "dim": int(trained.shape[1])}))
    vectors = np.load(directory / "item_embeddings.npy", mmap_mode="r")
    for kind in VARIANTS[1:]:
        started = time.perf_counter()
        write_compressed(directory, vectors, kind, "flat")
        log(f"  {size:,} items: {kind} codes built and saved in {time.perf_counter() - started:.1f}s")
    done.write_text("{}")
    return directory


def run_child(directory: Path, kind: str, rerank: int, queries_path: Path, count: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--rerank", str(rerank), "--child-dir", str(directory),
               "--queries-file", str(queries_path), "--queries", str(count)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(kind: str, rerank: int, directory: Path, queries_path: Path, count: int) -> None:
    """One variant in a fresh process: memory-map, search, measure; prints one JSON line."""
    import faiss

    from rayrec.models.ann import read_compressed
    from rayrec.serving.stages.index import ItemIndex

    faiss.omp_set_num_threads(1)
    queries = np.load(queries_path)[:count]
    vectors = np.load(directory / "item_embeddings.npy", mmap_mode="r")
    config = json.loads((directory / "config.json").read_text())
    item_ids = [f"item{i}" for i in range(len(vectors))]
    rss_before = _status_kb("VmRSS")
    saved = None if kind == "float32" else read_compressed(directory, config, len(vectors), kind, "flat")
    if kind != "float32" and saved is None:
        raise SystemExit(f"no saved {kind} codes in {directory}")
    index = ItemIndex(item_ids, vectors, exact_max_items=10**9, vector_kind=kind, codes_index=saved, pq_rerank=rerank)
    rng = np.random.default_rng(0)
    masks = [index.allowed_mask([item_ids[j] for j in rng.integers(0, len(item_ids), EXCLUDED_PER_QUERY)])
             for _ in range(len(queries))]
    for query, allowed in zip(queries[:3], masks):  # warm-up: first touches of every page
        index.search(query, 10, allowed)
    seconds, tops = [], []
    for query, allowed in zip(queries, masks):
        started = time.perf_counter()
        rows, _ = index.search(query, 10, allowed)
        seconds.append(time.perf_counter() - started)
        tops.append([int(r) for r in rows])
    numpy_seconds = []
    if kind in ("float16", "int8"):
        for query, allowed in list(zip(queries, masks))[:20]:
            started = time.perf_counter()
            ItemIndex.top_rows(index.codes.products(query[None, :])[0], 10, allowed)
            numpy_seconds.append(time.perf_counter() - started)
    mapped = _mapped_rss_kb()
    print(json.dumps({
        "kind": kind, "rows": len(vectors), "bytes_per_item": index.vector_bytes / len(vectors),
        "p50_ms": float(np.median(seconds)) * 1e3,
        "numpy_p50_ms": float(np.median(numpy_seconds)) * 1e3 if numpy_seconds else None,
        "float32_file_mb": mapped.get("item_embeddings.npy", 0) / 1024,
        "codes_mb": sum(v for name, v in mapped.items() if name.endswith(".faiss")) / 1024,
        "rss_mb": _status_kb("VmRSS") / 1024, "rss_growth_mb": (_status_kb("VmRSS") - rss_before) / 1024,
        "tops": tops,
    }))


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _mapped_rss_kb() -> dict[str, int]:
    """Resident kB per mapped file name (the model's .npy, the saved .faiss codes)."""
    found: dict[str, int] = {}
    name = None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and all(c in "0123456789abcdef-" for c in head[0]):
            name = Path(head[-1]).name if len(head) >= 6 and head[-1].startswith("/") else None
        elif name and line.startswith("Rss:"):
            found[name] = found.get(name, 0) + int(line.split()[1])
    return found


# -- the table --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="A model trained on the ml-latest-small leave-one-out train.csv "
                                        "(default: train one with rayrec train " + " ".join(TRAIN_ARGS) + ").")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="Timed top-10 searches per variant and size.")
    parser.add_argument("--workdir", default="/tmp/rayrec-compression")
    parser.add_argument("--json", help="Also write the results here.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rerank", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rerank, Path(args.child_dir), Path(args.queries_file), args.queries)
        return

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, data = trained_model(workdir, args.model, log)
    log(f"model: {model_dir}")
    quality_rows, queries = quality(model_dir, data, log)
    rng = np.random.default_rng(0)
    queries_path = workdir / "queries.npy"
    np.save(queries_path, queries[rng.permutation(len(queries))])
    cost: dict[int, dict[str, dict]] = {}
    for size in args.sizes:
        directory = synthetic_catalogue(workdir, model_dir, size, log)
        cost[size] = {}
        for label, kind, rerank in ROWS:
            cost[size][label] = run_child(directory, kind, rerank, queries_path, args.queries)
            log(f"  {size:,} items, {label}: p50 {cost[size][label]['p50_ms']:.2f} ms")
        reference = cost[size]["float32"]["tops"]
        for label, _, _ in ROWS:
            tops = cost[size][label].pop("tops")
            cost[size][label]["recall"] = float(np.mean([len(set(a) & set(b)) / max(1, len(b))
                                                       for a, b in zip(tops, reference)]))
    print_tables(model_dir, quality_rows, cost, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"quality": quality_rows, "cost": {str(k): v for k, v in cost.items()}},
                                              indent=2))


def print_tables(model_dir: Path, quality_rows: dict, cost: dict, args) -> None:
    float_bytes = quality_rows["float32"]["bytes_per_item"]
    base = quality_rows["float32"]["ndcg"]
    config = json.loads((model_dir / "config.json").read_text())
    print(f"\nml-latest-small, leave-one-out, {quality_rows['float32']['users']} users; model {model_dir} "
          f"(dim {config.get('dim')}, {config.get('num_items')} items; rayrec train {' '.join(TRAIN_ARGS)} unless "
          f"--model); top 10 through ItemIndex.search, history filtered")
    print(f"{'vectors':<14} {'bytes/item':>10} {'less mem':>8} {'recall@10':>9} {'NDCG@10':>8} {'change':>8} {'HR@10':>7}")
    for kind, row in quality_rows.items():
        change = (row["ndcg"] - base) / base * 100 if base else 0.0
        print(f"{kind:<14} {row['bytes_per_item']:>10.0f} {float_bytes / row['bytes_per_item']:>7.1f}x "
              f"{row['recall']:>9.3f} {row['ndcg']:>8.4f} {change:>+7.2f}% {row['hr']:>7.4f}")
    for size, rows in cost.items():
        print(f"\n{size:,} items: SYNTHETIC vectors (the trained ones resampled with noise), queries = the model's "
              f"user vectors, {args.queries} top-10 searches each with {EXCLUDED_PER_QUERY} excluded items, "
              "one thread, a fresh process per row")
        print(f"{'vectors':<14} {'bytes/item':>10} {'less mem':>8} {'resident MB':>11} {'(float32 file':>13} "
              f"{'codes)':>7} {'RSS MB':>7} {'p50 ms':>7} {'vs f32':>6} {'recall@10':>9} {'numpy blocks p50':>16}")
        ref = rows["float32"]
        for kind, row in rows.items():
            resident = row["float32_file_mb"] + row["codes_mb"]
            numpy_p50 = f"{row['numpy_p50_ms']:.1f} ms" if row["numpy_p50_ms"] else "-"
            print(f"{kind:<14} {row['bytes_per_item']:>10.0f} {ref['bytes_per_item'] / row['bytes_per_item']:>7.1f}x "
                  f"{resident:>11.1f} {row['float32_file_mb']:>13.1f} {row['codes_mb']:>7.1f} {row['rss_mb']:>7.0f} "
                  f"{row['p50_ms']:>7.2f} {ref['p50_ms'] / row['p50_ms']:>5.1f}x {row['recall']:>9.3f} {numpy_p50:>16}")
    print(f"\ncommand: python benchmarks/compression.py --sizes {' '.join(map(str, args.sizes))} --queries {args.queries}"
          f"; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
