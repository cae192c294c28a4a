"""A compact SASRec trained with full-softmax cross-entropy: the reference rayrec is held to.

    python benchmarks/sasrec_reference.py [--dataset ml-100k] [--max-epochs N] [--grid]

run alone, it trains on one dataset with the leave-one-out protocol of
``../shared/datasets/README.md`` and prints validation and test NDCG@10 / HR@10, train time
and positions per second; ``benchmarks/quality.py`` runs it next to rayrec and the baselines.

The recipe is fixed on purpose, so a comparison measures rayrec, not this file: 2 causal
self-attention blocks, 1 head, hidden 128, dropout 0.5, Adam (lr 1e-3, betas 0.9/0.98),
batches of 128 users bucketed by length (users sorted by length into batches, the batches
shuffled every epoch), every position predicts the next item with a cross-entropy over all
items, the last 200 items of a history, early stopping on validation NDCG@10 with a patience
of 20 epochs, torch using every core. ``fit_tuned`` optionally tries a small grid of hidden
sizes and dropouts and keeps the best on validation.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PADDING = 0  # item index 0 pads sequences; item i of the dataset is index i + 1 here


@dataclass(frozen=True)
class SASRecConfig:
    """The recipe; the defaults are the reference's."""

    hidden: int = 128
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.5
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    batch_size: int = 128
    max_len: int = 200
    patience: int = 20
    max_epochs: int = 1000
    seed: int = 0
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count() or 1)
    #: logits computed at once, bounding the memory of the full softmax to about 4 bytes each
    logits_budget: int = 1 << 25


#: hidden sizes x dropouts tried by ``fit_tuned(grid=True)``
GRID_HIDDEN = (64, 128, 256)
GRID_DROPOUT = (0.2, 0.5)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where each position sees itself and earlier non-padding positions."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """queries, keys: (B, L, D); allowed: (B, 1, L, L) bool -> (B, L, D)."""
        batch, length, hidden = queries.shape
        per_head = hidden // self.heads
        q = self.query(queries).view(batch, length, self.heads, per_head).transpose(1, 2)
        k, v = self.key_value(keys).view(batch, length, 2, self.heads, per_head).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                  dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).reshape(batch, length, hidden))


class Block(nn.Module):
    """SASRec's block: normalised queries attend, residual on them; then a position-wise FFN."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = CausalSelfAttention(hidden, heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, hidden), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D), allowed: (B, 1, L, L), keep: (B, L, 1) float -> (B, L, D)."""
        queries = self.attention_norm(x)
        x = queries + self.attention(queries, x, allowed)
        x = self.feed_forward_norm(x)
        return (x + self.feed_forward(x)) * keep


