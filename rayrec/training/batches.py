"""Turning per-user item sequences into padded next-item training batches."""

from __future__ import annotations

import numpy as np

from rayrec.models.padding import left_pad


def next_item_batch(sequences: list[np.ndarray], max_len: int, rng: np.random.Generator | None = None,
                    crop_probability: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item labels for every position: -> ((B, L), (B, L)), 0 = no label.

    With ``crop_probability`` a long sequence is, that often, cut at a random earlier point,
    so the model also learns from histories older than the last ``max_len`` items.
    """
    inputs, labels = [], []
    for sequence in sequences:
        end = len(sequence)
        if rng is not None and crop_probability and end > max_len + 1 and rng.random() < crop_probability:
            end = int(rng.integers(max_len + 1, end + 1))
        window = sequence[max(0, end - max_len - 1): end]
        inputs.append(window[:-1])
        labels.append(window[1:])
    length = max(1, min(max_len, max(len(s) for s in inputs)))
    return left_pad(inputs, length), left_pad(labels, length)


#: Batches sorted together by length: enough to keep similar lengths side by side, few enough
#: that which users share a batch still changes from epoch to epoch.
BUCKET_BATCHES = 32


def length_bucketed_batches(users: np.ndarray, lengths: np.ndarray, batch_size: int,
                            rng: np.random.Generator) -> list[np.ndarray]:
    """``users`` split into batches of similar sequence length, in random order.

    A batch is padded to its longest sequence, so mixing a 5-item history with a 200-item one
    wastes most of the attention and softmax work on padding. Users are shuffled, sorted by
    length within groups of ``BUCKET_BATCHES`` batches, cut into batches, and the batches
    shuffled. ``lengths[u]`` is user u's (capped) sequence length.
    """
    order = rng.permutation(users)
    group = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start: start + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


#: Unset ``batch_size``: a batch holds about this many supervised positions on average. Every
#: position is a training example, so users with long histories make big batches: at 128 users,
#: MovieLens' ~90 positions per user gave 5 to 8 optimizer steps an epoch, and a model needed
#: 85 epochs to peak. At ~3,000 positions (32 users there) it reached the same validation
#: NDCG@10 in about a third of the epochs (``benchmarks/quality.py``).
AUTO_BATCH_POSITIONS = 3000
#: Users per batch under the automatic size: short histories (a few items each) still batch
#: 128 users, as before, rather than thousands that would leave an epoch a handful of steps.
AUTO_BATCH_USERS = range(8, 129)


def auto_batch_size(mean_positions: float) -> int:
    """Users per batch for a mean of ``mean_positions`` supervised positions per user."""
    wanted = round(AUTO_BATCH_POSITIONS / max(1.0, mean_positions))
    return int(min(max(wanted, AUTO_BATCH_USERS.start), AUTO_BATCH_USERS.stop - 1))
