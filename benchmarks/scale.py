"""What `rayrec train` costs as the data grows, on Parquet shards read with Ray Data, and what a
warm-started retrain saves.

    python benchmarks/scale.py [--sizes 1M 10M 50M] [--workers 1 2] [--shards 8] [--data-root DIR]
                               [--retrain] [--skip-scale]

**Scale** (per size, one epoch of a small model: dim 32, max_len 50, sampled softmax; the
comparison is of the input and the training machinery, not the model). The data is written once
per size with ``rayrec synthetic --format parquet --shards N`` (kept under ``--data-root`` when
given). Each size trains, side by side in one run:

- ``rayrec train --interactions DIR --no-search --epochs 1 --num-workers W`` for each W in
  ``--workers`` (Ray Data input: each Ray Train worker reads its shard of the users);
- the plain loop: ``rayrec train --in-process`` on the same data, config and default batch
  (rayrec's training loop in one process, no Ray). Above ``--plain-max-rows`` it reads only
  the first shards up to that many rows (every item still appears), and its row says so.

Each run is a fresh process. Printed per run: the driver's peak RSS (``getrusage`` of the
``rayrec train`` process itself: Ray's workers and daemons are not counted), each worker's peak
RSS (``metrics.json``'s ``worker_peak_rss_mb``, each worker's own ``getrusage``), the time from
the command's start to the first training step (``first_step_at``), positions/s of the epoch
(``history``), and the ratio to the plain loop. Then how the costs grow with the data, and what
N nodes would need, from a straight-line fit of worker peak RSS against the interactions in its
shard.

**Retrain** (``--retrain``): synthetic data the size of ml-latest-small twice over (200k
events), split into 100k new events (every event of one user in ten: users who arrived since;
and the newest events of the others) and the rest. A base model trains on the rest
(``--no-search``).
Then, on the base + the 100k newer events, side by side: a full retrain (``--no-search``,
defaults: early stopping) and a warm start (``--init-from BASE --epochs 5``, the README's daily
retrain; ``--retrain-config`` gives all three runs the same other config). Printed: each one's wall time, best validation NDCG@10 (the same validation users:
same data, same seed), and the ratios against the targets (warm <= 20% of the full time,
warm NDCG >= full - 2%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import rayrec_command  # noqa: E402  (the script's folder is on sys.path)

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
# No final epochs on the validation items (final_fit_fraction): one epoch is what is measured.
NEW_EVENTS = 100_000  # the retrain's new events
SMALL_MODEL = "final_fit_fraction: 0\nmodel:\n  dim: 32\n  max_len: 50\n  loss: sampled\n"


@dataclass(frozen=True)
class Size:
    label: str
    users: int
    items: int
    events_per_user: int

    @property
    def rows(self) -> int:
        return self.users * self.events_per_user


#: The sizes the issue names; 50M is 1M users on 200k items.
SIZES = {
    "1M": Size("1M", 25_000, 20_000, 40),
    "10M": Size("10M", 250_000, 100_000, 40),
    "50M": Size("50M", 1_000_000, 200_000, 50),
}


def run_train(args: list[str], work: Path, name: str) -> dict:
    """One ``rayrec train`` process: its wall time, driver peak RSS and metrics.json."""
    rss_file, out = work / f"rss-{name}.json", work / f"model-{name}"
    run_file = work / f"run-{name}.json"
    if run_file.exists():  # finished in an earlier run of this benchmark with the same --work-dir
        started_at, wall = json.loads(run_file.read_text())
    else:
        started_at = time.time()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", DRIVER, str(rss_file), "train", *args, "--out", str(out)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"rayrec train {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        run_file.write_text(json.dumps([started_at, wall]))
    metrics = json.loads((out / "metrics.json").read_text())
    first_step = metrics.get("first_step_at")
    return {"wall_s": wall, "driver_rss_mb": json.loads(rss_file.read_text())["max_rss_mb"], "metrics": metrics,
            "out": out, "first_step_s": None if first_step is None else first_step - started_at,
            "positions_per_s": metrics["history"][0]["samples_per_second"],
            "worker_rss_mb": metrics.get("worker_peak_rss_mb") or [],
            "val_ndcg": metrics["best_val_ndcg@10"]}


def synthetic_data(size: Size, shards: int, root: Path) -> Path:
    data = root / f"synthetic-{size.label}"
    if not (data / "interactions").is_dir():
        started = time.perf_counter()
        subprocess.run(rayrec_command() + [
            "synthetic", "--out", str(data), "--users", str(size.users), "--items", str(size.items),
            "--events-per-user", str(size.events_per_user), "--format", "parquet", "--shards", str(shards)],
            check=True, capture_output=True)
        print(f"{size.label}: wrote the data in {time.perf_counter() - started:.0f}s", flush=True)
    return data


def plain_input(data: Path, max_rows: int) -> tuple[list[str], int, bool]:
    """The shards the plain loop reads: all of them, or the first ones up to ``max_rows``."""
    import pyarrow.parquet as pq

    chosen, rows = [], 0
    shards = sorted((data / "interactions").glob("*.parquet"))
    for shard in shards:
        shard_rows = pq.ParquetFile(shard).metadata.num_rows
        if chosen and rows + shard_rows > max_rows:
            break
        chosen.append(str(shard))
        rows += shard_rows
    return chosen, rows, len(chosen) < len(shards)


def scale(sizes: list[Size], workers: list[int], shards: int, root: Path, work: Path, plain_max_rows: int) -> None:
    config = work / "small.yaml"
    config.write_text(SMALL_MODEL)
    common = ["--no-search", "--epochs", "1", "--config", str(config)]
    results: list[tuple[Size, str, dict]] = []
    for size in sizes:
        data = synthetic_data(size, shards, root)
        for count in workers:
            run = run_train(["--interactions", str(data / "interactions"), *common, "--num-workers", str(count)],
                            work, f"{size.label}-{count}")
            results.append((size, f"Ray Train, {count} worker(s)", run))
            print_run(size, results[-1][1], run)
        files, rows, partial = plain_input(data, plain_max_rows)
        plain_args = [arg for file in files for arg in ("--interactions", file)]
        run = run_train([*plain_args, *common, "--in-process"], work, f"{size.label}-plain")
        label = f"plain loop{f' (first {len(files)} shards, {rows:,} rows)' if partial else ''}"
        results.append((size, label, run))
        print_run(size, label, run)

    print("\nPer size (one epoch, Parquet shards, this machine; positions/s ratio against the plain loop of the "
          "same size, run beside it)")
    header = (f"{'size':<6}{'run':<44}{'driver MB':>10}{'worker MB':>18}{'first step s':>13}{'positions/s':>12}"
              f"{'x plain':>8}{'wall s':>8}")
    print(header)
    for size in sizes:
        rows = [(label, run) for s, label, run in results if s is size]
        plain = next(run for label, run in rows if label.startswith("plain"))
        for label, run in rows:
            workers_mb = "/".join(f"{mb:,.0f}" for mb in run["worker_rss_mb"]) or "-"
            if label.startswith("plain"):
                workers_mb = "(the driver)"  # the loop runs in the driver's process
            first = "-" if run["first_step_s"] is None else f"{run['first_step_s']:.0f}"
            print(f"{size.label:<6}{label:<44}{run['driver_rss_mb']:>10,.0f}{workers_mb:>18}{first:>13}"
                  f"{run['positions_per_s']:>12,.0f}{run['positions_per_s'] / plain['positions_per_s']:>8.2f}"
                  f"{run['wall_s']:>8.0f}")
    growth(results)


def print_run(size: Size, label: str, run: dict) -> None:
    shards = run["metrics"].get("worker_shards") or []
    held = ", ".join(f"rank {s['rank']} {s['interactions']:,}" for s in shards)
    print(f"{size.label} {label}: driver {run['driver_rss_mb']:,.0f} MB, workers "
          f"{[round(mb) for mb in run['worker_rss_mb']]} MB, first step {run['first_step_s'] or 0:.0f}s, "
          f"{run['positions_per_s']:,.0f} positions/s, wall {run['wall_s']:.0f}s"
          f"{f', shards held {held}' if held else ''}", flush=True)


def growth(results: list[tuple[Size, str, dict]]) -> None:
    """A least-squares line of worker peak RSS against the interactions in its shard, and
    what it predicts for a cluster."""
    points = [(shard["interactions"], mb) for _, label, run in results if not label.startswith("plain")
              for shard, mb in zip(run["metrics"].get("worker_shards") or [], run["worker_rss_mb"])]
    shard_sizes = [x for x, _ in points]
    # Shards of nearly one size (one run's workers) give a line that is all noise: no fit.
    if len(shard_sizes) < 2 or max(shard_sizes) < 1.5 * min(shard_sizes):
        print("\nworker peak RSS: too little spread in shard sizes to fit a line (run two sizes, or 1 and 2 workers)")
        return
    xs, ys = [x / 1e6 for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    base = mean_y - slope * mean_x
    drivers = [run["driver_rss_mb"] for _, label, run in results if not label.startswith("plain")]
    print(f"\nworker peak RSS ~= {base:,.0f} MB + {slope:,.0f} MB per million interactions in its shard "
          f"(fit over {len(points)} workers); driver peak RSS {min(drivers):,.0f}-{max(drivers):,.0f} MB over "
          f"every size")
    for total in (100e6, 1e9):
        needs = ", ".join(f"{nodes} nodes: {base + slope * total / 1e6 / nodes:,.0f} MB per worker"
                          for nodes in (4, 16, 64))
        print(f"{total / 1e6:,.0f}M interactions, one worker per node -> {needs}")


def retrain(work: Path, config: Path | None = None) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    data = work / "retrain-data"
    # ml-latest-small's shape twice over: ~610 users' worth of events per half, 9,000 items.
    # (The same seed writes the same data, so a rerun with the same --work-dir reuses finished runs.)
    subprocess.run(rayrec_command() + ["synthetic", "--out", str(data), "--users", "1600", "--items", "9000",
                                       "--events-per-user", "125"], check=True, capture_output=True)
    events = pa_csv.read_csv(data / "interactions.csv", convert_options=pa_csv.ConvertOptions(
        column_types={"user_id": pa.string(), "item_id": pa.string()}))
    # The new events: every event of one user in ten (users who arrived since the base model),
    # and the newest events of the others, 100k in all.
    users = pc.unique(events["user_id"]).to_pylist()
    arrived = pc.is_in(events["user_id"], value_set=pa.array(users[::10]))
    known = events.filter(pc.invert(arrived))
    newest = np.sort(known["timestamp"].to_numpy())[-(NEW_EVENTS - int(pc.sum(arrived).as_py())):][0]
    is_new = pc.or_(arrived, pc.greater_equal(events["timestamp"], newest))
    base_rows, new_rows = events.filter(pc.invert(is_new)), events.filter(is_new)
    base_file, new_file = work / "base.csv", work / "new.csv"
    pa_csv.write_csv(base_rows, base_file)
    pa_csv.write_csv(new_rows, new_file)
    new_users = len(set(pc.unique(new_rows["user_id"]).to_pylist()) - set(pc.unique(base_rows["user_id"]).to_pylist()))
    new_items = len(set(pc.unique(new_rows["item_id"]).to_pylist()) - set(pc.unique(base_rows["item_id"]).to_pylist()))
    print(f"retrain: base {base_rows.num_rows:,} events, new {new_rows.num_rows:,} events "
          f"({new_users:,} new users, {new_items:,} new items)", flush=True)
    configured = ["--config", str(config)] if config else []  # the same for all three runs
    base = run_train(["--interactions", str(base_file), "--no-search", *configured], work, "retrain-base")
    print(f"base model: {base['wall_s']:.0f}s, best val NDCG@10 {base['val_ndcg']:.4f}", flush=True)
    both = ["--interactions", str(base_file), "--interactions", str(new_file)]
    full = run_train([*both, "--no-search", *configured], work, "retrain-full")
    print(f"full retrain: {full['wall_s']:.0f}s, best val NDCG@10 {full['val_ndcg']:.4f}, "
          f"{full['metrics']['epochs_trained']} epochs", flush=True)
    warm = run_train([*both, "--init-from", str(base["out"]), "--epochs", "5", *configured], work, "retrain-warm")
    print(f"warm start: {warm['wall_s']:.0f}s, best val NDCG@10 {warm['val_ndcg']:.4f}, "
          f"{warm['metrics']['epochs_trained']} epochs", flush=True)
    time_ratio = warm["wall_s"] / full["wall_s"]
    quality_ratio = warm["val_ndcg"] / full["val_ndcg"]
    print(f"\nretrain on {base_rows.num_rows + new_rows.num_rows:,} events ({new_rows.num_rows:,} new)")
    print(f"{'run':<34}{'wall s':>8}{'val NDCG@10':>13}")
    print(f"{'full retrain (--no-search)':<34}{full['wall_s']:>8.0f}{full['val_ndcg']:>13.4f}")
    print(f"{'warm start (--init-from, 5 epochs)':<34}{warm['wall_s']:>8.0f}{warm['val_ndcg']:>13.4f}")
    print(f"warm / full: time {time_ratio:.2f} (target <= 0.20), NDCG {quality_ratio:.3f} (target >= 0.98)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["1M", "10M", "50M"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--plain-max-rows", type=int, default=10_000_000,
                        help="The plain loop reads at most this many rows (whole shards).")
    parser.add_argument("--data-root", type=Path, default=None, help="Keep (and reuse) the synthetic data here.")
    parser.add_argument("--retrain", action="store_true", help="Also measure the warm-started retrain.")
    parser.add_argument("--skip-scale", action="store_true", help="Only the retrain.")
    parser.add_argument("--retrain-config", type=Path, default=None,
                        help="A training config (YAML) for the retrain's three runs (default: the defaults).")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="Keep the models and run records here; a rerun skips the runs that finished.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rayrec-scale-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_scale:
            root = args.data_root or work
            root.mkdir(parents=True, exist_ok=True)
            scale([SIZES[name] for name in args.sizes], args.workers, args.shards, root, work, args.plain_max_rows)
        if args.retrain or args.skip_scale:
            retrain(work, args.retrain_config)


if __name__ == "__main__":
    main()
