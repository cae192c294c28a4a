"""Rehearse an A/B test on ml-100k: a model trained on more data against one trained on less,
replayed with ``rayrec experiments replay`` over the events that came after both.

    python benchmarks/experiment_replay.py [--movielens /work/shared/datasets/ml-100k]
                                           [--workdir /tmp/rayrec-replay] [--epochs 3] [--limit N]

The ratings (u.data) are ordered by time. The last 10% are the replayed log (ask, then feed the
event back, as live traffic would). Arm ``less`` is trained on the 10% of events just before
them (the most recent data, but a ninth of it), arm ``more`` on all 90%; both with ``rayrec train --no-search --in-process
--epochs 3`` (the default two-tower model, small and quick on a laptop CPU). Prints the
readout table (and writes replay.png); a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path


def write_csv(path: Path, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", default="/work/shared/datasets/ml-100k", help="The ml-100k folder (u.data).")
    parser.add_argument("--workdir", default="/tmp/rayrec-replay")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--less-fraction", type=float, default=0.1, help="Of all events, the latest before the log.")
    parser.add_argument("--limit", type=int, default=None, help="Replay only the first N events.")
    options = parser.parse_args()

    work = Path(options.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in (Path(options.movielens) / "u.data").read_text().splitlines():
        user, item, _rating, timestamp = line.split("\t")
        rows.append((user, item, int(timestamp)))
    rows.sort(key=lambda row: (row[2], row[0], row[1]))
    cut = int(len(rows) * 0.9)
    write_csv(work / "train_more.csv", rows[:cut])
    write_csv(work / "train_less.csv", rows[cut - int(len(rows) * options.less_fraction):cut])
    write_csv(work / "replay.csv", rows[cut:])

    rayrec = [sys.executable, "-m", "rayrec"]
    for arm in ("less", "more"):
        if not (work / f"model-{arm}" / "config.json").exists():
            subprocess.run([*rayrec, "train", "--interactions", str(work / f"train_{arm}.csv"), "--out",
                            str(work / f"model-{arm}"), "--no-search", "--in-process", "--epochs",
                            str(options.epochs)], check=True)
    command = [*rayrec, "experiments", "replay", "--interactions", str(work / "replay.csv"),
               "--arm", f"less={work / 'model-less'}", "--arm", f"more={work / 'model-more'}",
               "--chart", str(work / "replay.png")]
    if options.limit:
        command += ["--limit", str(options.limit)]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
