"""Leave-one-out evaluation of rayrec's model next to the baselines (``rayrec evaluate``)."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Callable

import numpy as np

from rayrec.data.splits import leave_one_out_sequences
from rayrec.evaluation.protocol import evaluate_baselines, evaluate_ranking
from rayrec.models.servable import load_model_dir
from rayrec.training.prepare import PreparedData


def evaluate_leave_one_out(data: PreparedData, config, *, in_process: bool = False, baselines: bool = True,
                           log: Callable[[str], None] = print, save_model: str | None = None
                           ) -> dict[str, dict[str, float]]:
    """Train on all but each user's last two items (second to last = validation, for early
    stopping and baseline tuning), then rank all items for the last one, history masked.

    The split is :func:`rayrec.data.splits.leave_one_out_sequences`, the metrics
    :func:`rayrec.evaluation.protocol.evaluate_ranking`'s. The model is trained exactly as
    ``rayrec train`` would be on the data without each user's last item, so ``save_model``
    keeps a directory whose ``rayrec recommend`` output scores the same as reported here.
    Returns ``{method name: metrics}``.
    """
    train0, validation0, test0 = leave_one_out_sequences([s - 1 for s in data.sequences])  # -1 = no target
    # At test time every method sees the validation item as part of the history.
    history0 = [np.concatenate([t, [v]]) if v >= 0 else t for t, v in zip(train0, validation0)]
    num_items = data.num_items
    results: dict[str, dict[str, float]] = {}
    without_test = dataclasses.replace(data, sequences=[h + 1 for h in history0])

    with tempfile.TemporaryDirectory(prefix="rayrec-evaluate-") as scratch:
        model_dir = save_model or scratch
        if in_process:
            from rayrec.training.local import train_prepared_in_process

            train_prepared_in_process(without_test, model_dir, config, log=log)
        else:
            from rayrec.training.trainer import train_distributed

            train_distributed(without_test, model_dir, config, log=log)
        model = load_model_dir(model_dir)

        def model_scores(user_indices: np.ndarray) -> np.ndarray:
            vectors, _ = model.encode_histories([history0[u] for u in user_indices], user_indices)
            return vectors @ model.item_embeddings.T

        results[f"rayrec ({config.model.user_encoder})"] = evaluate_ranking(model_scores, history0, test0, num_items)
    if baselines:
        results.update(evaluate_baselines(train0, validation0, history0, test0, num_items, log=log))
    return results
