"""Training the order-free ALS candidate: a small search on validation, then a final fit on
everything (the held-out items included), written as a servable model directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rayrec.evaluation.protocol import evaluate_ranking
from rayrec.models.als import ALSParams, fit_als, fold_in, item_gram
from rayrec.training.prepare import PreparedData, validation_split
from rayrec.training.shortlists import write_shortlists

#: Tried in turn, each stage keeping the best value so far: regularisation matters most,
#: then the confidence slope, then the dimension.
REGULARIZATIONS = (1.0, 10.0, 0.1, 100.0)
ALPHAS = (1.0, 10.0, 0.2)
FACTORS = (64, 128)


def als_validation_metrics(item_factors: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray,
                           params: ALSParams, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Leave-one-out metrics of fold-in users, by :func:`rayrec.evaluation.protocol.evaluate_ranking`
    (full ranking, history masked; its keys: ``"NDCG@10"``, ``"HR@10"``, ...).

    ``histories``: per user the 0-based items the user is folded in from (and that are masked);
    ``targets: (U,)`` the held-out 0-based item per user, -1 for none.
    """
    gram = item_gram(item_factors)

    def scores(users: np.ndarray) -> np.ndarray:
        return fold_in(item_factors, [histories[u] for u in users], params, gram) @ item_factors.T

    return evaluate_ranking(scores, histories, targets, len(item_factors), ks=ks)


def train_als(data: PreparedData, out_dir: str | Path, *, seed: int = 0, deadline: float | None = None,
              threads: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search ALS settings on the validation split (each user's last item), refit the best on
    every interaction, and export it to ``out_dir``. Stops searching at ``deadline`` (unix
    time) after at least one setting. Returns what was tried."""
    from rayrec.training.export_als import export_als_model_dir

    started = time.perf_counter()
    train, targets = validation_split(data.sequences, zero_based=True)
    tried: list[dict[str, Any]] = []
    best: tuple[dict[str, float], ALSParams] | None = None
    best_factors: np.ndarray | None = None

    def attempt(params: ALSParams) -> None:
        nonlocal best, best_factors
        if tried and deadline is not None and time.time() > deadline:
            return
        if any(t["params"] == params.model_dump() for t in tried):
            return
        fit_started = time.perf_counter()
        factors = fit_als(train, data.num_items, params, seed=seed, threads=threads)
        metrics = als_validation_metrics(factors, train, targets, params, ks=(10,))
        scores = {"ndcg": metrics["NDCG@10"], "hr": metrics["HR@10"]}
        tried.append({"params": params.model_dump(), "val_ndcg@10": scores["ndcg"], "val_hr@10": scores["hr"],
                      "seconds": round(time.perf_counter() - fit_started, 2)})
        log(f"ALS {params.model_dump()}: val NDCG@10 {scores['ndcg']:.4f} HR@10 {scores['hr']:.4f}")
        if best is None or scores["ndcg"] > best[0]["ndcg"]:
            best, best_factors = (scores, params), factors

    for regularization in REGULARIZATIONS:
        attempt(ALSParams(factors=FACTORS[0], regularization=regularization, alpha=ALPHAS[0]))
    for alpha in ALPHAS:
        attempt(best[1].model_copy(update={"alpha": alpha}))
    for factors in FACTORS:
        attempt(best[1].model_copy(update={"factors": factors}))
    scores, params = best
    gram = item_gram(best_factors)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_shortlists(out_dir, lambda _, histories: fold_in(best_factors, histories, params, gram) @ best_factors.T,
                     train, targets)  # what a blend is chosen on
    del best_factors
    # The final model also learns from the held-out items: the most recent ones, and the
    # nearest in time to what it will be asked to predict.
    item_factors = fit_als([s - 1 for s in data.sequences], data.num_items, params, seed=seed, threads=threads)
    export_als_model_dir(data, params, item_factors, out_dir, extra_metrics={
        "best_val_ndcg@10": scores["ndcg"], "best_val_hr@10": scores["hr"], "als_search": tried,
        "train_wall_seconds": time.perf_counter() - started})
    return {"params": params.model_dump(), "settings_tried": len(tried)}
