"""Training steps per second with the item table updated densely or row by row.

    python benchmarks/item_updates.py [--items 100000 1000000] [--steps 12]

The default SASRec model (ModelConfig's defaults: dim 128, max_len 200, sampled softmax
with 1,000 uniform negatives) takes full training steps (forward, backward, clipping,
optimizer) on random batches of 15 users x 200 positions, about the 3,000 positions that
``rayrec train`` batches by default. For each catalogue size two models are built side by
side, one with AdamW over every parameter (``sparse_item_updates: false``) and one with the
id table under SparseAdam (the default, rayrec/training/optimizer.py), and their steps
alternate, so both see the same load. Printed: the median step time and positions/s of each
and the ratio.

Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_two_tower
from rayrec.training.loop import NextItemLoss
from rayrec.training.optimizer import build_optimizer, clip_gradients

USERS_PER_BATCH, POSITIONS = 15, 200


def trainer(num_items: int, row_wise: bool, log_q: torch.Tensor, config: ModelConfig):
    torch.manual_seed(0)
    model = build_two_tower(config, num_items)
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.0, item_rows_row_wise=row_wise)
    loss_module = NextItemLoss(model, loss_kind="sampled", log_q=log_q,
                               num_uniform_negatives=config.num_uniform_negatives, temperature=config.temperature)

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> float:
        started = time.perf_counter()
        loss, _ = loss_module(inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), 5.0)
        optimizer.step()
        return time.perf_counter() - started

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=12, help="Timed steps per variant (after 3 warm-up steps).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig(loss="sampled")
    rng = np.random.default_rng(0)
    print(f"SASRec dim {config.dim}, batches of {USERS_PER_BATCH} x {POSITIONS} positions, "
          f"{config.num_uniform_negatives} uniform negatives, {args.threads} threads")
    print(f"{'items':>10} {'dense ms':>9} {'row-wise ms':>12} {'dense pos/s':>12} {'row-wise pos/s':>15} {'ratio':>6}")
    for num_items in args.items:
        # Zipf-like popularity, as real catalogues have (and logQ corrects for).
        popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
        popularity /= popularity.sum()
        log_q = torch.from_numpy(np.log(np.concatenate([[1e-12], popularity]))).float()
        steps = {"dense": trainer(num_items, False, log_q, config), "row-wise": trainer(num_items, True, log_q, config)}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for round_number in range(3 + args.steps):
            batch = rng.choice(num_items, size=(USERS_PER_BATCH, POSITIONS + 1), p=popularity) + 1
            inputs, labels = torch.from_numpy(batch[:, :-1]), torch.from_numpy(batch[:, 1:])
            for name, step in steps.items():
                elapsed = step(inputs, labels)
                if round_number >= 3:
                    times[name].append(elapsed)
        dense, row_wise = statistics.median(times["dense"]), statistics.median(times["row-wise"])
        positions = USERS_PER_BATCH * POSITIONS
        print(f"{num_items:>10,} {dense * 1000:>9.0f} {row_wise * 1000:>12.0f} {positions / dense:>12,.0f} "
              f"{positions / row_wise:>15,.0f} {dense / row_wise:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
