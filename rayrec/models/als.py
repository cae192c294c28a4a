"""Implicit-feedback ALS: weighted matrix factorisation with exact alternating solves.

The model of Hu, Koren and Volinsky (2008), "Collaborative Filtering for Implicit Feedback
Datasets". User u consumed item i ``n_ui`` times; the preference is ``p_ui = 1`` if
``n_ui > 0`` else 0, held with confidence ``c_ui = 1 + alpha * n_ui``. User factors
``X: (U, D)`` and item factors ``Y: (N, D)`` minimise

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + lambda (|X|^2 + |Y|^2)

over every (u, i) pair, seen or not. With Y fixed each user's vector is one ridge regression,

    x_u = (Y^T C_u Y + lambda I)^-1 Y^T C_u p_u,

and the paper's trick keeps that cheap: ``Y^T C_u Y = Y^T Y + Y^T (C_u - I) Y`` where
``C_u - I`` is non-zero only on the user's own items. ``Y^T Y`` is shared by every user; the
rest is a sum of ``alpha * n_ui * y_i y_i^T`` over the user's items, computed here as a
segment sum (rows sorted by length, padded in chunks, one batched matrix product per chunk)
and never as a dense U x N matrix. The item half-step is the same with the roles swapped.

The order of a user's items plays no part: only which items and how often. :func:`fold_in`
is the user half-step for any history, so a model serves a user from the current history
without retraining: a new event changes the next answer exactly as if it had been in the
training data (with the item factors kept fixed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rayrec.models.arrays import shared_tensor
from rayrec.models.attribution import position_shares
from rayrec.models.threads import compute_threads

#: Entries (rows x padded length) gathered per chunk: bounds memory at CHUNK_ENTRIES * D floats.
CHUNK_ENTRIES = 1 << 17
#: Rows per chunk: bounds the (rows, D, D) normal-equation matrices.
CHUNK_ROWS = 2048
#: Users scored at once when finding their top items (bounds SCORE_ROWS x N scores).
SCORE_ROWS = 256


class ALSParams(BaseModel):
    """Hyperparameters of implicit-feedback ALS; the defaults suit a small catalogue."""

    model_config = ConfigDict(extra="forbid")

    factors: int = Field(64, ge=1, le=1024, description="Dimension D of the user and item vectors.")
    regularization: float = Field(
        1.0, gt=0, description="L2 penalty lambda on every user and item vector (larger = smoother, more popular)."
    )
    alpha: float = Field(
        1.0, ge=0, description="Confidence slope: a consumed item weighs 1 + alpha * count, an unseen one 1."
    )
    iterations: int = Field(15, ge=1, le=1000, description="Alternating passes (one user and one item solve each).")


@dataclass
class ALSFactors:
    """Fitted factors: ``user_factors: (U, D)``, ``item_factors: (N, D)``, float32."""

    user_factors: np.ndarray
    item_factors: np.ndarray


@dataclass
class _Rows:
    """A sparse matrix by rows (CSR): row r holds ``indices[indptr[r]:indptr[r+1]]`` with
    ``counts`` at the same positions; indices ascending and unique within a row."""

    indptr: np.ndarray  # (R + 1,) int64
    indices: np.ndarray  # (nnz,) int64
    counts: np.ndarray  # (nnz,) float32

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    def transpose(self, num_columns: int) -> "_Rows":
        rows = np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.indptr))
        order = np.argsort(self.indices, kind="stable")  # keeps rows ascending within a column
        indptr = np.zeros(num_columns + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.indices, minlength=num_columns), out=indptr[1:])
        return _Rows(indptr, rows[order], self.counts[order])


def _rows_from_sequences(sequences: Sequence[Sequence[int]], num_items: int) -> _Rows:
    """Per sequence its distinct items (ascending) and how often each occurs."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = (np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences])
            if lengths.sum() else np.zeros(0, np.int64))
    if flat.size and (flat.min() < 0 or flat.max() >= num_items):
        bad = flat[(flat < 0) | (flat >= num_items)][0]
        raise ValueError(f"item index {bad} is outside the {num_items} items (indices are 0-based)")
    owner = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    keys, counts = np.unique(owner * num_items + flat, return_counts=True)
    indptr = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // num_items, minlength=len(sequences)), out=indptr[1:])
    return _Rows(indptr, keys % num_items, counts.astype(np.float32))


