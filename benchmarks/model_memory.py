"""What one process that loads a model directory holds of its weights and item metadata, mapped or read.

    python benchmarks/model_memory.py --model DIR [--lookups 20000]

Side by side, each in a fresh process: ``load_model_dir`` plus the scorer's view of the item
metadata (``item_records``),

- on ``DIR`` as serving loads it: ``weights.pt`` mapped and the network built on the meta device
  with the mapped tensors as its own (two-tower models, rayrec/models/trained.py), and
  ``items.jsonl`` mapped through ``items.offsets.npy`` (rayrec/models/item_records.py);
- with the weights read into the process as before (the network built with its random
  initialisation, then ``load_state_dict`` copying ``torch.load``'s tensors into it: the old
  code path, patched in for this row);
- and, in addition, on a copy made of symbolic links without the offsets file (the records
  loaded as a list and a dict, as before that).

Printed: the resident memory the load added (libraries imported beforehand), the process's
private memory then (``Private_Dirty``, what a second replica does not share), its peak RSS, the
load time, and the median time of a request-sized read (the categories of 100 candidates,
popular ones repeating as in real traffic: items drawn by popularity).

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

import resource

def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20

def private_mb():
    with open("/proc/self/smaps_rollup") as handle:
        return sum(int(line.split()[1]) for line in handle if line.startswith("Private_Dirty:")) / 1024

from rayrec.models.servable import load_model_dir
from rayrec.serving.graph.model_loading import item_records

model_dir, lookups, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if weights == "read":  # the load as it was: weights read, the network initialised, then copied into
    import rayrec.models.trained as trained
    from rayrec.models.factory import build_two_tower
    load = torch.load
    torch.load = lambda *args, **kwargs: load(*args, **{**kwargs, "mmap": False})

    def read_network(model_config, num_items, inputs, num_user_feature_values, state, model_dir):
        network = build_two_tower(model_config, num_items, inputs, num_user_feature_values=num_user_feature_values)
        network.load_state_dict(state)
        return network

    trained._network_of = read_network
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
                  "private_mb": private_mb(), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "request_us": 1e6 * statistics.median(timings), "items": len(ids)}))
"""


def measure(model_dir: Path, lookups: int, weights: str = "mapped") -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(model_dir), str(lookups), weights],
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
    two_tower = json.loads((args.model / "config.json").read_text()).get("model_kind") == "two_tower"
    with tempfile.TemporaryDirectory() as scratch:
        rows = [("weights and metadata mapped (serving)", measure(args.model, args.lookups))]
        if two_tower:
            rows.append(("weights read, metadata mapped (before)", measure(args.model, args.lookups, "read")))
        rows.append(("weights read, metadata a list and dict", measure(without_offsets(args.model, Path(scratch)),
                                                                       args.lookups, "read" if two_tower else "mapped")))
    print(f"{rows[0][1]['items']:,} items, {args.model}")
    print(f"{'load':<40}{'RSS added':>11}{'private':>10}{'peak RSS':>10}{'load s':>8}{'100 candidates us':>19}")
    for label, row in rows:
        print(f"{label:<40}{row['rss_mb']:>8,.0f} MB{row['private_mb']:>7,.0f} MB{row['peak_mb']:>7,.0f} MB"
              f"{row['load_s']:>8.1f}{row['request_us']:>19.0f}")
    for label, row in rows[1:]:
        print(f"serving / {label}: RSS added {rows[0][1]['rss_mb'] / row['rss_mb']:.2f}, "
              f"private {rows[0][1]['private_mb'] / row['private_mb']:.2f}")


if __name__ == "__main__":
    main()
