"""What calibrating new items' scores costs a search: exact top-10, raw against calibrated.

    python benchmarks/new_item_calibration.py [--items 100000] [--new-items 1000] [--dim 64]

Two ``ItemIndex`` copies of the same catalogue (trained rows plus rows added after training),
one with ``new_item_calibration`` and one without, queried alternately with the same random
user vectors so machine noise hits both alike. Prints median milliseconds and their ratio.
One BLAS thread, as serving replicas run (``threads_per_replica``).
"""

from __future__ import annotations

import argparse
import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    from rayrec.models.new_items import NewItemCalibration
    from rayrec.serving.stages.index import ItemIndex

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="Trained items.")
    parser.add_argument("--new-items", type=int, default=1000, help="Items added after training.")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    full = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    content = (0.3 * full + 0.1 * rng.normal(size=full.shape)).astype(np.float32)
    calibration = NewItemCalibration.fit(full, content)
    item_ids = [f"item{i}" for i in range(args.items)]
    new_ids = [f"new{i}" for i in range(args.new_items)]
    new_vectors = content[rng.choice(args.items, size=args.new_items)]
    indexes = {}
    for label, used in (("raw scores", None), ("calibrated", calibration)):
        # exact search at any size: the calibrated ANN path scores new rows exactly anyway
        index = ItemIndex(item_ids, full, exact_max_items=10**9, new_item_calibration=used)
        index.upsert(new_ids, new_vectors)
        indexes[label] = index
    allowed = indexes["raw scores"].allowed_mask([])
    seconds: dict[str, list[float]] = {label: [] for label in indexes}
    for _ in range(args.requests):
        query = rng.normal(size=args.dim).astype(np.float32)
        for label, index in indexes.items():
            started = time.perf_counter()
            index.search(query, 10, allowed)
            seconds[label].append(time.perf_counter() - started)
    print(f"{args.items:,} trained + {args.new_items:,} new items, d={args.dim}, {args.requests} requests each")
    medians = {label: float(np.median(values)) * 1e3 for label, values in seconds.items()}
    for label, median in medians.items():
        print(f"  {label:<11} median {median:.3f} ms")
    print(f"  calibrated / raw: {medians['calibrated'] / medians['raw scores']:.3f}")


if __name__ == "__main__":
    main()