@dataclass
class _Chunk:
    """The normal equations of a chunk of b rows, padded to their longest length L.

    ``rows: (b,)`` row ids; ``columns: (b, L)`` the fixed side's indices (padding repeats a
    row's first entry); ``confidence: (b, L)`` c = 1 + alpha * count (0 on padding);
    ``lhs: (b, D, D)`` Y^T C Y + lambda I; ``rhs: (b, D)`` Y^T C p.
    """

    rows: np.ndarray
    columns: torch.Tensor
    confidence: torch.Tensor
    lhs: torch.Tensor
    rhs: torch.Tensor


def _normal_equations(fixed: torch.Tensor, rows: _Rows, params: ALSParams,
                      gram: torch.Tensor | None = None) -> Iterator[_Chunk]:
    """The least-squares systems of every non-empty row, chunk by chunk.

    ``fixed: (M, D)`` the factors held fixed (items for a user step); ``gram: (D, D)`` their
    ``fixed^T fixed`` when the caller has it. Rows with no entries are skipped: their solution
    is the zero vector.
    """
    dim = fixed.shape[1]
    if gram is None:
        gram = fixed.T @ fixed
    base = gram + params.regularization * torch.eye(dim, dtype=fixed.dtype)
    lengths = np.diff(rows.indptr)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    sorted_lengths = lengths[order]
    start = 0
    while start < len(order):
        # Lengths ascend, so a chunk's padded size is set by its last row.
        stop = min(len(order), start + CHUNK_ROWS)
        fits = np.arange(1, stop - start + 1) * sorted_lengths[start:stop] <= CHUNK_ENTRIES
        stop = start + max(1, int(fits.sum()))
        chunk_rows = order[start:stop]
        width = int(sorted_lengths[stop - 1])
        starts = rows.indptr[chunk_rows]
        valid = np.arange(width)[None, :] < lengths[chunk_rows][:, None]
        positions = np.where(valid, starts[:, None] + np.arange(width)[None, :], starts[:, None])
        columns = torch.from_numpy(rows.indices[positions])
        extra = torch.from_numpy(np.where(valid, params.alpha * rows.counts[positions], 0).astype(np.float32))
        confidence = extra + torch.from_numpy(valid.astype(np.float32))
        vectors = fixed[columns]  # (b, L, D)
        lhs = base + torch.bmm((vectors * extra.unsqueeze(-1)).transpose(1, 2), vectors)
        rhs = torch.bmm(confidence.unsqueeze(1), vectors).squeeze(1)
        yield _Chunk(chunk_rows, columns, confidence, lhs, rhs)
        start = stop


