"""Reference recommenders that every model in rayrec is compared against.

All baselines fit on ``train_seqs`` (one int64 item-index array per user, in user-index
order) and ``num_items``, and score with ``score(user_indices: (B,)) -> (B, num_items)``
float32, the shape :func:`rayrec.evaluation.protocol.evaluate_ranking` expects. They also
offer ``score_histories(histories)`` to score arbitrary item histories (fold-in) without
refitting.

The user-item matrix is a scipy sparse matrix
(:func:`rayrec.data.preprocessing.sparse_interaction_matrix`), so no baseline ever holds a
dense users x items array: 100,000 users x 50,000 items would be 40 GB in float64. What stays
dense is what the method is: EASE's (N, N) item weights (or, with its users solver, a (U, U)
factor for U < N), item-kNN's (N, k) neighbours, and one batch of (B, N) scores.
"""

from __future__ import annotations

import time
from typing import ClassVar, Sequence

import numpy as np

from rayrec.data.preprocessing import sparse_interaction_matrix

#: The l2 values :func:`fit_ease_tuned` tries by default.
EASE_L2_GRID = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
#: Catalogues above this size skip the EASE baseline in :func:`rayrec.evaluation.protocol.evaluate_baselines`:
#: its (N, N) float64 Gram matrix and inverse are 2 x 3.2 GB at 20,000 items and grow with N^2.
EASE_BASELINE_MAX_ITEMS = 20_000


