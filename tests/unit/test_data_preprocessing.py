"""Preprocessing: duplicates, rating threshold, k-core, vocabularies and time-ordered sequences."""

from __future__ import annotations

import numpy as np
import pytest

from rayrec.data import build_vocabularies, preprocess, user_sequences
from rayrec.errors import DataError
from rayrec.schema import Dataset, Interactions, LoadReport


def interactions(rows, values=None) -> Interactions:
    """``rows``: (user, item, timestamp) tuples in file order."""
    users, items, times = zip(*rows) if rows else ((), (), ())
    return Interactions(
        user_id=np.array(users, dtype=object),
        item_id=np.array(items, dtype=object),
        timestamp=np.array(times, dtype=np.int64),
        value=None if values is None else np.array(values, dtype=np.float32),
    )


def rows_of(data: Interactions) -> list[tuple]:
    return list(zip(data.user_id.tolist(), data.item_id.tolist(), data.timestamp.tolist()))


def test_exact_duplicates_are_dropped_and_counted():
    data = interactions([("a", "x", 1), ("a", "x", 1), ("a", "x", 2), ("b", "x", 1), ("a", "x", 1)], values=[5, 5, 5, 5, 4])
    dataset = Dataset("t", data, report=LoadReport(rows_read=5))
    cleaned = preprocess(dataset)
    # Row 1 repeats row 0 in every column; row 4 differs in value, so it stays.
    assert rows_of(cleaned.interactions) == [("a", "x", 1), ("a", "x", 2), ("b", "x", 1), ("a", "x", 1)]
    assert cleaned.interactions.value.tolist() == [5, 5, 5, 4]
    assert cleaned.report.duplicates_dropped == 1 and cleaned.report.rows_read == 5
    assert dataset.report.duplicates_dropped == 0  # the input is not modified
    assert len(preprocess(dataset, drop_duplicates=False).interactions) == 5


def test_rating_threshold_keeps_values_at_or_above():
    data = interactions([("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("b", "z", 4)], values=[3.5, 4.0, 5.0, np.nan])
    cleaned = preprocess(Dataset("t", data), rating_threshold=4.0)
    assert rows_of(cleaned.interactions) == [("a", "y", 2), ("b", "x", 3)]
    assert cleaned.report.below_threshold_dropped == 2


def test_rating_threshold_without_values_is_an_error():
    with pytest.raises(DataError, match="rating_threshold=4.0 needs a value column"):
        preprocess(Dataset("t", interactions([("a", "x", 1)])), rating_threshold=4.0)


def test_kcore_is_iterative():
    # k=2. Item "z" has one interaction -> dropped; that leaves user "c" with one -> dropped;
    # that leaves item "y" with one -> dropped; then user "b" has one -> dropped.
    rows = [
        ("a", "x", 1), ("a", "w", 2), ("d", "x", 3), ("d", "w", 4),
        ("b", "x", 5), ("b", "y", 6),
        ("c", "y", 7), ("c", "z", 8),
    ]
    cleaned = preprocess(Dataset("t", interactions(rows)), kcore=2)
    assert rows_of(cleaned.interactions) == rows[:4]
    assert cleaned.report.kcore_dropped == 4
    users, counts = np.unique(cleaned.interactions.user_id.astype(str), return_counts=True)
    assert counts.min() >= 2


def test_kcore_after_threshold_counts_only_kept_rows():
    rows = [("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("b", "y", 4)]
    cleaned = preprocess(Dataset("t", interactions(rows, values=[5, 5, 5, 1])), rating_threshold=3, kcore=2)
    # The threshold drops (b, y). Then b and y have one row each and go, which leaves a with
    # one row, so a goes too: nothing survives, and k-core counted the three rows it dropped.
    assert len(cleaned.interactions) == 0
    assert cleaned.report.below_threshold_dropped == 1 and cleaned.report.kcore_dropped == 3


def test_vocabularies_are_in_first_appearance_order():
    users, items = build_vocabularies(interactions([("b", "y", 1), ("a", "y", 2), ("b", "x", 0)]))
    assert users.ids == ["b", "a"] and items.ids == ["y", "x"]


def test_user_sequences_sort_by_time_with_ties_in_file_order():
    data = interactions([
        ("u1", "c", 30),
        ("u2", "p", 5),
        ("u1", "a", 10),
        ("u1", "t1", 20),  # three events in the same second: file order t1, t2, t3
        ("u1", "t2", 20),
        ("u2", "q", 5),
        ("u1", "t3", 20),
    ])
    users, items = build_vocabularies(data)
    sequences = user_sequences(data, users, items)
    assert len(sequences) == 2
    assert items.decode(sequences[users.index_of("u1")]) == ["a", "t1", "t2", "t3", "c"]
    assert items.decode(sequences[users.index_of("u2")]) == ["p", "q"]
    assert all(s.dtype == np.int64 for s in sequences)


def test_user_sequences_with_a_training_vocabulary_skip_unknown_ids():
    train = interactions([("u1", "a", 1), ("u2", "b", 2)])
    users, items = build_vocabularies(train)
    later = interactions([("u1", "b", 5), ("u3", "a", 6), ("u2", "new", 7), ("u1", "a", 4)])
    sequences = user_sequences(later, users, items)
    assert [items.decode(s) for s in sequences] == [["a", "b"], []]


def test_user_sequences_of_a_million_rows_are_complete_and_in_time_order():
    rng = np.random.default_rng(0)
    n = 1_000_000
    timestamps = rng.integers(0, 10_000, n).astype(np.int64)
    data = Interactions(
        user_id=np.array([f"u{i}" for i in rng.integers(0, 20_000, n)], dtype=object),
        # Item ids spell their timestamp, so a decoded sequence shows whether it is in time order.
        item_id=np.array([f"t{t}" for t in timestamps], dtype=object),
        timestamp=timestamps,
    )
    users, items = build_vocabularies(data)
    sequences = user_sequences(data, users, items)
    assert len(sequences) == len(users) and sum(len(s) for s in sequences) == n
    for user in (0, len(users) // 2, len(users) - 1):
        times = [int(item[1:]) for item in items.decode(sequences[user])]
        assert times == sorted(times)
