"""``build_app``: the one way to build the serving graph (CLI and ``serve run deploy/serve.yaml``).

::

    HTTP ─► Ingress ─┬─► Preprocessor ─► HistoryEncoder (@serve.batch) ─► Retriever
                     ├─► Retriever (/similar-items, PUT/DELETE /items, /search)
                     └─► FeedbackIngestor (/feedback, DELETE /users, model switch)

That is ``topology: split``; ``fused`` and ``ingress`` run the three read stages in one
process (see :mod:`rayrec.serving.graph.topology`). This module composes the two rooms above
the stage logic: the graph (:mod:`rayrec.serving.graph.builder`) and the HTTP ingress in front
of it (:mod:`rayrec.serving.http.ingress`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from rayrec.errors import ConfigError, RayrecError
from rayrec.serving.config import AppArgs, Topology, check_components
from rayrec.serving.experiments.spec import ExperimentSpec
from rayrec.serving.graph.builder import bind_stages, deployment_options
from rayrec.models.servable import load_model_dir
from rayrec.serving.graph.topology import pick_topology
from rayrec.serving.http.ingress import Ingress
from rayrec.serving.http.security import default_model_roots, load_api_keys, resolve_model_roots
from rayrec.state import open_state_store

logger = logging.getLogger(__name__)

__all__ = ["build_app", "pick_topology", "resolve_args"]


def _absolute_state_url(state: str) -> str:
    """Replicas may run in another working directory: pin a relative SQLite path."""
    from rayrec.state.sqlite import sqlite_path_from_url

    if "://" in state and not state.startswith("sqlite://"):
        return state  # a networked store
    base, _, query = state.partition("?")
    path = os.path.abspath(sqlite_path_from_url(base))
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def resolve_args(args: AppArgs | dict[str, Any]) -> AppArgs:
    """Validate ``args``, make paths absolute, check the model and component names early."""
    if not isinstance(args, AppArgs):
        args = AppArgs(**args)
    model_dir = str(Path(args.model_dir).expanduser().resolve())
    security, observability = args.security, args.observability
    security = security.model_copy(update={
        "model_roots": resolve_model_roots(security.model_roots) if security.model_roots
        else default_model_roots(model_dir),
        "api_keys_file": str(Path(security.api_keys_file).expanduser().resolve()) if security.api_keys_file else None,
    })
    if observability.request_log and observability.request_log != "-":
        observability = observability.model_copy(
            update={"request_log": str(Path(observability.request_log).expanduser().resolve())})
    args = args.model_copy(update={"model_dir": model_dir, "state": _absolute_state_url(args.state),
                                   "security": security, "observability": observability})
    load_model_dir(args.model_dir)  # a bad directory fails here with a clear ModelError, not in 5 replicas
    if args.experiment is not None:
        args = args.model_copy(update={"experiment": _checked_experiment(args)})
    load_api_keys(args.security.api_keys_file, env_var=None)  # a missing or empty key file fails here too
    check_components(args)  # one line naming the list entry, the component and the field
    return args


def _checked_experiment(args: AppArgs) -> ExperimentSpec:
    """The configured experiment with absolute model directories, each one loaded once here."""
    spec = args.experiment
    problem = spec.problems(set(args.event_weights))
    if problem is not None:
        raise ConfigError(f"experiment.{problem[0]}: {problem[1]}")
    arms = []
    for i, arm in enumerate(spec.arms):
        model_dir = str(Path(arm.model_dir).expanduser().resolve())
        try:
            load_model_dir(model_dir)
        except RayrecError as exc:
            raise ConfigError(f"experiment.arms[{i}].model_dir: {exc}") from None
        arms.append(arm.model_copy(update={"model_dir": model_dir}))
    return spec.model_copy(update={"arms": arms})


def _start_configured_experiment(store, spec: ExperimentSpec) -> None:
    """Record the configured experiment unless one of that name exists (a restart keeps its data,
    and a stop or promote decided meanwhile)."""
    from rayrec.serving.experiments.live import new_record, running_experiment
    from rayrec.serving.graph.builder import model_dir_mb

    if store.experiment(spec.name) is not None:
        return
    running = running_experiment(store)
    if running is not None:
        raise ConfigError(f"experiment.name: experiment {running['name']!r} is running in the state store; "
                          "stop or promote it first")
    live = store.model_generation()
    by_dir = {live.model_dir: live.generation}
    arms = {}
    for arm in spec.arms:
        if arm.model_dir not in by_dir:
            by_dir[arm.model_dir] = store.stage_model(arm.model_dir)
            store.set_model_status(by_dir[arm.model_dir], "arm")
        arms[arm.name] = {"generation": by_dir[arm.model_dir], "model_dir": arm.model_dir,
                          "model_files_mb": round(model_dir_mb(arm.model_dir), 3),
                          "shares_live_model": by_dir[arm.model_dir] == live.generation}
    store.save_experiment(new_record(spec, arms, live.model_dir))


def _model_dir_at_start(store, args: AppArgs) -> str:
    """``model_dir``, unless the configured experiment was promoted since: then the winner, so a
    restart with the same config does not undo the promote (a new ``model_dir`` still wins)."""
    from rayrec.serving.experiments.live import promoted_model_dir

    if args.experiment is None:
        return args.model_dir
    record = store.experiment(args.experiment.name)
    promoted = promoted_model_dir(record, args.model_dir)
    if promoted is None:
        return args.model_dir
    if promoted != args.model_dir:
        logger.info("experiment %s promoted arm %s: serving %s, not model_dir %s (set model_dir to it, or "
                    "drop the experiment from the config, to silence this)", record["name"],
                    record["promoted_arm"], promoted, args.model_dir)
    return promoted


def build_app(args: AppArgs) -> Application:
    """Build the graph; makes ``args.model_dir`` the live model in the state store."""
    args = resolve_args(args)
    if args.topology == Topology.AUTO:
        args = args.model_copy(update={"topology": pick_topology()})
    store = open_state_store(args.state)
    store.ensure_model(_model_dir_at_start(store, args))
    if args.experiment is not None:
        _start_configured_experiment(store, args.experiment)
    store.close()
    reads, feedback = bind_stages(args)
    return Ingress.options(**deployment_options("ingress", args)).bind(reads=reads, feedback=feedback, args=args)
