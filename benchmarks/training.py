"""Training throughput: Ray Train (N workers) against a plain single-process loop, side by side.

    python benchmarks/training.py [--dataset ml-100k] [--epochs 6] [--workers 2] [--full-run]

Both runs train the same default model on the same data for the same epochs. Throughput is
supervised positions per second, the median over epochs after the first (warm-up). With
--full-run it also times a complete default ``rayrec train`` run (early stopping) on 2 workers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATASETS = Path(os.environ.get("RAYREC_DATASETS", HERE.parent.parent / "shared" / "datasets"))


def median_throughput(history: list[dict]) -> float:
    rates = [h["samples_per_second"] for h in history[1:]] or [h["samples_per_second"] for h in history]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-run", action="store_true")
    args = parser.parse_args()

    from rayrec.cli.train_cmd import load_training_data
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import LocalContext
    from rayrec.training.export import loop_config_for
    from rayrec.training.trainer import train_distributed
    from rayrec.training.worker import run_worker

    source = str(DATASETS / args.dataset) if (DATASETS / args.dataset).exists() else "synthetic:users=2000,items=1000"
    # Validate every epoch and never stop early, so both runs do identical work.
    config = TrainConfig(epochs=args.epochs, eval_every=1, patience=10_000)
    data = load_training_data(source, None, None, config, echo=lambda line: None)
    print(f"data: {source}: {len(data.user_vocab)} users, {data.num_items} items, {data.num_interactions} interactions")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as checkpoints:
        context = LocalContext(Path(checkpoints))
        started = time.perf_counter()
        run_worker(loop_config_for(config, threads), data.to_payload(), context, log=lambda line: None)
        plain_seconds = time.perf_counter() - started
    plain = median_throughput(context.reports)

    distributed_config = config.model_copy(update={"num_workers": args.workers, "cpus_per_worker": 1.0})
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train_distributed(data, out, distributed_config, log=lambda line: None)
        ray_seconds = time.perf_counter() - started
        import json

        history = json.loads((Path(out) / "metrics.json").read_text())["history"]
    distributed = median_throughput(history)

    print(f"\n{'run':<34}{'samples/s (median)':>20}{'wall s':>9}")
    print(f"{f'plain PyTorch, 1 process, {threads} threads':<34}{plain:>20,.0f}{plain_seconds:>9.1f}")
    print(f"{f'Ray Train, {args.workers} workers x 1 thread':<34}{distributed:>20,.0f}{ray_seconds:>9.1f}")
    print(f"ratio Ray Train / plain: {distributed / plain:.2f} (target >= 0.8)")

    if args.full_run:
        full_config = TrainConfig(num_workers=args.workers)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            train_distributed(data, out, full_config, log=lambda line: None)
            seconds = time.perf_counter() - started
            metrics = json.loads((Path(out) / "metrics.json").read_text())
        print(f"full default training run on {args.dataset} with {args.workers} workers: {seconds:.0f}s wall "
              f"({metrics['epochs_trained']} epochs, best validation NDCG@10 {metrics['best_val_ndcg@10']:.4f}; "
              f"target < 180s)")

    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
