"""Driver memory and wall time of `rayrec train` on Parquet shards: Ray Data input (each Ray
Train worker reads its shard of the users) against the in-memory input (the driver reads and
preprocesses everything, config ``data.ray_data: false``), side by side on the same data.

    python benchmarks/scale.py [--rows 1000000] [--shards 8] [--repeats 3] [--workers 2] [--epochs 1]

The data is written once with ``rayrec synthetic --format parquet --shards N`` (40 events per
user). Each run is a fresh ``rayrec train --no-search`` process training a small model (dim
32, max_len 50, sampled softmax: the comparison is of the input, not the model); its peak RSS is the
driver's own (``getrusage`` of that process: Ray's workers and daemons are not counted), its
wall time the whole command, from start to model directory. The table shows medians over
``--repeats`` runs, the runs alternating between the two inputs, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import rayrec_command  # noqa: E402  (the script's folder is on sys.path)

EVENTS_PER_USER = 40
#: Runs `rayrec train` in this process and, at exit, writes the process's own peak RSS.
DRIVER = """
import json, resource, sys
from rayrec.cli import cli
try:
    cli.main(sys.argv[2:], prog_name="rayrec", standalone_mode=False)
finally:
    with open(sys.argv[1], "w") as handle:
        json.dump({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, handle)
"""


def train_once(interactions: Path, work: Path, ray_data: bool, workers: int, epochs: int) -> dict:
    config = work / f"config-{ray_data}.yaml"
    # A small model: the comparison is of reading and preparing the data, not of training.
    config.write_text(f"data:\n  ray_data: {str(ray_data).lower()}\nmodel:\n  dim: 32\n  max_len: 50\n"
                      "  loss: sampled\n")
    rss_file, out = work / "rss.json", work / f"model-{ray_data}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, str(rss_file), "train", "--interactions", str(interactions),
                           "--out", str(out), "--config", str(config), "--no-search", "--epochs", str(epochs),
                           "--num-workers", str(workers)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"rayrec train failed:\n{(done.stdout + done.stderr)[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"max_rss_mb": json.loads(rss_file.read_text())["max_rss_mb"], "wall_s": wall,
            "val_ndcg": metrics["best_val_ndcg@10"], "shards": metrics.get("worker_shards")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Interactions (about; 40 per user).")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None, help="Reuse (or keep) the synthetic data here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rayrec-scale-") as scratch:
        work = Path(scratch)
        data = args.data or work / "data"
        if not (data / "interactions").is_dir():
            subprocess.run(rayrec_command() + [
                "synthetic", "--out", str(data), "--users", str(args.rows // EVENTS_PER_USER), "--items",
                str(args.items), "--events-per-user", str(EVENTS_PER_USER), "--format", "parquet", "--shards",
                str(args.shards)], check=True)
        interactions = data / "interactions"
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for repeat in range(args.repeats):
            for ray_data in (True, False):
                run = train_once(interactions, work, ray_data, args.workers, args.epochs)
                runs[ray_data].append(run)
                print(f"run {repeat + 1}/{args.repeats} {'ray data ' if ray_data else 'in memory'}: driver peak "
                      f"RSS {run['max_rss_mb']:,.0f} MB, wall {run['wall_s']:.1f}s, val NDCG@10 {run['val_ndcg']:.4f}",
                      flush=True)
    shards = runs[True][0]["shards"]
    print(f"\n{args.rows:,} interactions in {args.shards} Parquet shards, {args.workers} worker(s), "
          f"{args.epochs} epoch(s); medians of {args.repeats} runs")
    print(f"{'input':<12}{'driver peak RSS (MB)':>22}{'wall (s)':>10}{'val NDCG@10':>13}")
    medians = {}
    for ray_data in (True, False):
        rss = statistics.median(r["max_rss_mb"] for r in runs[ray_data])
        wall = statistics.median(r["wall_s"] for r in runs[ray_data])
        ndcg = statistics.median(r["val_ndcg"] for r in runs[ray_data])
        medians[ray_data] = (rss, wall)
        print(f"{'Ray Data' if ray_data else 'in memory':<12}{rss:>22,.0f}{wall:>10.1f}{ndcg:>13.4f}")
    print(f"{'ratio':<12}{medians[True][0] / medians[False][0]:>22.2f}{medians[True][1] / medians[False][1]:>10.2f}")
    print("per-worker shards (Ray Data): " + ", ".join(
        f"rank {s['rank']}: {s['users']:,} users / {s['interactions']:,} interactions" for s in shards))


if __name__ == "__main__":
    main()
