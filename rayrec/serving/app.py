"""``build_app``: the one way to build the serving graph (CLI and ``serve run deploy/serve.yaml``).

::

    HTTP ─► Ingress ─┬─► Preprocessor ─► UserEncoder (@serve.batch) ─► CandidateScorer
                     ├─► CandidateScorer (/similar-items, PUT/DELETE /items, /search)
                     └─► FeedbackIngestor (/feedback, DELETE /users, model switch)

That is ``topology: split``. ``topology: fused`` replaces the three read stages with one
RecommendPipeline deployment running the same logic classes in process, and ``topology:
ingress`` runs that pipeline inside each ingress replica (reads make no handle hop).
``topology: auto`` (the default) picks ingress on a one-node Ray, where every hop costs CPU the
model needs, and split on a cluster of several nodes, where stages scale on their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from rayrec.serving.config import SINGLE_THREAD_ENV, AppArgs, StageOptions, check_components
from rayrec.serving.graph.deployments import CandidateScorer, FeedbackIngestor, Preprocessor, RecommendPipeline, UserEncoder
from rayrec.serving.graph.model_loading import load_model
from rayrec.serving.http.ingress import Ingress
from rayrec.serving.http.security import default_model_roots, load_api_keys, resolve_model_roots
from rayrec.state import open_state_store


def _absolute_state_url(state: str) -> str:
    """Replicas may run in another working directory: pin a relative SQLite path."""
    from rayrec.state.sqlite import sqlite_path_from_url

    if "://" in state and not state.startswith("sqlite://"):
        return state  # a networked store
    base, _, query = state.partition("?")
    path = os.path.abspath(sqlite_path_from_url(base))
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def _options(stage: StageOptions, args: AppArgs) -> dict[str, Any]:
    env = {name: str(args.threads_per_replica) if name.endswith("THREADS") else value for name, value in SINGLE_THREAD_ENV.items()}
    env.update(args.replica_env)
    return {
        **stage.deployment_options(),
        # Overload answers 503 with Retry-After at once (at the proxy for the ingress, in the
        # ingress for the inner stages) instead of letting requests time out in a queue.
        "backpressure_config": {"status_code": 503, "retry_after_s": args.retry_after_s},
        "ray_actor_options": {"num_cpus": stage.num_cpus, "runtime_env": {"env_vars": env}},
        "logging_config": {"enable_access_log": args.access_log},
    }


def resolve_args(args: AppArgs | dict[str, Any]) -> AppArgs:
    """Validate ``args``, make paths absolute, check the model and component names early."""
    if not isinstance(args, AppArgs):
        args = AppArgs(**args)
    model_dir = str(Path(args.model_dir).expanduser().resolve())
    update: dict[str, Any] = {
        "model_dir": model_dir,
        "state": _absolute_state_url(args.state),
        "model_roots": resolve_model_roots(args.model_roots) if args.model_roots else default_model_roots(model_dir),
    }
    if args.api_keys_file:
        update["api_keys_file"] = str(Path(args.api_keys_file).expanduser().resolve())
    if args.request_log and args.request_log != "-":
        update["request_log"] = str(Path(args.request_log).expanduser().resolve())
    args = args.model_copy(update=update)
    load_model(args.model_dir)  # a bad directory fails here with a clear ModelError, not in 5 replicas
    load_api_keys(args.api_keys_file, env_var=None)  # a missing or empty key file fails here too
    check_components(args)  # one line naming the list entry, the component and the field
    return args


def pick_topology() -> str:
    """``auto``'s choice for the Ray this process is connected to (one node when not connected)."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")] if ray.is_initialized() else []
    return "split" if len(nodes) > 1 else "ingress"


def build_app(args: AppArgs) -> Application:
    """Build the graph; makes ``args.model_dir`` the live model in the state store."""
    args = resolve_args(args)
    if args.topology == "auto":
        args = args.model_copy(update={"topology": pick_topology()})
    store = open_state_store(args.state)
    store.ensure_model(args.model_dir)
    store.close()
    stages = args.stages
    feedback = FeedbackIngestor.options(**_options(stages.feedback, args)).bind(args)
    ingress = Ingress.options(**_options(stages.ingress, args))
    if args.topology == "ingress":
        return ingress.bind(None, None, None, feedback, args)  # the ingress builds its own pipeline
    if args.topology == "fused":
        pipeline = RecommendPipeline.options(**_options(stages.pipeline, args)).bind(args)
        return ingress.bind(None, None, pipeline, feedback, args)
    preprocessor = Preprocessor.options(**_options(stages.preprocessor, args)).bind(args)
    encoder = UserEncoder.options(**_options(stages.user_encoder, args)).bind(args)
    scorer = CandidateScorer.options(**_options(stages.scorer, args)).bind(args)
    return ingress.bind(preprocessor, encoder, scorer, feedback, args)