class SASRec(nn.Module):
    """Item sequences -> one hidden state per position; scores are dot products with the
    (shared) item embeddings."""

    def __init__(self, num_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.scale = math.sqrt(config.hidden)
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden, padding_idx=PADDING)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config.hidden, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(config.hidden)
        # Xavier-normal weights keep the first logits small: with torch's N(0, 1) embeddings,
        # scaled by sqrt(hidden), the first cross-entropies are around 40 instead of log(N).
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_normal_(parameter)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    def item_table(self) -> torch.Tensor:
        """(num_items, D) output embeddings of the real items (the padding row left out)."""
        return self.item_embedding.weight[1:]

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences: (B, L) int64, left-padded with 0, L <= max_len -> (B, L, D)."""
        batch, length = sequences.shape
        # Positions count back from the newest item, so a batch padded to L < max_len places
        # every item exactly where a batch padded to max_len would.
        positions = torch.arange(self.max_len - length, self.max_len, device=sequences.device)
        x = self.item_embedding(sequences) * self.scale + self.position_embedding(positions)[None]
        padding = sequences == PADDING
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        x = self.embedding_dropout(x) * keep
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        # A padding position attends to itself only, so no row of the mask is empty (NaN).
        allowed = causal[None] & (~padding[:, None, :] | torch.eye(length, dtype=torch.bool, device=sequences.device))
        allowed = allowed[:, None]
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x)

    @torch.no_grad()
    def score_histories(self, histories: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """B histories of 0-based item indices -> (B, num_items) float32 scores of the next item."""
        self.eval()
        table = self.item_table()
        rows = []
        for start in range(0, len(histories), batch_size):
            inputs = left_padded([np.asarray(h)[-self.max_len:] + 1 for h in histories[start:start + batch_size]])
            rows.append((self(inputs)[:, -1] @ table.T).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, table.shape[0]), dtype=np.float32)


def left_padded(sequences: Sequence[np.ndarray]) -> torch.Tensor:
    """Sequences of 1-based indices -> (B, longest) int64, padded with 0 on the left."""
    longest = max((len(s) for s in sequences), default=0)
    out = np.zeros((len(sequences), max(longest, 1)), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        if len(sequence):
            out[row, -len(sequence):] = sequence
    return torch.from_numpy(out)


def length_bucketed_batches(train: Sequence[np.ndarray], config: SASRecConfig
                            ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """(inputs, targets) batches, both (B, L) int64 with 0 = no target, and the number of
    supervised positions. Users with at least two items, sorted by length (stable) and cut
    into batches of ``batch_size``, so a batch pads little; each keeps its last max_len + 1."""
    windows = [np.asarray(s[-(config.max_len + 1):], dtype=np.int64) + 1 for s in train if len(s) >= 2]
    order = sorted(range(len(windows)), key=lambda user: len(windows[user]))
    batches = []
    for start in range(0, len(order), config.batch_size):
        chosen = [windows[user] for user in order[start:start + config.batch_size]]
        batches.append((left_padded([w[:-1] for w in chosen]), left_padded([w[1:] for w in chosen])))
    return batches, int(sum(len(w) - 1 for w in windows))


def full_softmax_backward(model: SASRec, hidden: torch.Tensor, targets: torch.Tensor, budget: int) -> float:
    """Mean cross-entropy over all items at the ``hidden`` (P, D) positions, back-propagated.

    The (P, num_items) logits are built a chunk of positions at a time: each chunk's loss is
    back-propagated into a detached copy of ``hidden`` (and the output embeddings) before the
    next chunk is built, then the gathered gradient flows once through the transformer. The
    gradient is the same as from one big softmax; the memory is a chunk's.
    """
    num_positions = hidden.shape[0]
    num_items = model.item_embedding.num_embeddings - 1
    chunk = max(1, budget // num_items)
    detached = hidden.detach().requires_grad_()
    total = 0.0
    for start in range(0, num_positions, chunk):
        logits = detached[start:start + chunk] @ model.item_table().T
        loss = F.cross_entropy(logits, targets[start:start + chunk], reduction="sum") / num_positions
        loss.backward()
        total += loss.item()
    hidden.backward(detached.grad)
    return total


@dataclass
class FitResult:
    model: SASRec
    config: SASRecConfig
    best_epoch: int
    best_val_ndcg: float
    epochs: int
    train_seconds: float  # wall time of the whole fit, validation included
    positions_per_second: float  # supervised positions / seconds spent in training steps
    history: list[dict] = field(default_factory=list)


#: (model) -> validation NDCG@10, e.g. ``LeaveOneOut.evaluate(model.score_histories, "validation")``
Validator = Callable[[SASRec], float]


def fit(train: Sequence[np.ndarray], num_items: int, validate: Validator, config: SASRecConfig = SASRecConfig(),
        log: Callable[[str], None] = print) -> FitResult:
    """Train on ``train`` (0-based item sequences, time order) with early stopping on ``validate``;
    the returned model holds the weights of the best validated epoch."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SASRec(num_items, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=config.betas)
    batches, positions_per_epoch = length_bucketed_batches(train, config)
    if not batches:
        raise ValueError("no user has two training items: nothing to learn the next item from")
    started = time.perf_counter()
    step_seconds = 0.0
    best = (-1.0, 0, None)  # (NDCG@10, epoch, weights)
    history: list[dict] = []
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        loss_sum = 0.0
        for index in rng.permutation(len(batches)).tolist():
            inputs, targets = batches[index]
            optimizer.zero_grad(set_to_none=True)
            hidden = model(inputs)
            supervised = targets != PADDING
            loss = full_softmax_backward(model, hidden[supervised], targets[supervised] - 1, config.logits_budget)
            optimizer.step()
            loss_sum += loss * int(supervised.sum())
        epoch_seconds = time.perf_counter() - epoch_started
        step_seconds += epoch_seconds
        ndcg = validate(model)
        history.append({"epoch": epoch, "loss": loss_sum / positions_per_epoch, "val_ndcg@10": ndcg,
                        "positions_per_second": positions_per_epoch / epoch_seconds})
        if ndcg > best[0]:
            best = (ndcg, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        log(f"  sasrec epoch {epoch} loss {loss_sum / positions_per_epoch:.4f} val NDCG@10 {ndcg:.4f} "
            f"(best {best[0]:.4f} @ {best[1]}) {positions_per_epoch / epoch_seconds:,.0f} positions/s")
        if epoch - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    return FitResult(model=model, config=config, best_epoch=best[1], best_val_ndcg=best[0], epochs=epoch,
                     train_seconds=time.perf_counter() - started,
                     positions_per_second=positions_per_epoch * epoch / max(step_seconds, 1e-9), history=history)


def fit_tuned(train: Sequence[np.ndarray], num_items: int, validate: Validator, config: SASRecConfig = SASRecConfig(),
              grid: bool = False, log: Callable[[str], None] = print) -> tuple[FitResult, dict[str, float]]:
    """The fixed recipe, or with ``grid`` the best on validation over ``GRID_HIDDEN`` x
    ``GRID_DROPOUT``. Returns the chosen fit and {"hidden=H dropout=P": validation NDCG@10}.
    Train seconds of a grid are summed over its runs; positions/s is the chosen run's."""
    candidates = [config] if not grid else [replace(config, hidden=h, dropout=p) for h in GRID_HIDDEN for p in GRID_DROPOUT]
    chosen: FitResult | None = None
    table: dict[str, float] = {}
    seconds = 0.0
    for candidate in candidates:
        label = f"hidden={candidate.hidden} dropout={candidate.dropout:g}"
        if grid:
            log(f"  sasrec grid: {label}")
        result = fit(train, num_items, validate, candidate, log=log)
        seconds += result.train_seconds
        table[label] = result.best_val_ndcg
        if chosen is None or result.best_val_ndcg > chosen.best_val_ndcg:
            chosen = result
    assert chosen is not None
    chosen.train_seconds = seconds
    return chosen, table


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _leave_one_out import load_leave_one_out

    datasets = Path(os.environ.get("RAYREC_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help="A folder under ../shared/datasets, or a path.")
    parser.add_argument("--max-epochs", type=int, default=SASRecConfig.max_epochs)
    parser.add_argument("--grid", action="store_true", help="Choose hidden size and dropout on validation.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core).")
    args = parser.parse_args()
    path = Path(args.dataset) if Path(args.dataset).exists() else datasets / args.dataset
    if not path.exists():
        sys.exit(f"{args.dataset}: {path} not found")
    data = load_leave_one_out(args.dataset, path)
    config = replace(SASRecConfig(), max_epochs=args.max_epochs, **({"threads": args.threads} if args.threads else {}))
    print(f"{args.dataset}: {len(data.user_vocab):,} users, {data.num_items:,} items, torch threads {config.threads}")
    result, table = fit_tuned(data.train, data.num_items,
                              lambda model: data.evaluate(model.score_histories, "validation")["NDCG@10"],
                              config, grid=args.grid)
    test = data.evaluate(result.model.score_histories, "test")
    for label, ndcg in table.items():
        print(f"  {label}: val NDCG@10 {ndcg:.4f}")
    print(f"val NDCG@10 {result.best_val_ndcg:.4f} (epoch {result.best_epoch} of {result.epochs}); "
          f"test NDCG@10 {test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f}; "
          f"{result.train_seconds:.0f} s, {result.positions_per_second:,.0f} positions/s")


if __name__ == "__main__":
    main()
