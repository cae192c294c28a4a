"""Training the order-free EASE candidate: its ridge penalty chosen on validation, then a
final fit on everything (the held-out items included), written as a servable model directory.

Only for catalogues of up to :data:`rayrec.models.ease_model.EASE_MAX_ITEMS` items: the model
is a dense (N, N) matrix, and fitting it inverts an N x N (or users x users) matrix.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

from rayrec.evaluation.baselines import EASE_L2_GRID, EASEBaseline, fit_ease_tuned
from rayrec.models.ease_model import EASE_MAX_ITEMS
from rayrec.models.threads import compute_threads
from rayrec.training.prepare import PreparedData, validation_split
from rayrec.training.shortlists import write_shortlists

#: The grid of the EASE baseline, nearest to Steck's usual l2 = 500 first (on a log scale), so
#: a deadline cuts the least likely values.
L2_ORDER = tuple(sorted(EASE_L2_GRID, key=lambda l2: abs(math.log(l2 / 500.0))))


def train_ease(data: PreparedData, out_dir: str | Path, *, seed: int = 0, deadline: float | None = None,
               threads: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Choose EASE's l2 on the validation split (each user's last item), refit with it on
    every interaction, and export it to ``out_dir``. Stops trying l2 values at ``deadline``
    (unix time) after at least one. Returns what was tried.

    Validation is :func:`rayrec.evaluation.baselines.fit_ease_tuned`'s, the NDCG@10 of
    :func:`rayrec.evaluation.protocol.evaluate_ranking` that every candidate is compared by.
    EASE is deterministic: ``seed`` is accepted for the common candidate interface.
    ``threads``: compute threads of the fits (None: leave them).
    """
    from rayrec.training.export_ease import export_ease_model_dir

    if data.num_items > EASE_MAX_ITEMS:
        raise ValueError(f"EASE is only trained for up to {EASE_MAX_ITEMS:,} items; this data has {data.num_items:,}")
    started = time.perf_counter()
    train, targets = validation_split(data.sequences, zero_based=True)
    with compute_threads(threads):
        tuned, l2 = fit_ease_tuned(train, targets, data.num_items, lambdas=L2_ORDER, deadline=deadline)
        tried = [{"l2": value, "val_ndcg@10": metrics["NDCG@10"], "val_hr@10": metrics["HR@10"]}
                 for value, metrics in tuned.validation_metrics.items()]
        for row in tried:
            log(f"EASE l2={row['l2']:g}: val NDCG@10 {row['val_ndcg@10']:.4f} HR@10 {row['val_hr@10']:.4f}")
        best = tuned.validation_metrics[l2]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_shortlists(out_dir, lambda _, histories: tuned.score_histories(histories), train, targets)  # what a blend is chosen on
        del tuned  # its (N, N) matrices; the final fit needs as much again
        search_seconds = time.perf_counter() - started
        # The final model also learns from the held-out items: the most recent ones, and the
        # nearest in time to what it will be asked to predict.
        final = EASEBaseline(l2=l2).fit([s - 1 for s in data.sequences], data.num_items)
        weights = final.item_weights()
    del final
    export_ease_model_dir(data, l2, weights, out_dir, extra_metrics={
        "best_val_ndcg@10": best["NDCG@10"], "best_val_hr@10": best["HR@10"], "ease_search": tried,
        "search_seconds": round(search_seconds, 2), "train_wall_seconds": time.perf_counter() - started})
    return {"l2": l2, "settings_tried": len(tried)}
