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


#: In-batch negatives per batch at most: a batch of long histories has tens of thousands of
#: positions, and every position against every other is quadratic (25,600 positions made a
#: 2.7 GB logit matrix per step). Batches with fewer positions use them all.
MAX_IN_BATCH_NEGATIVES = 4096


def sampled_softmax_loss(outputs: torch.Tensor, item_tower, targets: torch.Tensor, log_q: torch.Tensor,
                         num_uniform_negatives: int = 1000, temperature: float = 1.0,
                         max_in_batch_negatives: int = MAX_IN_BATCH_NEGATIVES) -> torch.Tensor:
    """Sampled softmax with in-batch and uniform negatives and logQ correction.

    outputs: (M, D); targets: (M,) in 1..N; log_q: (N + 1,) log sampling probability of each item
    as an in-batch negative (its popularity share). In-batch negatives (the batch's targets, a
    random ``max_in_batch_negatives`` of them when there are more) over-represent popular
    items, so their logits are corrected by subtracting log Q (Yi et al., 2019); uniform negatives
    have a constant Q and need no correction. A negative equal to the row's own target is masked.
    """
    num_items = log_q.shape[0] - 1
    in_batch = targets
    if len(targets) > max_in_batch_negatives:
        in_batch = targets[torch.randperm(len(targets), device=targets.device)[:max_in_batch_negatives]]
    uniform = torch.randint(1, num_items + 1, (num_uniform_negatives,), device=outputs.device)
    negatives = torch.cat([in_batch, uniform])  # (K + U,)
    positive = (outputs * item_tower(targets)).sum(dim=-1) / temperature - log_q[targets]  # (M,)
    logits = outputs @ item_tower(negatives).T / temperature  # (M, K + U)
    correction = torch.cat([log_q[in_batch], torch.full_like(uniform, 0, dtype=log_q.dtype)
                            + torch.log(torch.tensor(1.0 / num_items, device=outputs.device))])
    logits = (logits - correction).masked_fill(targets[:, None] == negatives[None, :], float("-inf"))
    # The positive is column 0 of every row.
    logits = torch.cat([positive[:, None], logits], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=outputs.device))
