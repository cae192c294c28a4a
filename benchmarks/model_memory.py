"""What one process that loads a model directory holds of its item metadata, mapped or loaded.

    python benchmarks/model_memory.py --model DIR [--lookups 20000]

Side by side, each in a fresh process: ``load_model_dir`` plus the scorer's view of the item
metadata (``item_records``), once on ``DIR`` as export wrote it (``items.jsonl`` mapped through
``items.offsets.npy``, rayrec/models/item_records.py) and once on a copy made of symbolic
links without the offsets file (the records loaded as a list and a dict, as before). Printed:
the resident memory the load added (libraries imported beforehand), the load time, and the
median time of a request-sized read (the categories of 100 candidates, popular ones repeating
as in real traffic: items drawn by popularity).

Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = r"""
import json, statistics, sys, time
import numpy as np, torch  # noqa: F401  (the libraries, before the baseline)
try:
    import faiss  # noqa: F401
except ImportError:
    pass

def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20

from rayrec.models.servable import load_model_dir
from rayrec.serving.graph.model_loading import item_records

model_dir, lookups = sys.argv[1], int(sys.argv[2])
before, started = rss_mb(), time.perf_counter()
model = load_model_dir(model_dir)
records = item_records(model, model_dir)
load_s = time.perf_counter() - started
popularity = np.asarray(model.item_popularity, dtype=np.float64) + 1.0
rng = np.random.default_rng(0)
rows = rng.choice(len(popularity), size=(lookups // 100, 100), p=popularity / popularity.sum())
ids = model.item_ids
timings = []
for batch in rows:
    wanted = [ids[int(r)] for r in batch]
    started = time.perf_counter()
    for item_id in wanted:
        records.get(item_id, {}).get("categories")
    timings.append(time.perf_counter() - started)
print(json.dumps({"kind": type(model.items).__name__, "rss_mb": rss_mb() - before, "load_s": load_s,
                  "request_us": 1e6 * statistics.median(timings), "items": len(ids)}))
"""


def measure(model_dir: Path, lookups: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(model_dir), str(lookups)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_offsets(model_dir: Path, into: Path) -> Path:
    """``model_dir`` as a directory from before the offsets: links to every other file."""
    for path in model_dir.iterdir():
        if path.name != "items.offsets.npy":
            (into / path.name).symlink_to(path.resolve())
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args()
    if not (args.model / "items.offsets.npy").exists():
        raise SystemExit(f"{args.model}: no items.offsets.npy (exported before the metadata was mapped)")
    with tempfile.TemporaryDirectory() as scratch:
        rows = [("mapped (what serving does)", measure(args.model, args.lookups)),
                ("loaded as a list and dict (before)", measure(without_offsets(args.model, Path(scratch)), args.lookups))]
    print(f"{rows[0][1]['items']:,} items, {args.model}")
    print(f"{'item metadata':<38}{'RSS added by the load':>22}{'load s':>8}{'100 candidates us':>19}")
    for label, row in rows:
        print(f"{label:<38}{row['rss_mb']:>19,.0f} MB{row['load_s']:>8.1f}{row['request_us']:>19.0f}")
    print(f"mapped / loaded RSS: {rows[0][1]['rss_mb'] / rows[1][1]['rss_mb']:.2f}")


if __name__ == "__main__":
    main()