def item_cooccurrence(seqs: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """``X^T X`` of the binary user-item matrix X: (N, N) float64, entry (i, j) the number of
    users who have both i and j (the diagonal: each item's users).

    A sparse product, so the cost grows with the interactions and memory with the (N, N)
    result, never with users x items.
    """
    x = sparse_interaction_matrix(seqs, num_items, dtype=np.float64)
    return (x.T @ x).toarray()


class _Baseline:
    name: ClassVar[str] = ""

    num_items: int
    train_seqs: list[np.ndarray]

    def _remember(self, train_seqs: Sequence[np.ndarray], num_items: int) -> None:
        self.num_items = int(num_items)
        self.train_seqs = [np.asarray(s, dtype=np.int64) for s in train_seqs]

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        """Scores of every item for training users: (B,) -> (B, num_items) float32."""
        return self.score_histories([self.train_seqs[u] for u in np.asarray(user_indices)])

    def score_histories(self, histories: Sequence[np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class PopularityBaseline(_Baseline):
    """Scores every item by its number of training interactions, the same for every user."""

    name = "popularity"

    def fit(self, train_seqs: Sequence[np.ndarray], num_items: int) -> "PopularityBaseline":
        self._remember(train_seqs, num_items)
        items = np.concatenate([np.zeros(0, dtype=np.int64), *self.train_seqs])
        if items.size and (items.min() < 0 or items.max() >= self.num_items):
            raise ValueError(f"item indices must lie in [0, {self.num_items}); found {items.min()}..{items.max()}")
        #: (num_items,) interactions per item, repeats included
        self.counts = np.bincount(items, minlength=self.num_items).astype(np.float32)
        return self

    def score_histories(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B histories) -> (B, num_items) float32: the counts, copied per row."""
        return np.repeat(self.counts[None, :], len(histories), axis=0)


class EASEBaseline(_Baseline):
    """EASE (Steck 2019): a closed-form item-item linear model with a zero diagonal.

    ``G = X^T X + l2 * I``, ``P = G^-1``, ``B = -P / diag(P)`` with ``diag(B) = 0``, and a
    user's scores are ``x_u B``. Since ``B = I - P diag(P)^-1``, scores are
    ``x_u - (x_u P) / diag(P)``, which is how both solvers compute them:

    - ``"items"`` inverts the (N, N) Gram matrix in float64;
    - ``"users"`` applies the Woodbury identity ``P = (I - X^T (l2 I + X X^T)^-1 X) / l2``, so
      it only inverts a (U, U) matrix. Much faster when users are fewer than items (610 vs
      9,742 in ml-latest-small) and exact up to rounding.

    ``"auto"`` picks whichever matrix is smaller. :meth:`item_weights` gives B itself for
    either solver.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, solver: str = "auto") -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        if solver not in ("auto", "items", "users"):
            raise ValueError(f"unknown solver {solver!r}; use 'auto', 'items' or 'users'")
        self.l2 = float(l2)
        self.solver = solver

    def fit(self, train_seqs: Sequence[np.ndarray], num_items: int) -> "EASEBaseline":
        self._remember(train_seqs, num_items)
        num_users = len(self.train_seqs)
        solver = self.solver
        if solver == "auto":
            solver = "users" if num_users < self.num_items else "items"
        self.solver_used = solver
        if solver == "items":
            gram = item_cooccurrence(self.train_seqs, self.num_items)  # X^T X without the dense X
            gram[np.diag_indices_from(gram)] += self.l2
            precision = np.linalg.inv(gram)  # (N, N) = P
            weights = -precision / np.diag(precision)[None, :]
            weights[np.diag_indices_from(weights)] = 0.0
            #: (N, N) item-item weights B
            self.weights = weights.astype(np.float32)
        else:
            from scipy.linalg import cho_factor

            x = sparse_interaction_matrix(self.train_seqs, self.num_items, dtype=np.float64)  # (U, N), U < N
            kernel = (x @ x.T).toarray()  # (U, U)
            kernel[np.diag_indices_from(kernel)] += self.l2
            #: the sparse (U, N) X and the Cholesky factor of K = l2 I + X X^T: K^-1 v is a
            #: solve (more accurate than forming K^-1), and nothing (U, N) is ever dense
            self._x = x
            self._kernel_factor = cho_factor(kernel)
            # diag(P)_j = (1 - sum_u X_uj (K^-1 X)_uj) / l2, a block of columns at a time
            diagonal = np.empty(self.num_items, dtype=np.float64)
            for start in range(0, self.num_items, self.weight_block):
                stop = min(self.num_items, start + self.weight_block)
                block = x[:, start:stop].toarray()  # (U, b)
                diagonal[start:stop] = np.einsum("uj,uj->j", block, self._kernel_solve(block))
            self._precision_diag = (1.0 - diagonal) / self.l2
        return self

    def _kernel_solve(self, rhs: np.ndarray) -> np.ndarray:
        """K^-1 rhs for the users solver: (U, b) -> (U, b)."""
        from scipy.linalg import cho_solve

        return cho_solve(self._kernel_factor, rhs)

    def score_histories(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B histories) -> (B, num_items) float32 EASE scores ``x_h B``."""
        if self.solver_used == "items":
            return np.asarray(sparse_interaction_matrix(histories, self.num_items, dtype=np.float32) @ self.weights)
        x_h = sparse_interaction_matrix(histories, self.num_items, dtype=np.float64)  # (B, N)
        projected = self._kernel_solve((self._x @ x_h.T).toarray())  # (U, B) = K^-1 X x_h^T
        x_h = x_h.toarray()
        x_h_precision = (x_h - (self._x.T @ projected).T) / self.l2  # (B, N) = x_h P
        return (x_h - x_h_precision / self._precision_diag[None, :]).astype(np.float32)

    #: Item columns of B formed at once from the users solver (bounds the float64 temporaries).
    weight_block: ClassVar[int] = 1024

    def item_weights(self) -> np.ndarray:
        """B: (N, N) float32 with a zero diagonal, so that ``x_h @ B`` are a history's scores.

        The items solver has it already. The users solver forms it from ``B = I - P diag(P)^-1``
        with ``P = (I - X^T K^-1 X) / l2``, a block of columns at a time: N U^2 work and the
        (N, N) result, so only for catalogues where N^2 floats fit in memory.
        """
        if self.solver_used == "items":
            return self.weights
        weights = np.empty((self.num_items, self.num_items), dtype=np.float32)
        for start in range(0, self.num_items, self.weight_block):
            stop = min(self.num_items, start + self.weight_block)
            columns = np.arange(start, stop)
            precision = -(self._x.T @ self._kernel_solve(self._x[:, start:stop].toarray()))  # (N, b): l2 P - I
            precision[columns, columns - start] += 1.0
            precision /= self.l2  # P[:, start:stop]
            block = -precision / self._precision_diag[None, start:stop]
            block[columns, columns - start] = 0.0  # I - P / diag(P) is exactly 0 there
            weights[:, start:stop] = block
        return weights


def fit_ease_tuned(
    train_seqs: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    num_items: int,
    lambdas: Sequence[float] = EASE_L2_GRID,
    solver: str = "auto",
    deadline: float | None = None,
) -> tuple[EASEBaseline, float]:
    """Fit EASE for each ``l2`` in ``lambdas``; keep the best NDCG@10 on the validation targets.

    valid_targets: (U,) int64 validation item per user (-1 skips). Only validation items are
    looked at, so the test items stay untouched. Returns the fitted model and its ``l2``;
    ``model.validation_ndcg`` maps each tried ``l2`` to its NDCG@10 and
    ``model.validation_metrics`` to every metric of
    :func:`rayrec.evaluation.protocol.evaluate_ranking` at 10. Ties keep the smaller l2, in
    whatever order ``lambdas`` come. ``deadline`` (unix time): no further l2 is tried after
    it, once one has been.
    """
    from rayrec.evaluation.protocol import evaluate_ranking

    best: tuple[float, EASEBaseline, float] | None = None
    validation_metrics: dict[float, dict[str, float]] = {}
    for l2 in lambdas:
        if best is not None and deadline is not None and time.time() > deadline:
            break
        model = EASEBaseline(l2=l2, solver=solver).fit(train_seqs, num_items)
        metrics = evaluate_ranking(model.score, model.train_seqs, valid_targets, num_items, ks=(10,))
        validation_metrics[float(l2)] = metrics
        ndcg = metrics["NDCG@10"]
        if best is None or ndcg > best[0] or (ndcg == best[0] and float(l2) < best[2]):
            best = (ndcg, model, float(l2))
    if best is None:
        raise ValueError("lambdas is empty; give at least one l2 value to try")
    _, model, l2 = best
    model.validation_metrics = validation_metrics
    model.validation_ndcg = {value: metrics["NDCG@10"] for value, metrics in validation_metrics.items()}
    return model, l2


class ItemKNNBaseline(_Baseline):
    """Item-based collaborative filtering with cosine similarity on binary interactions.

    ``sim(i, j) = |users(i) & users(j)| / (sqrt|users(i)| * sqrt|users(j)| + shrink)``; each
    item keeps its ``k_neighbors`` most similar items, and a user's score for item j is the
    sum of ``sim(i, j)`` over the history items i that kept j as a neighbour. ``shrink``
    damps similarities resting on few co-occurrences.
    """

    name = "item_knn"

    #: items per block when computing similarities, bounding memory to block * N floats
    block_size: ClassVar[int] = 1024
    #: (history item, neighbour) pairs scattered at once when scoring, bounding memory
    scatter_chunk: ClassVar[int] = 1 << 22

    def __init__(self, k_neighbors: int = 100, shrink: float = 0.0) -> None:
        if k_neighbors <= 0:
            raise ValueError(f"k_neighbors must be positive, got {k_neighbors}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        self.k_neighbors = int(k_neighbors)
        self.shrink = float(shrink)

    def fit(self, train_seqs: Sequence[np.ndarray], num_items: int) -> "ItemKNNBaseline":
        self._remember(train_seqs, num_items)
        x = sparse_interaction_matrix(self.train_seqs, self.num_items, dtype=np.float32)  # (U, N)
        by_item = x.T.tocsr()  # (N, U): a block of items' users is a row slice
        norms = np.sqrt(np.bincount(x.indices, minlength=self.num_items).astype(np.float32))  # (N,)
        k = min(self.k_neighbors, max(self.num_items - 1, 1))
        #: (N, k) neighbour indices and similarities per item
        self.neighbors = np.zeros((self.num_items, k), dtype=np.int64)
        self.similarities = np.zeros((self.num_items, k), dtype=np.float32)
        for start in range(0, self.num_items, self.block_size):
            stop = min(start + self.block_size, self.num_items)
            co_counts = (by_item[start:stop] @ x).toarray()  # (block, N)
            denominator = norms[start:stop, None] * norms[None, :] + self.shrink
            sims = np.divide(co_counts, denominator, out=np.zeros_like(co_counts), where=denominator > 0)
            sims[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            self.neighbors[start:stop] = top
            self.similarities[start:stop] = np.take_along_axis(sims, top, axis=1)
        return self

    def score_histories(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B histories) -> (B, num_items) float32 summed neighbour similarities."""
        scores = np.zeros((len(histories), self.num_items), dtype=np.float64)
        # Chunk users so the (history items x k) scatter stays near ``scatter_chunk`` entries.
        budget = max(1, self.scatter_chunk // self.neighbors.shape[1])
        start = 0
        while start < len(histories):
            stop, total = start, 0
            while stop < len(histories) and (stop == start or total + len(histories[stop]) <= budget):
                total += len(histories[stop])
                stop += 1
            chunk = [np.unique(np.asarray(h, dtype=np.int64)) for h in histories[start:stop]]
            lengths = np.fromiter((len(h) for h in chunk), dtype=np.int64, count=len(chunk))
            if lengths.sum():
                items = np.concatenate(chunk)
                rows = np.repeat(np.arange(stop - start), lengths)
                keys = rows[:, None] * self.num_items + self.neighbors[items]  # (H, k) flat cells
                summed = np.bincount(
                    keys.ravel(), weights=self.similarities[items].ravel(), minlength=(stop - start) * self.num_items
                )
                scores[start:stop] = summed.reshape(stop - start, self.num_items)
            start = stop
        return scores.astype(np.float32)
