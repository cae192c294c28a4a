"""Training losses for next-item prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax_loss(outputs: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy over the whole catalogue.

    outputs: (M, D) user vectors at the supervised positions; item_table: (N + 1, D) with the
    padding row 0; targets: (M,) int64 in 1..N. Padding can never be predicted.
    """
    # Leaving the padding row out of the product (rather than masking its column) spares a
    # write over the whole (M, N) logits, which autograd would also have to keep.
    logits = outputs @ item_table[1:].T
    if temperature != 1.0:
        logits = logits / temperature
    return F.cross_entropy(logits, targets - 1)


def sampled_softmax_loss(outputs: torch.Tensor, item_tower, targets: torch.Tensor, log_q: torch.Tensor,
                         num_uniform_negatives: int = 1000, temperature: float = 1.0) -> torch.Tensor:
    """Sampled softmax with in-batch and uniform negatives and logQ correction.

    outputs: (M, D); targets: (M,) in 1..N; log_q: (N + 1,) log sampling probability of each item
    as an in-batch negative (its popularity share). In-batch negatives over-represent popular
    items, so their logits are corrected by subtracting log Q (Yi et al., 2019); uniform negatives
    have a constant Q and need no correction. A candidate equal to the row's own target is masked.
    """
    num_items = log_q.shape[0] - 1
    uniform = torch.randint(1, num_items + 1, (num_uniform_negatives,), device=outputs.device)
    candidates = torch.cat([targets, uniform])  # (M + U,)
    candidate_vectors = item_tower(candidates)  # (M + U, D)
    logits = outputs @ candidate_vectors.T / temperature  # (M, M + U)
    correction = torch.cat([log_q[targets], torch.full_like(uniform, 0, dtype=log_q.dtype)
                            + torch.log(torch.tensor(1.0 / num_items, device=outputs.device))])
    logits = logits - correction
    # The positive is column i for row i; other columns holding the same item are false negatives.
    same_item = targets[:, None] == candidates[None, :]
    diagonal = torch.zeros_like(same_item)
    diagonal[:, : len(targets)] = torch.eye(len(targets), dtype=torch.bool, device=outputs.device)
    logits = logits.masked_fill(same_item & ~diagonal, float("-inf"))
    labels = torch.arange(len(targets), device=outputs.device)
    return F.cross_entropy(logits, labels)
