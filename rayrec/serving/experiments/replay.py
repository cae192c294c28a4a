"""Offline replay of an experiment: a time-ordered log played against two (or more) models as
live traffic would play it, with the serving code itself (no Ray, no HTTP).

For each logged event, oldest first: the user's arm (the same hash as online) answers a
``/recommend`` for that user from the arm's full pipeline, the answer is stored as an
impression, and the logged event is then fed back with that ``impression_id``, so it counts as
a click (at its position) when the arm had shown the item, and it reaches the user's state for
the next request of every arm. The readout is the one ``GET /experiments/{name}`` gives.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rayrec.components import FeedbackEvent
from rayrec.serving.experiments.assignment import assign_arm
from rayrec.serving.experiments.live import new_record, report
from rayrec.serving.experiments.spec import ExperimentSpec
from rayrec.serving.schemas import RecommendRequest
from rayrec.serving.stages.feedback import FeedbackLogic
from rayrec.state.base import BaseStateStore, Impression

#: The event type a logged event without one is fed back as (and counted as a click).
DEFAULT_EVENT = "click"


def _pipeline(model_dir: str, store: BaseStateStore, event_weights: dict[str, float], generation: int):
    """One arm's read stages, built as a serving replica builds them (no plugins configured)."""
    from rayrec.models.servable import load_model_dir
    from rayrec.serving.graph.model_loading import item_records
    from rayrec.serving.stages.encode import HistoryEncoderLogic
    from rayrec.serving.stages.pipeline import PipelineLogic
    from rayrec.serving.stages.preprocess import PreprocessorLogic
    from rayrec.serving.stages.scoring import RetrievalLogic

    model = load_model_dir(model_dir)
    logic = PipelineLogic(PreprocessorLogic(model, store, event_weights, generation),
                          HistoryEncoderLogic(model),
                          RetrievalLogic(model, store, item_records(model, model_dir)))
    logic.warm_up()
    return logic


def replay(interactions, arms: Sequence[tuple[str, str]], *, k: int = 10, limit: int | None = None,
           name: str = "replay", salt: str = "replay", event_weights: dict[str, float] | None = None,
           state_dir: str | Path | None = None, progress: Callable[[int, int], None] | None = None,
           threads: int = 1) -> dict:
    """Replay ``interactions`` (a :class:`rayrec.schema.Interactions`) against ``arms``
    ``(name, model_dir)``, equal shares; returns the report (as ``GET /experiments/{name}``).
    ``threads``: torch/BLAS threads, one like a serving replica (more oversubscribe small models)."""
    from rayrec.models.threads import compute_threads

    with compute_threads(threads):
        return _replay(interactions, arms, k, limit, name, salt, event_weights, state_dir, progress)


def _replay(interactions, arms, k, limit, name, salt, event_weights, state_dir, progress) -> dict:
    from rayrec.serving.config import DEFAULT_EVENT_WEIGHTS
    from rayrec.state.sqlite import SQLiteStateStore

    weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
    share = 1.0 / len(arms)
    spec = ExperimentSpec(name=name, salt=salt, click_events=[DEFAULT_EVENT], conversion_events=["purchase"],
                          arms=[{"name": arm, "model_dir": str(model_dir), "share": share} for arm, model_dir in arms])
    with tempfile.TemporaryDirectory(dir=state_dir) as scratch:
        # A real state store, as serving uses; not fsynced per commit: a replay can be run again.
        store = SQLiteStateStore({"url": str(Path(scratch) / "replay.db"), "synchronous": "normal"})
        live = store.ensure_model(str(spec.arms[0].model_dir))
        generations = {spec.arms[0].name: live.generation}
        for arm in spec.arms[1:]:
            generations[arm.name] = store.stage_model(arm.model_dir)
            store.set_model_status(generations[arm.name], "arm")
        store.save_experiment(new_record(spec, {arm.name: {
            "generation": generations[arm.name], "model_dir": arm.model_dir, "model_files_mb": None,
            "shares_live_model": False} for arm in spec.arms}))
        pipelines = {arm.name: _pipeline(arm.model_dir, store, weights, generations[arm.name]) for arm in spec.arms}
        feedback = FeedbackLogic(store, weights)
        shares = [(arm.name, arm.share) for arm in spec.arms]

        order = np.argsort(interactions.timestamp, kind="stable")  # ties keep file order
        if limit is not None:
            order = order[:limit]
        for done, row in enumerate(order, 1):
            user, item = str(interactions.user_id[row]), str(interactions.item_id[row])
            event_type = DEFAULT_EVENT if interactions.event_type is None else str(interactions.event_type[row])
            arm = assign_arm(user, spec.assignment_salt, shares)
            [answer] = pipelines[arm].recommend_many([RecommendRequest(user_id=user, k=k)])
            impression = Impression(uuid.uuid4().hex, spec.name, arm, [entry["item_id"] for entry in answer["items"]])
            store.record_impression(impression)
            feedback.ingest([FeedbackEvent(user_id=user, item_id=item, event_type=event_type,
                                           timestamp=float(interactions.timestamp[row]),
                                           impression_id=impression.impression_id)])
            if progress is not None:
                progress(done, len(order))
        result = report(store, store.experiment(spec.name))
        store.close()
    return result
