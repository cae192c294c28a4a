"""Train/validation/test splits: leave-one-out per user, and a global temporal split.

Leave-one-out (the protocol of the project's reference numbers): per user, interactions
sorted by time, stable on ties (file order); the last one is the test item, the one before it
the validation item, the rest train. Users with fewer than 3 interactions keep everything in
train: holding out from them would leave nothing, or a single item, to learn their taste from.

:func:`hold_out_last` is the one rule behind every leave-one-out in rayrec: a user gets the
last ``count`` items held out only when at least one item is left to train on. The table
split (:func:`leave_one_out`), the sequence split (:func:`leave_one_out_sequences`), the
validation split of ``rayrec train`` (``count=1``) and ``rayrec evaluate`` all apply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rayrec.data.preprocessing import factorize, time_order
from rayrec.schema import Interactions

#: Items held out per user by leave-one-out: the validation item and the test item.
LEAVE_ONE_OUT_HELD_OUT = 2
#: Users need at least this many interactions to get a validation and a test interaction.
MIN_INTERACTIONS_TO_HOLD_OUT = LEAVE_ONE_OUT_HELD_OUT + 1
#: Target value for users too short to hold anything out (0-based item indices).
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


def held_out_position(interactions: Interactions, count: int = LEAVE_ONE_OUT_HELD_OUT) -> np.ndarray:
    """Per row: its position from its user's end (0 = latest) where :func:`hold_out_last`
    holds it out, -1 where it stays in train: (n,) int64."""
    from_end, user_counts = position_from_end(interactions)
    held = (user_counts > count) & (from_end < count)
    return np.where(held, from_end, -1)


def leave_one_out(interactions: Interactions) -> Split:
    """Per user: latest interaction -> test, second latest -> validation, the rest -> train.

    Users with fewer than 3 interactions put all of them in train (see the module docstring),
    so ``len(test) == len(validation) ==`` the number of users with at least 3 interactions.
    """
    if len(interactions) == 0:
        return Split(interactions, interactions, interactions)
    position = held_out_position(interactions)
    return Split(interactions.take(position == -1), interactions.take(position == 1), interactions.take(position == 0))


def hold_out_last(sequences: Sequence[np.ndarray], count: int = LEAVE_ONE_OUT_HELD_OUT, *,
                  max_users: int | None = None, seed: int = 0, missing: int = NO_TARGET
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Hold out each user's last ``count`` items: -> (train sequences, held out (U, count) int64).

    ``sequences[u]`` are user u's items, oldest first (0- or 1-based: the split does not
    care). A user is held out from when it has more than ``count`` items, so at least one is
    left to train on; with ``max_users``, only a fixed random sample (``seed``) of those users
    is, and the others keep their whole sequence. ``held_out[u]`` lists the held-out items in
    time order (``held_out[u, -1]`` is the last one), ``missing`` where nothing was held out.
    """
    eligible = np.array([u for u, sequence in enumerate(sequences) if len(sequence) > count], dtype=np.int64)
    if max_users is not None and len(eligible) > max_users:
        eligible = np.sort(np.random.default_rng(seed).choice(eligible, size=max_users, replace=False))
    chosen = np.zeros(len(sequences), dtype=bool)
    chosen[eligible] = True
    held_out = np.full((len(sequences), count), missing, dtype=np.int64)
    train: list[np.ndarray] = []
    for user, sequence in enumerate(sequences):
        if chosen[user]:
            train.append(sequence[:-count])
            held_out[user] = sequence[-count:]
        else:
            train.append(sequence)
    return train, held_out


def leave_one_out_sequences(sequences: Sequence[np.ndarray], missing: int = NO_TARGET
                            ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Leave-one-out on encoded, time-ordered sequences (from ``user_sequences``).

    Returns ``(train_sequences, validation_targets, test_targets)``: for a user with at least
    3 items, the train sequence drops the last two, validation target = second to last item,
    test target = last item. Shorter users keep their full sequence and get ``missing``
    targets (-1, the "skip" of :func:`rayrec.evaluation.protocol.evaluate_ranking`).
    Targets are (num_users,) int64.
    """
    train, held_out = hold_out_last(sequences, LEAVE_ONE_OUT_HELD_OUT, missing=missing)
    return train, held_out[:, 0].copy(), held_out[:, 1].copy()


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
