"""Offline evaluation: ranking metrics, the leave-one-out protocol and reference baselines.

- :mod:`rayrec.evaluation.metrics`: vectorised metrics from a ``(U, N)`` score matrix;
- :mod:`rayrec.evaluation.protocol`: :func:`evaluate_ranking` (full ranking, history masked,
  batched) and :func:`format_table`;
- :mod:`rayrec.evaluation.baselines`: popularity, EASE and item-kNN to compare models against.
"""

from rayrec.evaluation.baselines import EASEBaseline, ItemKNNBaseline, PopularityBaseline, fit_ease_tuned
from rayrec.evaluation.protocol import evaluate_ranking, format_table

__all__ = [
    "EASEBaseline",
    "ItemKNNBaseline",
    "PopularityBaseline",
    "evaluate_ranking",
    "fit_ease_tuned",
    "format_table",
]