def _solve(lhs: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solutions ``(b, D)`` of the SPD systems ``lhs: (b, D, D)``, ``rhs: (b, D)``, and the
    Cholesky factors ``(b, D, D)`` for further solves with the same matrices."""
    factor, info = torch.linalg.cholesky_ex(lhs)
    failed = torch.nonzero(info).flatten()
    if len(failed):  # float32 round-off on a badly conditioned system: redo those in float64
        factor[failed] = torch.linalg.cholesky(lhs[failed].double()).float()
    return torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1), factor


def _half_step(fixed: torch.Tensor, rows: _Rows, params: ALSParams) -> torch.Tensor:
    """Exact least-squares vectors ``(R, D)`` for every row given the fixed side ``(M, D)``."""
    solved = torch.zeros((rows.num_rows, fixed.shape[1]), dtype=fixed.dtype)
    for chunk in _normal_equations(fixed, rows, params):
        solved[torch.from_numpy(chunk.rows)] = _solve(chunk.lhs, chunk.rhs)[0]
    return solved


def fit_als_factors(train_sequences: Sequence[np.ndarray], num_items: int, params: ALSParams, seed: int = 0,
                    threads: int | None = None, log: Callable[[str], None] | None = None) -> ALSFactors:
    """Fit user and item factors; see :func:`fit_als` (this also returns the user factors of
    the last user half-step, which used the item factors before the last item half-step)."""
    params = ALSParams.model_validate(params)
    if num_items < 1:
        raise ValueError("ALS needs at least one item")
    with compute_threads(threads), torch.no_grad():
        users = _rows_from_sequences(train_sequences, num_items)
        items = users.transpose(num_items)
        generator = torch.Generator().manual_seed(int(seed))
        # Small random item vectors: the first user solve then starts near the ridge solution.
        item_factors = torch.randn((num_items, params.factors), generator=generator) * (0.1 / params.factors ** 0.5)
        user_factors = torch.zeros((users.num_rows, params.factors))
        for iteration in range(params.iterations):
            started = time.perf_counter()
            user_factors = _half_step(item_factors, users, params)
            item_factors = _half_step(user_factors, items, params)
            if log is not None:
                log(f"ALS iteration {iteration + 1}/{params.iterations}: {time.perf_counter() - started:.2f}s")
    return ALSFactors(user_factors.numpy(), item_factors.numpy())


def fit_als(train_sequences: Sequence[np.ndarray], num_items: int, params: ALSParams, seed: int = 0,
            threads: int | None = None, log: Callable[[str], None] | None = None) -> np.ndarray:
    """Item factors ``(N, D)`` float32 fitted by ``params.iterations`` alternating passes.

    ``train_sequences``: one array of 0-based item indices per user (any order; an item that
    occurs n times counts n times). ``num_items``: N. ``seed`` fixes the random start;
    ``threads`` sets torch's thread count for the fit (None: leave it). ``log`` receives one
    line per iteration. User vectors are not returned: :func:`fold_in` computes them from a
    history, in training as in serving.
    """
    return fit_als_factors(train_sequences, num_items, params, seed, threads, log).item_factors


def item_gram(item_factors: np.ndarray) -> torch.Tensor:
    """``Y^T Y: (D, D)``, shared by every user's fold-in; callers that fold in often keep it."""
    factors = shared_tensor(item_factors)
    return factors.T @ factors


def fold_in(item_factors: np.ndarray, histories: Sequence[Sequence[int]], params: ALSParams,
            gram: torch.Tensor | None = None) -> np.ndarray:
    """Exact user vectors ``(B, D)`` float32 for B histories of 0-based item indices.

    The user half-step of training for these histories: with ``item_factors: (N, D)`` fixed,
    each vector minimises the ALS objective for its history. An empty history gives the zero
    vector. ``gram``: :func:`item_gram` of ``item_factors``, when the caller keeps it.
    """
    return fold_in_with_contributions(item_factors, histories, params, top_k=0, gram=gram)[0]


@torch.no_grad()
def fold_in_with_contributions(item_factors: np.ndarray, histories: Sequence[Sequence[int]], params: ALSParams,
                               top_k: int = 10, gram: torch.Tensor | None = None
                               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """User vectors ``(B, D)`` as :func:`fold_in`, and per history the share of each position
    in the user's ``top_k`` scores: ``(len(history),)`` float32, non-negative, summing to 1
    (all zero when nothing contributes positively, or when ``top_k`` is 0).

    The score is linear in the history (Hu et al., section 5): with ``W = (Y^T C_u Y +
    lambda I)^-1``, ``score_j = sum_i c_ui y_j^T W y_i``. History item i's part in the top-k
    unseen items T is ``c_ui y_i^T W sum_{j in T} y_j`` (one extra solve per user); an item
    that occurs n times gives each of its positions 1/n of its part.
    """
    factors = shared_tensor(item_factors)
    num_items, dim = factors.shape
    rows = _rows_from_sequences(histories, num_items)
    vectors = torch.zeros((len(histories), dim))
    contributions = [np.zeros(len(h), dtype=np.float32) for h in histories]
    top_k = min(int(top_k), num_items)
    for chunk in _normal_equations(factors, rows, params, gram):
        solved, cholesky = _solve(chunk.lhs, chunk.rhs)
        vectors[torch.from_numpy(chunk.rows)] = solved
        if top_k <= 0:
            continue
        wanted = torch.cat([_top_item_sum(factors, solved[part], chunk.columns[part], top_k)
                            for part in torch.split(torch.arange(len(solved)), SCORE_ROWS)])  # (b, D)
        direction = torch.cholesky_solve(wanted.unsqueeze(-1), cholesky).squeeze(-1)  # W sum_T y_j
        parts = chunk.confidence * torch.bmm(factors[chunk.columns], direction.unsqueeze(-1)).squeeze(-1)
        parts = parts.clamp(min=0).numpy()
        for row, part in zip(chunk.rows, parts):
            start, stop = rows.indptr[row], rows.indptr[row + 1]
            contributions[row] = position_shares(histories[row], rows.indices[start:stop], rows.counts[start:stop],
                                                 part[: stop - start])
    return vectors.numpy(), contributions


def _top_item_sum(factors: torch.Tensor, users: torch.Tensor, seen: torch.Tensor, k: int) -> torch.Tensor:
    """``(b, D)``: per user the sum of the vectors of its ``k`` best-scored unseen items."""
    scores = users @ factors.T  # (b, N)
    scores.scatter_(1, seen, float("-inf"))  # recommendations are unseen items
    return factors[torch.topk(scores, k, dim=1).indices].sum(dim=1)
