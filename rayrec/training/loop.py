"""The per-epoch training and validation steps, shared by the Ray Train workers and
in-process training. Nothing here knows about Ray."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from rayrec.evaluation.metrics import hit_rate_at_k, mask_history, ndcg_at_k, target_ranks
from rayrec.models.losses import full_softmax_loss, sampled_softmax_loss
from rayrec.models.two_tower import TwoTowerModel
from rayrec.training.batches import left_pad, length_bucketed_batches, next_item_batch


@dataclass
class StepProgress:
    epoch: int
    step: int
    steps_in_epoch: int
    loss: float
    samples_per_second: float


def train_one_epoch(
    model: TwoTowerModel,
    optimizer: torch.optim.Optimizer,
    sequences: list[np.ndarray],
    users: np.ndarray,
    *,
    batch_size: int,
    max_len: int,
    loss_kind: str,
    log_q: torch.Tensor | None,
    num_uniform_negatives: int,
    temperature: float,
    rng: np.random.Generator,
    crop_probability: float = 0.0,
    epoch: int = 0,
    on_step: Callable[[StepProgress], None] | None = None,
    num_steps: int | None = None,
    after_backward: Callable[[], None] | None = None,
    device: torch.device | str = "cpu",
    user_features: np.ndarray | None = None,
) -> tuple[float, int]:
    """One pass over ``users`` (this worker's shard) in shuffled batches.

    ``sequences[u]`` are 1-based item indices. Every position predicts the next item.
    Batches group users of similar history length (:func:`length_bucketed_batches`).
    ``num_steps`` pads the pass with repeated batches so all data-parallel workers take the
    same number of steps (gradient all-reduce needs every worker in every step).
    ``after_backward`` runs between backward and the optimizer step (gradient all-reduce).
    Returns (mean loss, supervised positions seen).
    """
    model.train()
    lengths = np.fromiter((min(len(s), max_len + 1) for s in sequences), dtype=np.int64, count=len(sequences))
    batches = length_bucketed_batches(np.asarray(users), lengths, batch_size, rng) or [np.asarray(users)]
    if num_steps is not None:
        while len(batches) < num_steps:
            batches.append(batches[len(batches) % max(1, len(batches))])
        batches = batches[:num_steps]
    total_loss, total_positions = 0.0, 0
    started = time.perf_counter()
    for step, batch_users in enumerate(batches):
        inputs, labels = next_item_batch([sequences[u] for u in batch_users], max_len, rng, crop_probability)
        inputs_t = torch.from_numpy(inputs).to(device)
        labels_t = torch.from_numpy(labels).to(device)
        features_t = None if user_features is None else torch.from_numpy(user_features[batch_users]).to(device)
        outputs = model.sequence_outputs(inputs_t, features_t)  # (B, L, D)
        supervised = labels_t > 0
        flat_outputs = outputs[supervised]
        flat_labels = labels_t[supervised]
        if loss_kind == "full":
            loss = full_softmax_loss(flat_outputs, model.item_table(), flat_labels, temperature)
        else:
            loss = sampled_softmax_loss(flat_outputs, model.item_tower, flat_labels, log_q,
                                        num_uniform_negatives, temperature)
        # Extra softmaxes over other views of the items (e.g. some represented by content alone).
        for view, weight in model.auxiliary_item_views():
            if loss_kind == "full":
                table = view(torch.arange(model.item_tower.num_items + 1, device=device))  # with padding row 0
                loss = loss + weight * full_softmax_loss(flat_outputs, table, flat_labels, temperature)
            else:
                loss = loss + weight * sampled_softmax_loss(flat_outputs, view, flat_labels, log_q,
                                                            num_uniform_negatives, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        positions = int(supervised.sum())
        loss_value = loss.item()
        total_loss += loss_value * positions
        total_positions += positions
        if on_step is not None:
            elapsed = time.perf_counter() - started
            on_step(StepProgress(epoch, step + 1, len(batches), loss_value,
                                 total_positions / elapsed if elapsed > 0 else 0.0))
    return total_loss / max(1, total_positions), total_positions


@torch.no_grad()
def score_histories(model: TwoTowerModel, histories: list[np.ndarray], max_len: int,
                    item_table: torch.Tensor | None = None, device: torch.device | str = "cpu",
                    user_features: np.ndarray | None = None) -> np.ndarray:
    """Scores of every item for each history: -> (B, N) float32 (vocabulary order, no padding).

    ``histories`` hold 1-based item indices, oldest first; ``user_features``: (B, F) codes or None.
    """
    model.eval()
    table = model.item_table() if item_table is None else item_table
    sequences = torch.from_numpy(left_pad(histories, max_len)).to(device)
    features = None if user_features is None else torch.from_numpy(user_features).to(device)
    users = model.user_vectors(sequences, features)
    return (users @ table[1:].T).cpu().numpy()


@torch.no_grad()
def next_item_metrics(model: TwoTowerModel, histories: list[np.ndarray], targets: np.ndarray,
                      max_len: int, k: int = 10, batch_size: int = 256,
                      device: torch.device | str = "cpu", user_features: np.ndarray | None = None) -> dict[str, float]:
    """Sums of NDCG@k and HR@k over users with a target (>= 1, 1-based), history masked,
    with :mod:`rayrec.evaluation.metrics`' rank and tie rule (the one ``rayrec evaluate`` uses).

    Returns sums and the count (not means) so data-parallel workers can add them up.
    """
    model.eval()
    table = model.item_table()
    ndcg_sum, hit_sum, count = 0.0, 0.0, 0
    valid = np.flatnonzero(targets > 0)
    for start in range(0, len(valid), batch_size):
        rows = valid[start: start + batch_size]
        batch_histories = [histories[r] for r in rows]
        features = None if user_features is None else user_features[rows]
        scores = score_histories(model, batch_histories, max_len, table, device, features)
        mask_history(scores, [history - 1 for history in batch_histories])
        ranks = target_ranks(scores, targets[rows] - 1)
        hit_sum += float(hit_rate_at_k(ranks, k).sum())
        ndcg_sum += float(ndcg_at_k(ranks, k).sum())
        count += len(rows)
    return {"ndcg_sum": ndcg_sum, "hit_sum": hit_sum, "count": count}
