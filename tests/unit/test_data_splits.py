"""Splits: leave-one-out per user (tables and encoded sequences) and the global temporal split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rayrec.data import (
    build_vocabularies,
    hold_out_last,
    leave_one_out,
    leave_one_out_sequences,
    load_dataset,
    temporal_split,
    user_sequences,
)
from rayrec.schema import Interactions


def interactions(rows) -> Interactions:
    users, items, times = zip(*rows)
    return Interactions(
        user_id=np.array(users, dtype=object),
        item_id=np.array(items, dtype=object),
        timestamp=np.array(times, dtype=np.int64),
    )


def rows_of(data: Interactions) -> list[tuple]:
    return list(zip(data.user_id.tolist(), data.item_id.tolist(), data.timestamp.tolist()))


def test_leave_one_out_by_hand_with_ties_and_short_users():
    data = interactions([
        ("a", "late", 9),
        ("a", "first", 1),
        ("b", "only", 5),
        ("a", "tie1", 5),  # a's last two share a second: file order decides, tie2 is later
        ("c", "c1", 1),
        ("a", "tie2", 5),
        ("c", "c2", 2),
        ("a", "early", 2),
    ])
    split = leave_one_out(data)
    assert rows_of(split.test) == [("a", "late", 9)]
    assert rows_of(split.validation) == [("a", "tie2", 5)]
    # Users b (1 event) and c (2 events) keep everything in train; train keeps file order.
    assert rows_of(split.train) == [
        ("a", "first", 1), ("b", "only", 5), ("a", "tie1", 5), ("c", "c1", 1), ("c", "c2", 2), ("a", "early", 2),
    ]


def test_leave_one_out_ties_at_the_very_end_keep_file_order():
    split = leave_one_out(interactions([("u", "x", 1), ("u", "y", 7), ("u", "z", 7)]))
    assert rows_of(split.test) == [("u", "z", 7)] and rows_of(split.validation) == [("u", "y", 7)]


def check_leave_one_out(data: Interactions, num_users: int) -> None:
    split = leave_one_out(data)
    assert len(split.train) + len(split.validation) + len(split.test) == len(data)
    # Every user has at least 20 ratings in both datasets, so each gets exactly one of each.
    assert Counter(split.test.user_id.tolist()) == {user: 1 for user in set(data.user_id)}
    assert Counter(split.validation.user_id.tolist()) == {user: 1 for user in set(data.user_id)}
    assert len(split.test) == num_users
    latest = {}
    for user, timestamp in zip(data.user_id.tolist(), data.timestamp.tolist()):
        latest[user] = max(latest.get(user, timestamp), timestamp)
    test_times = dict(zip(split.test.user_id.tolist(), split.test.timestamp.tolist()))
    assert test_times == latest
    validation_times = dict(zip(split.validation.user_id.tolist(), split.validation.timestamp.tolist()))
    train_latest = {}
    for user, timestamp in zip(split.train.user_id.tolist(), split.train.timestamp.tolist()):
        train_latest[user] = max(train_latest.get(user, timestamp), timestamp)
    assert all(train_latest[u] <= validation_times[u] <= test_times[u] for u in test_times)


def test_leave_one_out_on_movielens_100k(ml100k_path):
    check_leave_one_out(load_dataset(ml100k_path).interactions, 943)


def test_leave_one_out_on_movielens_latest_small(ml_latest_small_path):
    check_leave_one_out(load_dataset(ml_latest_small_path).interactions, 610)


def test_sequence_split_matches_the_table_split(ml100k_path):
    data = load_dataset(ml100k_path).interactions
    users, items = build_vocabularies(data)
    train, validation_targets, test_targets = leave_one_out_sequences(user_sequences(data, users, items))
    split = leave_one_out(data)
    assert validation_targets.dtype == np.int64 and test_targets.shape == (943,)
    test_items = dict(zip(split.test.user_id.tolist(), split.test.item_id.tolist()))
    validation_items = dict(zip(split.validation.user_id.tolist(), split.validation.item_id.tolist()))
    for user_index, user in enumerate(users):
        assert items.ids[test_targets[user_index]] == test_items[user]
        assert items.ids[validation_targets[user_index]] == validation_items[user]
    assert sum(len(s) for s in train) == len(split.train)


def test_sequence_split_short_users_get_minus_one():
    sequences = [np.array([4, 5, 6, 7]), np.array([1, 2]), np.array([], dtype=np.int64), np.array([3, 2, 1])]
    train, validation, test = leave_one_out_sequences(sequences)
    assert [t.tolist() for t in train] == [[4, 5], [1, 2], [], [3]]
    assert validation.tolist() == [6, -1, -1, 2]
    assert test.tolist() == [7, -1, -1, 1]


def test_hold_out_last_keeps_at_least_one_item_to_train_on():
    sequences = [np.array([4, 5, 6]), np.array([1]), np.array([], dtype=np.int64), np.array([8, 9])]
    train, held_out = hold_out_last(sequences, 2, missing=0)
    assert [t.tolist() for t in train] == [[4], [1], [], [8, 9]]
    assert held_out.tolist() == [[5, 6], [0, 0], [0, 0], [0, 0]]
    train, held_out = hold_out_last(sequences, 1)
    assert [t.tolist() for t in train] == [[4, 5], [1], [], [8]]
    assert held_out[:, 0].tolist() == [6, -1, -1, 9]


def test_hold_out_last_samples_a_fixed_set_of_users():
    sequences = [np.arange(4)] * 30
    train, held_out = hold_out_last(sequences, 1, max_users=5)
    held = np.flatnonzero(held_out[:, 0] >= 0)
    assert len(held) == 5 and np.array_equal(held, np.flatnonzero(hold_out_last(sequences, 1, max_users=5)[1][:, 0] >= 0))
    assert all(len(train[u]) == (3 if u in held else 4) for u in range(30))


def test_temporal_split_is_global_by_time():
    rows = [(f"u{i % 3}", f"i{i}", t) for i, t in enumerate([50, 10, 40, 20, 30, 90, 60, 80, 70, 100])]
    split = temporal_split(interactions(rows), test_fraction=0.2, validation_fraction=0.1)
    assert sorted(split.test.timestamp.tolist()) == [90, 100]
    assert split.validation.timestamp.tolist() == [80]
    assert max(split.train.timestamp) < min(split.validation.timestamp)
    assert len(split.train) == 7
    assert len(temporal_split(interactions(rows)).validation) == 0  # validation empty by default


def test_temporal_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to less than 1"):
        temporal_split(interactions([("u", "i", 1)]), test_fraction=0.6, validation_fraction=0.5)
