"""The first request that filters on an attribute value, with export's filter index and without.

    python benchmarks/filters.py [--items 1000000] [--values 5] [--workdir DIR]

Writes ``--items`` item records shaped like ``rayrec synthetic``'s (a title, a sentence of text,
two categories of 400) with :func:`rayrec.models.item_records.write_item_records`, as export
writes a model directory's, then, in a fresh process per variant, loads them as a scorer does
(:func:`read_item_records`, mapped) and times ``matching_rows("categories", value)`` for
``--values`` category values never asked before: the work the first request with that filter
does. ``index``: export's ``items.filters.json``; ``scan``: the same records without it (a model
directory written before the index), which parses every record once per value. Printed: the
median and the slowest, and their ratio. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEASURE = """
import json, sys, time
from pathlib import Path
from rayrec.models.item_records import read_item_records
from rayrec.schema import Vocabulary
directory, values = Path(sys.argv[1]), json.loads(sys.argv[2])
vocabulary = Vocabulary.load(directory / "item_vocab.json")
by_id = read_item_records(directory, vocabulary).by_id
seconds, matched = [], []
for value in values:
    started = time.perf_counter()
    rows = by_id.matching_rows("categories", value)
    seconds.append(time.perf_counter() - started)
    matched.append(len(rows))
print(json.dumps({"seconds": seconds, "matched": matched}))
"""


def write_records(directory: Path, items: int) -> None:
    from rayrec.models.item_records import write_item_records
    from rayrec.schema import Vocabulary

    if (directory / "items.filters.json").exists():
        return
    ids = [f"i{i:07d}" for i in range(items)]
    records = ({"item_id": item_id, "title": f"Classic title {i}, part {i % 5000}",
                "text": f"Classic words about topic{i % 400} and topic{(i * 7) % 400}, and more.",
                "categories": [f"genre{i % 400}", f"genre{(i * 7 + 1) % 400}"]} for i, item_id in enumerate(ids))
    Vocabulary(ids).save(directory / "item_vocab.json")
    write_item_records(directory, records, ids)


def measure(directory: Path, values: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(directory), json.dumps(values)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--values", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep (and reuse) the records here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rayrec-filters-") as scratch:
        indexed = args.workdir or Path(scratch) / "indexed"
        indexed.mkdir(parents=True, exist_ok=True)
        write_records(indexed, args.items)
        scanned = Path(scratch) / "scanned"  # the same records, no index
        scanned.mkdir()
        for name in ("item_vocab.json", "items.jsonl", "items.offsets.npy"):
            shutil.copy(indexed / name, scanned / name)
        values = [f"genre{v}" for v in range(0, 400, 400 // args.values)][: args.values]
        results = {"index": measure(indexed, values), "scan": measure(scanned, values)}
    assert results["index"]["matched"] == results["scan"]["matched"], results
    print(f"{args.items:,} item records; first use of {len(values)} filter values "
          f"(categories, {results['index']['matched'][0]:,} matching items each)")
    print(f"{'variant':<8}{'median ms':>12}{'slowest ms':>12}")
    for name, result in results.items():
        print(f"{name:<8}{1000 * statistics.median(result['seconds']):>12,.2f}{1000 * max(result['seconds']):>12,.2f}")
    ratio = statistics.median(results["scan"]["seconds"]) / statistics.median(results["index"]["seconds"])
    print(f"scan / index (median): {ratio:,.0f}x")


if __name__ == "__main__":
    main()
