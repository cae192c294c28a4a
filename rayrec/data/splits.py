"""Train/validation/test splits: leave-one-out per user, and a global temporal split.

Leave-one-out (the protocol of the project's reference numbers): per user, interactions
sorted by time, stable on ties (file order); the last one is the test item, the one before it
the validation item, the rest train. Users with fewer than 3 interactions keep everything in
train: holding out from them would leave nothing, or a single item, to learn their taste from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.data.preprocessing import factorize, time_order
from rayrec.schema import Interactions

#: Users need at least this many interactions to get a validation and a test interaction.
MIN_INTERACTIONS_TO_HOLD_OUT = 3
#: Target value for users too short to hold anything out.
NO_TARGET = -1


@dataclass
class Split:
    """Three disjoint parts of one interactions table; each keeps the original row order."""

    train: Interactions
    validation: Interactions
    test: Interactions


def position_from_end(interactions: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (how many of its user's interactions are later, the user's total count).

    Both (n,) int64. "Later" is by timestamp with ties in file order, so the user's latest
    row has 0, the one before it 1.
    """
    users, _ = factorize(interactions.user_id)
    order = time_order(users, interactions.timestamp)
    counts = np.bincount(users)
    sorted_users = users[order]
    # Rank of each sorted row within its user's block: position minus the block start.
    block_start = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - block_start[sorted_users]
    from_end = np.empty(len(order), dtype=np.int64)
    from_end[order] = counts[sorted_users] - 1 - rank
    return from_end, counts[users]


def leave_one_out(interactions: Interactions) -> Split:
    """Per user: latest interaction -> test, second latest -> validation, the rest -> train.

    Users with fewer than 3 interactions put all of them in train (see the module docstring),
    so ``len(test) == len(validation) ==`` the number of users with at least 3 interactions.
    """
    if len(interactions) == 0:
        return Split(interactions, interactions, interactions)
    from_end, user_counts = position_from_end(interactions)
    eligible = user_counts >= MIN_INTERACTIONS_TO_HOLD_OUT
    test = eligible & (from_end == 0)
    validation = eligible & (from_end == 1)
    train = ~(test | validation)
    return Split(interactions.take(train), interactions.take(validation), interactions.take(test))


def leave_one_out_sequences(sequences: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Leave-one-out on encoded, time-ordered sequences (from ``user_sequences``).

    Returns ``(train_sequences, validation_targets, test_targets)``: for a user with at least
    3 items, the train sequence drops the last two, validation target = second to last item,
    test target = last item. Shorter users keep their full sequence and get -1 targets.
    Targets are (num_users,) int64.
    """
    num_users = len(sequences)
    validation_targets = np.full(num_users, NO_TARGET, dtype=np.int64)
    test_targets = np.full(num_users, NO_TARGET, dtype=np.int64)
    train_sequences: list[np.ndarray] = []
    for user, sequence in enumerate(sequences):
        if len(sequence) >= MIN_INTERACTIONS_TO_HOLD_OUT:
            train_sequences.append(sequence[:-2])
            validation_targets[user] = sequence[-2]
            test_targets[user] = sequence[-1]
        else:
            train_sequences.append(sequence)
    return train_sequences, validation_targets, test_targets


def temporal_split(interactions: Interactions, test_fraction: float = 0.2, validation_fraction: float = 0.0) -> Split:
    """Global split by time: the latest ``test_fraction`` of rows -> test, the
    ``validation_fraction`` before them -> validation, the rest -> train.

    Rows are ordered by timestamp, stable (ties in file order), and cut by row count, so the
    fractions are exact; rows sharing the boundary second may fall on either side. Validation
    is empty by default. Unlike leave-one-out, test users may be unseen in train (cold start).
    """
    if not 0 <= test_fraction < 1 or not 0 <= validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise ValueError(
            f"test_fraction ({test_fraction}) and validation_fraction ({validation_fraction}) must "
            "be in [0, 1) and sum to less than 1"
        )
    n = len(interactions)
    order = np.argsort(interactions.timestamp, kind="stable")
    num_test = int(round(n * test_fraction))
    num_validation = int(round(n * validation_fraction))
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 validation, 2 test
    part[order[n - num_test :]] = 2
    part[order[n - num_test - num_validation : n - num_test]] = 1
    return Split(interactions.take(part == 0), interactions.take(part == 1), interactions.take(part == 2))
