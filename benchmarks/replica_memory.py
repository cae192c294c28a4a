"""Memory of 1 and 2 scorer replicas on one node over a big catalogue: the item vectors and the
exported HNSW graph memory-mapped from the model directory and the item ids read from the
model's vocabulary (what serving does), against the ids copied into the index (what it did
before) and against the graph read into each replica's memory too (before that).

    python benchmarks/replica_memory.py [--items 1000000] [--dim 64] [--ef-construction 40] [--queries 200]

A model directory's item files are written once: ``item_vocab.json``, ``item_embeddings.npy``
(clustered vectors, float32) and ``item_index.faiss`` (the inner-product HNSW graph export writes, M 32; built with
``--ef-construction``, lower than export's scaled 240 to save minutes: memory depends on M and
the vectors, not on the build breadth), recorded in the config as export records it.

Each replica is a fresh process that loads them as a scorer replica does (``np.load`` with
``mmap_mode="r"``, the vocabulary as the model loads it, :func:`rayrec.models.ann.read_index`,
:class:`ItemIndex` with that graph and vocabulary), answers ``--queries`` top-10 searches, and waits. With every replica of a
variant running, the benchmark sums their PSS (``/proc/PID/smaps_rollup``: each shared page
counted once across the processes that map it) and their RSS. Not Ray Serve replicas: the
measurement is of the item index a scorer replica holds, without Ray's own per-process memory
(about the same in every variant). A benchmark, not a test: nothing is asserted.

**Whole Ray Serve replicas** (``--model DIR``, a trained model directory): ``rayrec serve --model
DIR --topology split`` (the topology with a scorer deployment of its own) with 1 and then 2
Retriever replicas (``stages.scorer.num_replicas`` in a ``--config`` file), each after ``--queries`` ``/recommend`` requests of the model's training
users spread over the replicas. Memory is the summed PSS and RSS of the Serve replica processes
(found by their process title, ``ray::ServeReplica:APP:DEPLOYMENT``), per deployment: Ray's own
per-process memory, the libraries, the model and the index, all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPLICA = """
import sys, time
import numpy as np
from pathlib import Path
from rayrec.models import ann
from rayrec.schema import Vocabulary
from rayrec.serving.stages.index import ItemIndex
model_dir, graph_mode, ids_mode, queries = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
vectors = np.load(model_dir / "item_embeddings.npy", mmap_mode="r")
vocabulary = Vocabulary.load(model_dir / "item_vocab.json")  # as the model loads it
record = {"item_index": {"file": "item_index.faiss", "rows": len(vectors), "m": 32}}
if graph_mode == "mapped":
    graph = ann.read_index(model_dir, record, len(vectors), 32)
else:
    import faiss
    graph = faiss.read_index(str(model_dir / "item_index.faiss"))
if ids_mode == "read":  # what the scorer does: the index reads the model's vocabulary
    index, trained_items = ItemIndex(vocabulary, vectors, exact_max_items=250_000, ann_index=graph), None
else:  # what it did before: the index's own list and dict of the ids, and a set of them
    index = ItemIndex(list(vocabulary.ids), vectors, exact_max_items=250_000, ann_index=graph)
    trained_items = set(vocabulary.ids)
assert index.loaded
rng = np.random.default_rng(1)
allowed = index.allowed_mask([])
for row in rng.integers(0, len(vectors), queries):
    index.search(np.asarray(vectors[row]), 10, allowed)
print("ready", flush=True)
time.sleep(3600)
"""

def memory_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of a process in MB."""
    fields = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Pss:", "Rss:"):
            fields[parts[0][:-1]] = int(parts[1]) / 1024
    return fields["Pss"], fields["Rss"]


#: (label, how the graph is read, how the item ids are held), serving's way first.
VARIANTS = [
    ("serving: mapped, ids read", "mapped", "read"),
    ("mapped, ids copied (before)", "mapped", "copied"),
    ("graph and ids copied", "copied", "copied"),
]


def replicas(model_dir: Path, count: int, graph_mode: str, ids_mode: str, queries: int) -> tuple[float, float, float]:
    """Start ``count`` replicas, wait until each answered its queries, sum their PSS and RSS;
    returns (PSS MB, RSS MB, seconds to ready of the slowest)."""
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", REPLICA, str(model_dir), graph_mode, ids_mode, str(queries)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                raise SystemExit("a replica failed to load the index")
        ready = time.perf_counter() - started
        totals = [memory_mb(process.pid) for process in processes]
        return sum(p for p, _ in totals), sum(r for _, r in totals), ready
    finally:
        for process in processes:
            process.kill()
            process.wait()


