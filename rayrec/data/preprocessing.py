"""Cleaning interactions and encoding them for models: duplicates, thresholds, k-core,
vocabularies, per-user sequences and the user-item matrix (dense for a batch of users, sparse
for all of them). All vectorised, so millions of rows take seconds."""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import numpy as np

from rayrec.errors import DataError
from rayrec.schema import Dataset, Interactions, Vocabulary


def factorize(values: np.ndarray) -> tuple[np.ndarray, list]:
    """Codes in first-appearance order: ``values`` (n,) -> (codes (n,) int64, uniques).

    ``uniques[codes[i]] == values[i]``; ``uniques`` is ordered by first appearance.
    """
    first_seen = dict.fromkeys(values.tolist())  # C-speed and insertion-ordered
    index = {value: position for position, value in enumerate(first_seen)}
    codes = np.fromiter(map(index.__getitem__, values.tolist()), dtype=np.int64, count=len(values))
    return codes, list(first_seen)


def duplicate_mask(interactions: Interactions) -> np.ndarray:
    """(n,) bool: True for rows equal in every column to an earlier row (the first is kept)."""
    n = len(interactions)
    if n == 0:
        return np.zeros(0, dtype=bool)
    keys = [factorize(interactions.user_id)[0], factorize(interactions.item_id)[0], interactions.timestamp]
    if interactions.event_type is not None:
        keys.append(factorize(interactions.event_type)[0])
    if interactions.value is not None:
        # Compare the bit patterns so NaN equals NaN (two empty values are duplicates).
        keys.append(interactions.value.astype(np.float32).view(np.int32).astype(np.int64))
    # lexsort is stable, so within each group of equal rows the earliest row comes first.
    order = np.lexsort(keys[::-1])
    stacked = np.stack([key[order] for key in keys])
    same_as_previous = np.all(stacked[:, 1:] == stacked[:, :-1], axis=0)
    duplicates = np.zeros(n, dtype=bool)
    duplicates[order[1:][same_as_previous]] = True
    return duplicates


def kcore_mask(interactions: Interactions, k: int) -> np.ndarray:
    """(n,) bool: rows kept by the iterative k-core filter.

    Repeatedly drops users and items with fewer than ``k`` interactions (rows, not distinct
    partners) until every remaining user and item has at least ``k``.
    """
    users, _ = factorize(interactions.user_id)
    items, _ = factorize(interactions.item_id)
    keep = np.ones(len(interactions), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new_keep = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def preprocess(
    dataset: Dataset,
    *,
    drop_duplicates: bool = True,
    rating_threshold: float | None = None,
    kcore: int | None = None,
) -> Dataset:
    """A cleaned copy of ``dataset``; what was dropped is added to its ``report``.

    Steps, in order: drop exact duplicate rows (all columns equal; the first is kept); keep
    rows with ``value >= rating_threshold``; iterative ``kcore`` on users and items. Rows keep
    their file order. Items and users metadata are kept whole (unused entries are harmless).
    """
    interactions = dataset.interactions
    report = copy.deepcopy(dataset.report)
    if drop_duplicates:
        duplicates = duplicate_mask(interactions)
        report.duplicates_dropped += int(duplicates.sum())
        interactions = interactions.take(~duplicates)
    if rating_threshold is not None:
        if interactions.value is None:
            raise DataError(
                f"rating_threshold={rating_threshold} needs a value column, but dataset "
                f"{dataset.name!r} has none; remove the threshold or add a 'value' column"
            )
        # NaN (missing) values compare False, so they are dropped too.
        above = interactions.value >= rating_threshold
        report.below_threshold_dropped += int((~above).sum())
        interactions = interactions.take(above)
    if kcore is not None and kcore > 1:
        kept = kcore_mask(interactions, kcore)
        report.kcore_dropped += int((~kept).sum())
        interactions = interactions.take(kept)
    return dataclasses.replace(dataset, interactions=interactions, report=report)


def build_vocabularies(interactions: Interactions) -> tuple[Vocabulary, Vocabulary]:
    """(user vocabulary, item vocabulary), each in first-appearance order in the file."""
    return (
        Vocabulary(dict.fromkeys(interactions.user_id.tolist())),
        Vocabulary(dict.fromkeys(interactions.item_id.tolist())),
    )


def time_order(user_codes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Row order grouping rows by user, each user's rows by time; ties keep file order.

    Two stable sorts (time, then user) rather than one lexsort, because stability is what
    makes same-second events keep their file order, and argsort(kind="stable") guarantees it.
    """
    by_time = np.argsort(timestamps, kind="stable")
    return by_time[np.argsort(user_codes[by_time], kind="stable")]


def user_sequences(interactions: Interactions, user_vocab: Vocabulary, item_vocab: Vocabulary) -> list[np.ndarray]:
    """Per user, the item indices in time order: ``sequences[u]`` is an (n_u,) int64 array.

    ``len(sequences) == len(user_vocab)``; users without interactions get an empty array.
    Sorting is by timestamp, stable, so ties keep file order. Rows whose user or item is not
    in the vocabularies are left out (e.g. encoding test data with the training vocabulary).
    """
    users = user_vocab.encode(interactions.user_id.tolist(), unknown="mark")
    items = item_vocab.encode(interactions.item_id.tolist(), unknown="mark")
    known = (users >= 0) & (items >= 0)
    users, items, timestamps = users[known], items[known], interactions.timestamp[known]
    if len(user_vocab) == 0:
        return []
    order = time_order(users, timestamps)
    counts = np.bincount(users, minlength=len(user_vocab))
    return np.split(items[order], np.cumsum(counts)[:-1])


def interaction_matrix(seqs: Sequence[np.ndarray], num_items: int, dtype=np.float32) -> np.ndarray:
    """Binary user-item matrix: U index arrays -> (U, num_items), 1 where the user saw the item."""
    matrix = np.zeros((len(seqs), num_items), dtype=dtype)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if lengths.sum():
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
        if items.min() < 0 or items.max() >= num_items:
            raise ValueError(f"item indices must lie in [0, {num_items}); found {items.min()}..{items.max()}")
        matrix[np.repeat(np.arange(len(seqs)), lengths), items] = 1
    return matrix


def sparse_interaction_matrix(seqs: Sequence[np.ndarray], num_items: int, dtype=np.float32):
    """Binary user-item matrix as a ``scipy.sparse.csr_array``: U index arrays -> (U, num_items),
    1 where the user saw the item (repeats count once).

    Memory grows with the interactions, not with users x items: 100,000 users x 50,000 items
    as a dense float64 array would be 40 GB, however few events they have.
    """
    import scipy.sparse as sparse

    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    items = np.concatenate([np.zeros(0, np.int64), *(np.asarray(s, dtype=np.int64) for s in seqs)])
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"item indices must lie in [0, {num_items}); found {items.min()}..{items.max()}")
    rows = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    matrix = sparse.csr_array((np.ones(items.size, dtype=dtype), (rows, items)), shape=(len(seqs), num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1  # binary: a repeated item is still one cell
    return matrix
