"""A servable EASE model (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

EASE learns one item-item matrix ``B: (N, N)`` with a zero diagonal (the closed form of
:class:`rayrec.evaluation.baselines.EASEBaseline`, which fits it), and a user's scores are
``x_u B`` with ``x_u: (N,)`` the multi-hot vector of the items in the current history. There
is no user tower and nothing per user is learnt, so a click changes the next answer at once;
the order of the history, and how often an item occurs in it, play no part.

That fits serving's vector interface as it is: the user vector is ``x_u`` itself and the item
vectors are the rows of ``B^T`` (``item_embeddings.npy``, ``(N, N)`` float32), so
``vectors @ item_embeddings.T == x_u B``. The price is the size: N^2 float32 values, 400 MB at
``EASE_MAX_ITEMS`` = 10,000 items, held by every replica that loads the model (the search
index keeps a normalised copy next to it), and an exact search reads all of it per request.
Hence EASE is only a candidate for catalogues up to that size.

Loaded from a model directory with ``"model_kind": "ease"`` (written by
:func:`rayrec.training.export_ease.export_ease_model_dir`; layout in :mod:`rayrec.models.bundle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rayrec.errors import ModelError
from rayrec.data.preprocessing import interaction_matrix
from rayrec.models.attribution import EXPLAINED_TOP_K, position_shares
from rayrec.models.order_free import OrderFreeModel
from rayrec.models.servable import COMMON_FILES, ModelFiles

MODEL_KIND = "ease"
#: The largest catalogue EASE is trained and served for: B takes N^2 float32 values.
EASE_MAX_ITEMS = 10_000


class EASEModel(OrderFreeModel):
    """The item-item weights ``B: (N, N)`` (zero diagonal) and the multi-hot user vector.

    ``item_embeddings`` is ``B^T`` (the stored array); ``weights`` is ``B``, a transposed view
    of the same memory. ``l2``: the ridge penalty B was fitted with.

    Items added after training (``encode_items``) get the mean row of ``B^T`` over their
    categories' items (or over all items without categories): a newcomer scores, for each user,
    like the average item of its categories. Zero weights would be the literal "no evidence",
    but they place a new item at score 0 whatever the user likes; the category mean lets a
    fan of the category see it, as in :class:`rayrec.models.als_model.ALSModel`. A new item
    never enters a user vector (serving drops unknown items from histories), so B's rows need
    no extension.
    """

    def __init__(self, files: ModelFiles, l2: float, category_vectors: np.ndarray | None = None) -> None:
        super().__init__(files, category_vectors)
        self.l2 = l2
        self.weights = self.item_embeddings.T  # B: (N, N)

    @classmethod
    def load(cls, model_dir: str | Path) -> "EASEModel":
        """Load and check an EASE model directory; a clear :class:`ModelError` if anything is off."""
        files, category_vectors = cls.read_files(model_dir, COMMON_FILES)
        model_dir = files.model_dir
        try:
            l2 = float(files.config["ease_l2"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{model_dir}: config.json has no usable ease_l2; re-export the model") from None
        num_items = len(files.item_vocab)
        embeddings = files.item_embeddings
        if embeddings.shape != (num_items, num_items):
            raise ModelError(f"{model_dir}: item_embeddings.npy has shape {embeddings.shape}, but EASE weights "
                             f"are square: ({num_items}, {num_items}) for the {num_items} items")
        if np.any(np.diagonal(embeddings)):
            raise ModelError(f"{model_dir}: item_embeddings.npy has a non-zero diagonal, so it holds no EASE "
                             f"weights; re-export the model")
        return cls(files, l2, category_vectors)

    # -- the RecommenderModel protocol -------------------------------------------------------
    def user_vectors(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                     ) -> np.ndarray:
        """(B, N) float32 multi-hot vectors: 1 for every item of the history (0-based indices,
        any order, repeats counted once). ``user_indices`` is accepted for the common
        interface and not needed."""
        return interaction_matrix([np.asarray(h, dtype=np.int64) for h in histories], len(self.item_vocab))

    def encode_histories(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, N) multi-hot user vectors and, per user, each history position's share of the
        user's top ``EXPLAINED_TOP_K`` unseen scores: ``(len(history),)`` float32 summing to 1.

        Scores are a sum over the history's items, ``score_j = sum_i B[i, j]``, so item i's
        part in the top items T is ``sum_{j in T} B[i, j]`` (negative parts count as none).
        """
        vectors = self.user_vectors(histories)
        embeddings = self.item_embeddings
        attributions = []
        for history in histories:
            distinct, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
            k = min(EXPLAINED_TOP_K, len(embeddings) - len(distinct))
            if len(distinct) == 0 or k <= 0:
                attributions.append(np.zeros(len(history), dtype=np.float32))
                continue
            # The history's rows of B, summed: columns of B^T, so no (N, N) product per user.
            scores = embeddings[:, distinct].sum(axis=1)
            scores[distinct] = -np.inf  # recommendations are unseen items
            top = np.argpartition(-scores, k - 1)[:k]
            parts = embeddings[np.ix_(top, distinct)].sum(axis=0).clip(min=0)  # sum_{j in T} B[i, j]
            attributions.append(position_shares(history, distinct, counts.astype(np.float32), parts))
        return vectors, attributions