def serve_replica_processes() -> dict[str, list[int]]:
    """The PIDs of this machine's Ray Serve replica processes, by deployment name (their process
    title is ``ray::ServeReplica:APP:DEPLOYMENT``)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode("utf-8", "replace")
        except OSError:  # ended meanwhile
            continue
        if title.startswith("ray::ServeReplica:"):  # "...:Retriever.<method>" while it runs one
            found.setdefault(title.split()[0].rsplit(":", 1)[-1].split(".")[0], []).append(int(entry.name))
    return found


def serve_replicas(model_dir: Path, scorers: int, queries: int, scorer_memory_mb: int | None,
                   workdir: Path) -> dict[str, list[tuple[float, float]]]:
    """(PSS, RSS) MB of each Serve replica process, by deployment, of ``rayrec serve --model
    DIR --topology split`` with ``scorers`` Retriever replicas, after ``queries`` requests."""
    import httpx
    from _common import training_users
    from serving import Server

    config = workdir / f"scorers-{scorers}.yaml"
    memory = f"\n    memory_mb: {scorer_memory_mb}" if scorer_memory_mb else ""
    config.write_text(f"stages:\n  scorer:\n    num_replicas: {scorers}{memory}\n")
    users = training_users(model_dir)
    server = Server(model_dir, workdir, os.cpu_count() or 2, ["--topology", "split", "--config", str(config)])
    try:
        server.wait_first_answer(users[0])
        deadline = time.perf_counter() + 300
        while len(serve_replica_processes().get("Retriever", [])) < scorers:
            if time.perf_counter() > deadline:
                raise SystemExit(f"{scorers} Retriever replicas did not start:\n" + "".join(server.lines)[-3000:])
            time.sleep(1)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for number in range(queries):  # Serve's router spreads them over the replicas
                client.post("/recommend", json={"user_id": users[number % len(users)], "k": 10}).raise_for_status()
        return {name: [memory_mb(pid) for pid in pids] for name, pids in serve_replica_processes().items()}
    finally:
        server.stop()


def serve_replica_memory(model_dir: Path, queries: int, scorer_memory_mb: int | None) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    print(f"{model_dir}: {config['num_items']:,} items x {config['dim']} dims, "
          f"item index: {(config.get('item_index') or {}).get('metric', 'none (exact search)')}")
    print(f"\n{'scorer replicas':<16}{'deployment':<20}{'processes':>10}{'PSS MB':>10}{'RSS MB':>10}")
    scorer_pss = {}
    with tempfile.TemporaryDirectory(prefix="rayrec-replica-memory-") as workdir:
        for scorers in (1, 2):
            replicas = serve_replicas(model_dir, scorers, queries, scorer_memory_mb, Path(workdir))
            for name, processes in sorted(replicas.items()):
                pss, rss = sum(p for p, _ in processes), sum(r for _, r in processes)
                print(f"{scorers:<16}{name:<20}{len(processes):>10}{pss:>10,.0f}{rss:>10,.0f}", flush=True)
            scorer_pss[scorers] = sum(p for p, _ in replicas.get("Retriever", []))
    print(f"\nwhole Retriever replicas: 2 / 1 = {scorer_pss[2] / scorer_pss[1]:.2f} by PSS (target <= 1.3)")


def write_model_files(model_dir: Path, items: int, dim: int, ef_construction: int) -> None:
    import faiss

    from rayrec.models.ann import build_hnsw
    from rayrec.schema import Vocabulary

    if not (model_dir / "item_vocab.json").exists():
        Vocabulary(f"item-{i}" for i in range(items)).save(model_dir / "item_vocab.json")
    if (model_dir / "item_index.faiss").exists():
        return
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    vectors = centres[rng.integers(0, 1000, items)] + 0.5 * rng.standard_normal((items, dim), dtype=np.float32)
    np.save(model_dir / "item_embeddings.npy", vectors)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    faiss.write_index(build_hnsw(vectors, 32, ef_construction), str(model_dir / "item_index.faiss"))
    print(f"built the graph over {items:,} items in {time.perf_counter() - started:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep (and reuse) the model files here.")
    parser.add_argument("--model", type=Path, default=None,
                        help="A trained model directory: measure whole `rayrec serve` replicas over it instead.")
    parser.add_argument("--scorer-memory-mb", type=int, default=None,
                        help="--model: the memory each scorer replica declares (default: serving's estimate).")
    args = parser.parse_args()
    if args.model is not None:
        serve_replica_memory(args.model, args.queries, args.scorer_memory_mb)
        return
    with tempfile.TemporaryDirectory(prefix="rayrec-replica-memory-") as scratch:
        model_dir = args.workdir or Path(scratch)
        model_dir.mkdir(parents=True, exist_ok=True)
        write_model_files(model_dir, args.items, args.dim, args.ef_construction)
        sizes = {name: (model_dir / name).stat().st_size / 2**20 for name in ("item_embeddings.npy", "item_index.faiss")}
        print(f"{args.items:,} items x {args.dim} dims: item_embeddings.npy {sizes['item_embeddings.npy']:,.0f} MB, "
              f"item_index.faiss {sizes['item_index.faiss']:,.0f} MB")
        print(f"\n{'variant':<30}{'replicas':>9}{'PSS MB':>10}{'RSS MB':>10}{'ready s':>9}")
        results = {}
        for label, graph_mode, ids_mode in VARIANTS:
            for count in (1, 2):
                pss, rss, ready = replicas(model_dir, count, graph_mode, ids_mode, args.queries)
                results[label, count] = pss
                print(f"{label:<30}{count:>9}{pss:>10,.0f}{rss:>10,.0f}{ready:>9.1f}", flush=True)
        for label, _, _ in VARIANTS:
            print(f"{label}: 2 replicas / 1 = {results[label, 2] / results[label, 1]:.2f} (target <= 1.3)")

if __name__ == "__main__":
    main()
