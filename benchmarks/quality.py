"""Leave-one-out quality of rayrec's default model next to the baselines on MovieLens.

    python benchmarks/quality.py [--datasets ml-100k ml-latest-small] [--num-workers 2] [--in-process]

Protocol (../shared/datasets/README.md): every rating is an interaction; per user, sorted by
time (stable); last = test, second to last = validation (early stopping and baseline tuning
only); all items ranked with the user's history masked. Prints NDCG@10 and HR@10 per method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASETS = Path(os.environ.get("RAYREC_DATASETS", HERE.parent.parent / "shared" / "datasets"))
# Best reference numbers from the training issue (popularity, EASE best λ, tuned ALS).
REFERENCE_NDCG = {"ml-100k": {"popularity": 0.044, "EASE": 0.070, "ALS": 0.076},
                  "ml-latest-small": {"popularity": 0.019, "EASE": 0.036, "ALS": 0.032}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"])
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--in-process", action="store_true", help="Train without Ray.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--config", type=Path, default=None, help="Training config YAML (default: the defaults).")
    args = parser.parse_args()

    from rayrec.cli.evaluate_cmd import evaluate_leave_one_out
    from rayrec.cli.train_cmd import load_training_data
    from rayrec.training.config import load_train_config

    all_results = {}
    for name in args.datasets:
        path = DATASETS / name
        if not path.exists():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        config = load_train_config(args.config, num_workers=args.num_workers)
        data = load_training_data(str(path), None, None, config, echo=lambda line: None)
        started = time.perf_counter()
        results = evaluate_leave_one_out(data, config, in_process=args.in_process, log=lambda line: None)
        seconds = time.perf_counter() - started
        all_results[name] = results
        best_reference = max(REFERENCE_NDCG[name].values())
        print(f"\n{name}: {len(data.user_vocab)} users, {data.num_items} items ({seconds:.0f}s incl. baselines)")
        print(f"{'method':<22}{'NDCG@10':>9}{'HR@10':>9}")
        for method, metrics in results.items():
            print(f"{method:<22}{metrics['NDCG@10']:>9.4f}{metrics['HR@10']:>9.4f}")
        for method, value in REFERENCE_NDCG[name].items():
            print(f"{'reference ' + method:<22}{value:>9.3f}")
        model_ndcg = next(m["NDCG@10"] for k, m in results.items() if k.startswith("rayrec"))
        print(f"rayrec / best reference NDCG@10: {model_ndcg / best_reference:.2f}x "
              f"(target >= 1.25x, i.e. >= {1.25 * best_reference:.3f})")
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
