"""The deployments of a topology, bound with their options: everything behind the ingress.

:func:`rayrec.serving.app.build_app` puts the HTTP ingress in front of what :func:`bind_stages`
returns. Every deployment declares the CPUs and the memory Ray reserves for it, so replicas are
placed where they fit instead of running a node out of memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.serve import Application

from rayrec.serving.config import SINGLE_THREAD_ENV, AppArgs, Topology
from rayrec.serving.graph.deployments import (
    Retriever,
    FeedbackIngestor,
    Preprocessor,
    RecommendPipeline,
    HistoryEncoder,
)
from rayrec.serving.graph.topology import FusedPipeline, IngressPipeline, ReadPath, SplitStages

#: What a replica needs before any model: Python, Ray's worker, the libraries, the store.
BASE_MEMORY_MB = 300
#: The stages that load the model (the ingress does in topology ingress).
MODEL_STAGES = ("preprocessor", "user_encoder", "scorer", "pipeline")


#: Model files a replica memory-maps instead of reading: their pages are the kernel's page
#: cache, shared by a node's replicas and reclaimable, so no replica reserves them
#: (rayrec.models: trained, histories, vocabulary_files, item_records, ann).
MAPPED_FILES = frozenset({
    "weights.pt", "item_embeddings.npy", "history_items.npy", "items.jsonl", "items.offsets.npy",
    "items.filter_rows.npy", "item_index.faiss", "text_index.faiss",
    "user_vocab.ids.npy", "user_vocab.sorted.npy", "user_vocab.rows.npy",
})


#: A vocabulary file read as a Python list and dict of its ids takes about this many times its
#: size in memory (a million ids: a 10 MB file, 121 MB of objects).
VOCABULARY_OBJECTS_PER_BYTE = 12


def model_dir_mb(model_dir: str | Path) -> float:
    """What a replica reads of ``model_dir`` into its own memory, in MB (0 when it does not
    exist): its files but the :data:`MAPPED_FILES` and what hidden folders hold (a run's
    ``.checkpoints``, which serving never reads), the vocabularies it reads as objects counted
    as those objects."""
    path = Path(model_dir)
    if not path.is_dir():
        return 0.0
    mapped_users = (path / "user_vocab.ids.npy").exists()
    total = 0.0
    for file in path.iterdir():
        if not file.is_file() or file.name in MAPPED_FILES or (file.name == "user_vocab.json" and mapped_users):
            continue
        factor = VOCABULARY_OBJECTS_PER_BYTE if file.name in ("item_vocab.json", "user_vocab.json") else 1
        total += factor * file.stat().st_size
    return total / 2**20


def memory_mb(name: str, args: AppArgs) -> int:
    """The configured ``memory_mb`` of stage ``name``, else the estimate: a model stage holds
    what it reads of the model once loaded, and briefly a second copy while a reload builds
    the next generation."""
    configured = getattr(args.stages, name).memory_mb
    if configured is not None:
        return configured
    loads_model = name in MODEL_STAGES or (name == "ingress" and args.topology == Topology.INGRESS)
    return math.ceil(BASE_MEMORY_MB + (2 * model_dir_mb(args.model_dir) if loads_model else 0))


def deployment_options(name: str, args: AppArgs) -> dict[str, Any]:
    """Ray Serve ``.options(...)`` of stage ``name`` (a field of ``args.stages``)."""
    stage = getattr(args.stages, name)
    env = {var: str(args.replica.threads) if var.endswith("THREADS") else value
           for var, value in SINGLE_THREAD_ENV.items()}
    env.update(args.replica.env)
    return {
        **stage.deployment_options(),
        # Overload answers 503 with Retry-After at once (at the proxy for the ingress, in the
        # ingress for the inner stages) instead of letting requests time out in a queue.
        "backpressure_config": {"status_code": 503, "retry_after_s": args.limits.retry_after_s},
        "ray_actor_options": {
            "num_cpus": stage.num_cpus,
            "memory": memory_mb(name, args) * 2**20,  # Ray counts bytes
            "runtime_env": {"env_vars": env},
        },
        "logging_config": {"enable_access_log": args.observability.access_log},
    }


def bind_stages(args: AppArgs) -> tuple[ReadPath, Application]:
    """The read path of ``args.topology`` (not auto) and the FeedbackIngestor, bound."""
    feedback = FeedbackIngestor.options(**deployment_options("feedback", args)).bind(args)
    if args.topology == Topology.INGRESS:
        return IngressPipeline(), feedback  # each ingress replica builds its own pipeline
    if args.topology == Topology.FUSED:
        return FusedPipeline(RecommendPipeline.options(**deployment_options("pipeline", args)).bind(args)), feedback
    if args.topology != Topology.SPLIT:
        raise ValueError(f"topology {args.topology} must be resolved to split, fused or ingress first")
    reads = SplitStages(
        preprocessor=Preprocessor.options(**deployment_options("preprocessor", args)).bind(args),
        encoder=HistoryEncoder.options(**deployment_options("user_encoder", args)).bind(args),
        scorer=Retriever.options(**deployment_options("scorer", args)).bind(args),
    )
    return reads, feedback
