"""Putting items unseen in training on the same score scale as trained ones.

A trained item is scored with its full vector (id embedding + content); an item added after
training has content alone. The two kinds of vector have different score distributions for the
same user, so a raw comparison decides new items' exposure by accident: raw scores under-expose
new items and rank the right one lower than calibrated scores do (``benchmarks/cold_start.py``
measures both; its figures are in the README).

Calibration asks, per user: how far above the trained items does this new item stand when
*every* item is seen through content alone? It then gives the new item the full-vector score
that stands equally far above the trained items' full-vector scores::

    calibrated = mean_full(u) + ((u . c - mean_content(u)) / std_content(u) + boost) * std_full(u)

where the means and standard deviations are over the trained items' full vectors and their
content-only vectors. Both are exact and cheap for any user: a mean is ``u . m`` and a variance
``u^T S u`` with the precomputed mean vector ``m`` and covariance ``S``, so a request costs two
(D, D) products, not a pass over the catalogue. ``boost`` (in standard deviations) trades new
items' exposure against trained items' (a table in the README of rayrec-text).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: Below this content-score spread (relative to the full one) content does not tell items apart:
#: new items all get the trained items' mean score (plus the boost), a neutral newcomer.
FLAT_CONTENT = 1e-6


@dataclass(frozen=True)
class NewItemCalibration:
    """Per-user affine map from content-only scores to the full-vector scale (see module doc)."""

    full_mean: np.ndarray  # (D,) mean of the trained items' full vectors
    full_covariance: np.ndarray  # (D, D)
    content_mean: np.ndarray  # (D,) mean of the same items' content-only vectors
    content_covariance: np.ndarray  # (D, D)
    boost: float = 0.0

    @classmethod
    def fit(cls, full_vectors: np.ndarray, content_vectors: np.ndarray, boost: float = 0.0) -> "NewItemCalibration":
        """From the trained items' vectors: (N, D) full and (N, D) content-only, same row order."""
        full_vectors = np.asarray(full_vectors, dtype=np.float64)
        content_vectors = np.asarray(content_vectors, dtype=np.float64)
        if full_vectors.shape != content_vectors.shape or full_vectors.ndim != 2 or len(full_vectors) < 2:
            raise ValueError(f"need two (N >= 2, D) arrays of the same shape, got {full_vectors.shape} "
                             f"and {content_vectors.shape}")

        def moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mean = vectors.mean(axis=0)
            centred = vectors - mean
            return mean, centred.T @ centred / len(vectors)

        full_mean, full_covariance = moments(full_vectors)
        content_mean, content_covariance = moments(content_vectors)
        return cls(full_mean, full_covariance, content_mean, content_covariance, float(boost))

    def with_boost(self, boost: float) -> "NewItemCalibration":
        return dataclasses.replace(self, boost=float(boost))

    def affine(self, user_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) user vectors -> per user (scale, offset), each (B,): calibrated = scale * raw + offset."""
        users = np.atleast_2d(np.asarray(user_vectors, dtype=np.float64))
        full_mean = users @ self.full_mean
        full_std = np.sqrt(np.maximum(((users @ self.full_covariance) * users).sum(axis=1), 0.0))
        content_mean = users @ self.content_mean
        content_std = np.sqrt(np.maximum(((users @ self.content_covariance) * users).sum(axis=1), 0.0))
        informative = content_std > FLAT_CONTENT * np.maximum(full_std, 1e-12)
        scale = np.where(informative, full_std / np.where(informative, content_std, 1.0), 0.0)
        offset = full_mean - scale * content_mean + self.boost * full_std
        return scale, offset

    def apply(self, user_vectors: np.ndarray, raw_scores: np.ndarray) -> np.ndarray:
        """Calibrated scores of new items: (B, D) users, (B, M) raw scores -> (B, M) float32.
        A single user may be given as (D,) with (M,) scores."""
        scale, offset = self.affine(user_vectors)
        raw = np.asarray(raw_scores, dtype=np.float64)
        if raw.ndim == 1:
            return (scale[0] * raw + offset[0]).astype(np.float32)
        return (scale[:, None] * raw + offset[:, None]).astype(np.float32)
