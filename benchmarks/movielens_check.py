"""Reproduce the reference baseline numbers on MovieLens.

Usage::

    nice -n 19 python benchmarks/movielens_check.py PATH/TO/ml-100k

Protocol (``shared/datasets/README.md``): every rating is an interaction; per user, sort by
time (stable, file order on ties); the last item is the test target, the one before it the
validation target, the rest train. EASE's ``l2`` is chosen on validation NDCG@10 only. All
items are ranked with the user's train and validation items masked. Expected on ml-100k:
popularity NDCG@10 about 0.044, tuned EASE about 0.070.

Reads the raw files with numpy on purpose, so it checks the evaluation code independently of
rayrec's data pipeline; the split itself is rayrec's one leave-one-out
(:func:`rayrec.data.splits.leave_one_out_sequences`).
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

from rayrec.data.splits import leave_one_out_sequences
from rayrec.evaluation.baselines import EASEBaseline, ItemKNNBaseline, PopularityBaseline, fit_ease_tuned
from rayrec.evaluation.protocol import evaluate_ranking, format_table


def load_movielens(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) int64 columns in file order from ``u.data`` or ``ratings.csv``."""
    if (folder / "u.data").exists():
        table = np.loadtxt(folder / "u.data", dtype=np.int64, delimiter="\t", usecols=(0, 1, 3), ndmin=2)
    elif (folder / "ratings.csv").exists():
        with open(folder / "ratings.csv", newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        table = np.array([[int(r[0]), int(r[1]), int(r[3])] for r in rows], dtype=np.int64)
    else:
        raise FileNotFoundError(f"{folder} has neither u.data (ml-100k) nor ratings.csv (ml-latest-small)")
    return table[:, 0], table[:, 1], table[:, 2]


def leave_last_two_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray):
    """Per-user time-ordered sequences split into (train_seqs, valid (U,), test (U,), num_items).

    Users and items are re-indexed in order of first appearance. Users with fewer than three
    interactions keep everything in train and get -1 targets (the protocol skips them).
    """
    _, first_user, user_index = np.unique(users, return_index=True, return_inverse=True)
    user_index = np.argsort(np.argsort(first_user))[user_index]
    _, first_item, item_index = np.unique(items, return_index=True, return_inverse=True)
    item_index = np.argsort(np.argsort(first_item))[item_index]
    # lexsort's last key is primary: user, then time, then file position for stable ties.
    order = np.lexsort((np.arange(len(users)), timestamps, user_index))
    boundaries = np.flatnonzero(np.diff(user_index[order])) + 1
    sequences = np.split(item_index[order], boundaries)
    train, valid, test = leave_one_out_sequences(sequences)
    return train, valid, test, int(item_index.max()) + 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/movielens_check.py PATH/TO/ml-100k (or ml-latest-small)")
        raise SystemExit(2)
    folder = Path(argv[0])
    if not folder.exists():
        print(f"{folder} does not exist (pass the ml-100k or ml-latest-small folder)")
        raise SystemExit(2)
    train, valid, test, num_items = leave_last_two_out(*load_movielens(folder))
    # Test-time history is train plus the validation item, all masked.
    history = [np.append(seq, v) if v >= 0 else seq for seq, v in zip(train, valid)]
    print(f"{folder.name}: {len(train)} users, {num_items} items")

    rows: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    popularity = PopularityBaseline().fit(train, num_items)
    rows["popularity"] = evaluate_ranking(popularity.score, history, test, num_items)
    ease, l2 = fit_ease_tuned(train, valid, num_items)
    tried = ", ".join(f"{value:g}: {ndcg:.4f}" for value, ndcg in ease.validation_ndcg.items())
    print(f"EASE validation NDCG@10 by l2: {tried} -> l2 = {l2:g}")
    rows[f"ease l2={l2:g}"] = evaluate_ranking(ease.score, history, test, num_items)
    # Refit on train + validation with the chosen l2: the user's input then includes the
    # validation item too (a common variant; numbers are a little higher).
    refit = EASEBaseline(l2).fit(history, num_items)
    rows[f"ease l2={l2:g} refit"] = evaluate_ranking(refit.score, history, test, num_items)
    knn = ItemKNNBaseline().fit(train, num_items)
    rows["item_knn"] = evaluate_ranking(knn.score, history, test, num_items)
    print(format_table(rows, ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20", "Coverage@10", "users")))
    print(f"({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
