"""Training throughput side by side: the SASRec-CE reference script, rayrec's loop in one
plain process, and Ray Train with the default layout and with N one-thread workers.

    python benchmarks/training.py [--dataset ml-100k] [--epochs 6] [--workers 2] [--full-run]

Every run trains a model of the same size (the default: hidden 128, 2 blocks, max_len 200) on
the same data for the same epochs, on all the machine's cores, in batches of the reference's
128 users (``--batch-size``); two more rows run rayrec's loop with its default batch size
(unset: about 3,000 positions a batch, 34 users on ml-100k), in a plain process and as
``rayrec train`` runs it (Ray Train, default layout). Throughput is supervised
next-item positions per second of training steps, the median over epochs after the first
(warm-up); the reference (``benchmarks/sasrec_reference.py``) reports its mean. With
--full-run it also times a complete default ``rayrec train --no-search`` run (early stopping).
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
from _common import DATASETS  # noqa: E402  (the script's folder is on sys.path)


def median_throughput(history: list[dict]) -> float:
    rates = [h["samples_per_second"] for h in history[1:]] or [h["samples_per_second"] for h in history]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-run", action="store_true")
    parser.add_argument("--batch-size", type=int, default=128, help="Users per batch of every run but the "
                        "default-batch row (default: the reference's 128).")
    args = parser.parse_args()

    from rayrec.training.config import TrainConfig
    from rayrec.training.local import LocalContext
    from rayrec.training.prepare import load_training_data
    from rayrec.training.export import loop_config_for
    from rayrec.training.trainer import train_distributed
    from rayrec.training.worker import run_worker

    source = str(DATASETS / args.dataset) if (DATASETS / args.dataset).exists() else "synthetic:users=2000,items=1000"
    # Validate every epoch and never stop early, so both runs do identical work.
    config = TrainConfig(epochs=args.epochs, eval_every=1, patience=10_000, batch_size=args.batch_size)
    data = load_training_data(source, None, None, config, echo=lambda line: None)
    print(f"data: {source}: {len(data.user_vocab)} users, {data.num_items} items, {data.num_interactions} interactions")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    import sys
    from dataclasses import replace

    sys.path.insert(0, str(HERE))
    from sasrec_reference import SASRecConfig, fit

    reference = fit([s - 1 for s in data.sequences], data.num_items, lambda model: 0.0,
                    replace(SASRecConfig(), max_epochs=args.epochs, patience=10_000, threads=threads,
                            batch_size=args.batch_size),
                    log=lambda line: None)
    torch.set_num_threads(threads)

    def plain_process(run_config: TrainConfig) -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as checkpoints:
            context = LocalContext(Path(checkpoints))
            started = time.perf_counter()
            run_worker(loop_config_for(run_config, threads), data.to_payload(), context, log=lambda line: None)
            seconds = time.perf_counter() - started
            # Every epoch's metrics, as metrics.json has them for Ray Train (a report is made
            # only at checkpoints).
            history = context.restore_training_state(lambda line: None)["state"]["history"]
            return median_throughput(history), seconds

    plain, plain_seconds = plain_process(config)
    default_batch, default_batch_seconds = plain_process(config.model_copy(update={"batch_size": None}))

    import json

    def ray_train(layout: dict) -> tuple[float, float, dict]:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            train_distributed(data, out, config.model_copy(update=layout), log=lambda line: None)
            seconds = time.perf_counter() - started
            metrics = json.loads((Path(out) / "metrics.json").read_text())
        return median_throughput(metrics["history"]), seconds, metrics

    default, default_seconds, default_metrics = ray_train({})
    distributed, ray_seconds, _ = ray_train({"num_workers": args.workers, "cpus_per_worker": 1.0})
    # What `rayrec train` runs: the default layout and the default batch size.
    as_shipped, as_shipped_seconds, shipped_metrics = ray_train({"batch_size": None})
    # The same batch split over one-thread workers: small batches use a second thread poorly.
    distributed_default_batch, distributed_default_batch_seconds, _ = ray_train(
        {"batch_size": None, "num_workers": args.workers, "cpus_per_worker": 1.0})
    default_layout = f"{default_metrics['num_workers']} x {default_metrics['threads_per_worker']} threads"

    print(f"\n{'run':<44}{'positions/s':>12}{'wall s':>9}")
    print(f"{f'SASRec-CE reference script, {threads} threads':<44}{reference.positions_per_second:>12,.0f}"
          f"{reference.train_seconds:>9.1f}")
    print(f"{f'rayrec loop, plain process, {threads} threads':<44}{plain:>12,.0f}{plain_seconds:>9.1f}")
    print(f"{'  the same with the default batch size':<44}{default_batch:>12,.0f}{default_batch_seconds:>9.1f}")
    print(f"{f'Ray Train, default layout ({default_layout})':<44}{default:>12,.0f}{default_seconds:>9.1f}")
    print(f"{f'Ray Train, {args.workers} workers x 1 thread':<44}{distributed:>12,.0f}{ray_seconds:>9.1f}")
    shipped_label = f"Ray Train, default layout and batch ({shipped_metrics.get('batch_size')} users)"
    print(f"{shipped_label:<44}{as_shipped:>12,.0f}{as_shipped_seconds:>9.1f}")
    print(f"{f'  the same batch over {args.workers} workers x 1 thread':<44}{distributed_default_batch:>12,.0f}"
          f"{distributed_default_batch_seconds:>9.1f}")
    print(f"ratio Ray Train default / reference, both at {args.batch_size}-user batches: "
          f"{default / reference.positions_per_second:.2f} (target >= 1.0)")
    print(f"ratio Ray Train default / plain loop: {default / plain:.2f}")
    print(f"ratio rayrec train's defaults / reference: {as_shipped / reference.positions_per_second:.2f}")
    print(f"ratio default batch, {args.workers} x 1 / default layout: {distributed_default_batch / as_shipped:.2f}")

    if args.full_run:
        full_config = TrainConfig(search={"enabled": False})
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            train_distributed(data, out, full_config, log=lambda line: None)
            seconds = time.perf_counter() - started
            metrics = json.loads((Path(out) / "metrics.json").read_text())
        print(f"full default --no-search training run on {args.dataset}: {seconds:.0f}s wall "
              f"({metrics['epochs_trained']} epochs, best validation NDCG@10 {metrics['best_val_ndcg@10']:.4f})")

    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
