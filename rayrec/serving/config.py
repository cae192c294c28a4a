"""``AppArgs``: everything the serving graph is built from (CLI flags, ``serve.yaml`` args)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayrec.components import ComponentSpec
from rayrec.serving.experiments.spec import ExperimentSpec
from rayrec.serving.schemas import MAX_K

#: Weight of each feedback event type. Positive events join the user's sequence (repeated
#: ``round(weight)`` times, at least once), zero is logged only, negative is a dislike: the
#: item leaves the sequence and is never recommended to that user again.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "add_to_cart": 2.0,
    "like": 2.0,
    "rating": 1.0,
    "purchase": 3.0,
    "skip": 0.0,
    "dislike": -1.0,
}

#: Per-replica thread limits: two cores oversubscribed by BLAS threads made a matvec 8x slower.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

#: Ray Serve replica settings that cut a hop's overhead: by default Serve runs user code in a
#: second thread and a handle's router on a third event loop, and each hand-over between them
#: costs a thread wake-up on two busy cores (see benchmarks/serving.py for what they bought).
LOW_LATENCY_REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


class Topology(StrEnum):
    """How the read stages are deployed (see :mod:`rayrec.serving.graph.topology`)."""

    AUTO = "auto"  # ingress on a one-node Ray, split on a cluster of several nodes
    SPLIT = "split"  # Preprocessor, HistoryEncoder and Retriever: a deployment each
    FUSED = "fused"  # one RecommendPipeline deployment runs the three in process
    INGRESS = "ingress"  # every ingress replica runs that pipeline itself


class StageOptions(BaseModel):
    """Replicas and resources of one deployment."""

    model_config = ConfigDict(extra="forbid")
    num_replicas: int = Field(1, ge=1, description="Fixed replica count (ignored when autoscaling is set).")
    autoscaling: dict[str, Any] | None = Field(
        None,
        description="Ray Serve autoscaling_config, e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 4}.",
    )
    num_cpus: float = Field(0.25, gt=0, description="Logical CPUs per replica; fractional so the graph fits 2 cores.")
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests waiting for a busy replica beyond which new ones are refused at once with "
        "503 and Retry-After (backpressure) instead of timing out; -1: no limit.",
    )

    health_check_period_s: float = Field(
        2.0,
        gt=0,
        description="How often Serve checks each replica; a killed replica is noticed (and replaced) within this.",
    )
    memory_mb: int | None = Field(
        None,
        ge=1,
        description="Memory Ray reserves for each replica (its 'memory' resource), in MB. Null: estimated, "
        "300 MB plus, for a stage that loads the model, twice the size of the model directory's files.",
    )

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
        }
        if self.autoscaling:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.num_replicas
        return options


class Stages(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ingress: StageOptions = StageOptions(num_cpus=0.25)
    preprocessor: StageOptions = StageOptions(num_cpus=0.25)
    user_encoder: StageOptions = StageOptions(num_cpus=0.25)
    scorer: StageOptions = StageOptions(num_cpus=0.5)
    feedback: StageOptions = StageOptions(num_cpus=0.125)
    pipeline: StageOptions = StageOptions(num_cpus=0.5)  # topology: fused only


class AnnOptions(BaseModel):
    """FAISS HNSW parameters, used when the catalogue exceeds ``exact_search_max_items``. Null:
    scaled with the catalogue (M 32; build/search breadth 80/256 up to 250k items, +80/+256 per
    doubling beyond, at most 400/2048), or those the model directory's index was built with."""

    model_config = ConfigDict(extra="forbid")
    m: int | None = Field(None, ge=4, description="HNSW graph degree; null: 32.")
    ef_construction: int | None = Field(
        None, ge=8, description="Build breadth of an index built at start; null: scaled with the catalogue. "
                                "Set, an exported index built with another value is rebuilt at start.")
    ef_search: int | None = Field(
        None, ge=8, description="Search breadth; higher = better recall, slower. Null: the exported index's "
                                "recorded value, else scaled with the catalogue.")


class VectorKind(StrEnum):
    """How a scorer holds the trained item vectors (see :mod:`rayrec.serving.stages.codes`)."""

    FLOAT32 = "float32"  # the model's item_embeddings.npy itself, memory-mapped
    FLOAT16 = "float16"  # FAISS QT_fp16: 2 bytes a dimension
    INT8 = "int8"  # FAISS QT_8bit: 1 byte a dimension, 255 steps over each dimension's range
    PQ = "pq"  # FAISS product quantisation: pq.code_bytes a vector


class PQOptions(BaseModel):
    """Product quantisation of the item vectors (``retrieval.vectors: pq``)."""

    model_config = ConfigDict(extra="forbid")
    code_bytes: int | None = Field(
        None, ge=1, le=4096,
        description="Bytes per item (8-bit sub-quantisers, one per dim/code_bytes dimensions; must divide the "
                    "model's dimension). Null: dim/4, 16x less memory than float32.")
    rerank: int = Field(
        1000, ge=0, le=10_000,
        description="PQ's best candidates re-scored with their exact float32 vectors (read row by row from the "
                    "memory-mapped model file); 0: PQ's own approximate scores.")


class SearchOptions(BaseModel):
    """``POST /search``: which extractor encodes queries and items, and how much the user's taste counts."""

    model_config = ConfigDict(extra="forbid")
    extractor: str | None = Field(
        None,
        description="A feature extractor that encodes queries (e.g. text_embedding from rayrec-text). Null: the "
                    "model's own query-capable item feature if it was trained with one, else search is off.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options of that extractor (when named).")
    personalization: float = Field(
        0.3, ge=0, le=1, description="Weight of the user's taste against text match when user_id is given.")
    pool: int = Field(200, ge=1, le=10_000, description="Best text matches re-ranked by the user's taste.")


class NewItemOptions(BaseModel):
    """Items added after training (``PUT /items``): how their content-only scores meet trained items'."""

    model_config = ConfigDict(extra="forbid")
    calibrate: bool = Field(
        True, description="Put new items' scores on the trained items' scale per user (rayrec.models.new_items); "
                          "off: raw scores.")
    boost: float = Field(
        0.0, ge=-5, le=5,
        description="Standard deviations added to new items' calibrated scores: > 0 shows them more, < 0 less.")


class RetrievalOptions(BaseModel):
    """How candidates are found: exact or ANN top-K, what is never shown, how many the scorers see."""

    model_config = ConfigDict(extra="forbid")
    exact_search_max_items: int = Field(
        250_000, ge=0, description="Exact top-K up to this many items; an ANN index (FAISS HNSW) above."
    )
    ann: AnnOptions = AnnOptions()
    vectors: VectorKind = Field(
        VectorKind.FLOAT32,
        description="How each scorer replica holds the trained item vectors: float32 (the model file), float16 "
                    "(2x less memory), int8 (4x less), pq (16x less by default, see pq); the compressed kinds need "
                    "faiss and are read from the model directory when `rayrec index build` saved them there, else "
                    "built at start. Scanned whole up to exact_search_max_items; above, HNSW over the same codes.")
    pq: PQOptions = Field(default_factory=PQOptions, description=PQOptions.__doc__)
    filter_seen: bool = Field(True, description="Never recommend items the user already interacted with.")
    rerank_pool: int | None = Field(
        None, ge=1, le=100_000,
        description="Candidates the scorers and candidate filters see per request (at least k). "
                    "Null: min(max(2k, k + 20), 2000), so the pool grows with k.")


class Limits(BaseModel):
    """What one request may ask for, and what an overloaded server tells clients."""

    model_config = ConfigDict(extra="forbid")
    max_k: int = Field(
        1000, ge=1, le=MAX_K,
        description=f"Largest k a request may ask for (/recommend, /search, /similar-items); at most {MAX_K}.")
    max_feedback_batch: int = Field(1000, ge=1, description="Most events one POST /feedback may carry.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies are refused with 413.")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After sent with 503 answers when overloaded.")


class Batching(BaseModel):
    """How the user encoder batches requests (``@serve.batch``)."""

    model_config = ConfigDict(extra="forbid")
    max_size: int = Field(16, ge=1, description="Most requests the user encoder encodes in one batch.")
    wait_timeout_s: float = Field(
        0.0, ge=0, description="The user encoder's extra wait for a fuller batch; 0 batches only what queued "
                               "meanwhile (no added latency)."
    )


class Security(BaseModel):
    """API keys for writes and /admin/*, and where /admin/reload may load models from."""

    model_config = ConfigDict(extra="forbid")
    api_keys_file: str | None = Field(
        None,
        description="File of API keys (one per line, '#' comments); with any key configured, writes and "
        "/admin/* need 'Authorization: Bearer <key>'. Keys are also read from the api_keys_env variable.",
    )
    api_keys_env: str | None = Field(
        "RAYREC_API_KEYS", description="Environment variable (in the ingress replicas) holding comma-separated keys."
    )
    model_roots: list[str] = Field(
        default_factory=list,
        description="/admin/reload loads model directories only from inside these; default: the parent "
        "directory of model_dir.",
    )


class ReplicaOptions(BaseModel):
    """What every replica of every stage gets: thread limits and environment variables."""

    model_config = ConfigDict(extra="forbid")
    threads: int = Field(1, ge=1, description="torch/BLAS threads per replica.")
    env: dict[str, str] = Field(
        default_factory=lambda: dict(LOW_LATENCY_REPLICA_ENV),
        description="Environment variables of every replica (Ray Serve settings read in the replica); "
                    "the default runs user code and the handle router on the replica's own event loop.",
    )


class Observability(BaseModel):
    """Logs and the metrics that cost something to gather."""

    model_config = ConfigDict(extra="forbid")
    access_log: bool = Field(False, description="Serve access logs (off: they cost several ms a request).")
    request_log: str | None = Field(
        None, description="JSON-lines request log file, appended by every ingress replica ('-': stderr); off when unset."
    )
    ann_recall_probe_interval_s: float = Field(
        60.0, ge=0, description="How often each scorer samples the top-K index's recall@10 for the metrics; 0: never."
    )


#: Where each key of the first, flat form of the serve config now lives (group, key).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "exact_search_max_items": ("retrieval", "exact_search_max_items"),
    "ann": ("retrieval", "ann"),
    "filter_seen": ("retrieval", "filter_seen"),
    "rerank_pool": ("retrieval", "rerank_pool"),
    "max_k": ("limits", "max_k"),
    "max_feedback_batch": ("limits", "max_feedback_batch"),
    "max_body_bytes": ("limits", "max_body_bytes"),
    "retry_after_s": ("limits", "retry_after_s"),
    "batch_max_size": ("batching", "max_size"),
    "batch_wait_timeout_s": ("batching", "wait_timeout_s"),
    "api_keys_file": ("security", "api_keys_file"),
    "api_keys_env": ("security", "api_keys_env"),
    "model_roots": ("security", "model_roots"),
    "threads_per_replica": ("replica", "threads"),
    "replica_env": ("replica", "env"),
    "access_log": ("observability", "access_log"),
    "request_log": ("observability", "request_log"),
    "ann_recall_probe_interval_s": ("observability", "ann_recall_probe_interval_s"),
}
_warned_flat_keys: set[str] = set()


def nest_flat_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each flat key of the first serve-config form (``max_k: 50``) moved to its
    group (``limits: {max_k: 50}``), warning once per key (``DeprecationWarning``) with the new
    spelling. A key given both ways is a ``ValueError`` naming both. Anything else is left for
    validation, which names a misspelt key."""
    import warnings

    if not any(key in FLAT_KEYS for key in values):
        return values
    nested = dict(values)
    for flat, (group, key) in FLAT_KEYS.items():
        if flat not in nested:
            continue
        section = nested.get(group)
        if isinstance(section, BaseModel):
            section = section.model_dump(exclude_unset=True)
        section = dict(section or {}) if isinstance(section, dict) or section is None else section
        if not isinstance(section, dict):
            continue  # the group itself is malformed: validation says so
        if key in section:
            raise ValueError(f"`{flat}` and `{group}.{key}` are the same setting: keep only `{group}.{key}`")
        section[key] = nested.pop(flat)
        nested[group] = section
        if flat not in _warned_flat_keys:
            _warned_flat_keys.add(flat)
            warnings.warn(f"serve config: `{flat}` is now `{group}.{key}`; the flat form will be removed",
                          DeprecationWarning, stacklevel=4)
    return nested


class AppArgs(BaseModel):
    """Arguments of :func:`rayrec.serving.app.build_app` (also ``args:`` in ``deploy/serve.yaml``),
    grouped by concern. The first, flat form of the groups' keys (``max_k: 50``) still works,
    with a ``DeprecationWarning`` naming the new place (:data:`FLAT_KEYS`)."""

    model_config = ConfigDict(extra="forbid")

    # -- what is served, and where its state lives -------------------------------------------
    model_dir: str = Field(description="Trained model directory served at start.")
    state: str = Field("sqlite:///rayrec-state.db", description="State store URL or SQLite file path.")
    topology: Topology = Field(
        Topology.AUTO,
        description="auto: ingress on a one-node Ray, split on a cluster of several nodes. split: "
                    "Preprocessor, HistoryEncoder and Retriever are separate deployments, each scaled "
                    "on its own; fused: one RecommendPipeline deployment runs the three stages in process "
                    "(one handle hop instead of three); ingress: every ingress replica runs that pipeline "
                    "itself (no handle hop on reads; the ingress stage's options size it).",
    )
    # -- the plugin components of each stage -------------------------------------------------
    scorers: list[ComponentSpec] = Field(default_factory=list, description="Re-rankers applied after retrieval.")
    candidate_sources: list[ComponentSpec] = Field(
        default_factory=lambda: [ComponentSpec(name="new_items")],
        description="Candidate sources whose items join the retrieved pool (scored by the model).",
    )
    feature_extractors: list[ComponentSpec] = Field(
        default_factory=list, description="User-side feature extractors run by the preprocessor."
    )
    feedback_handlers: list[ComponentSpec] = Field(
        default_factory=list, description="Called with each stored batch of feedback, in every feedback replica.")
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    # -- groups ------------------------------------------------------------------------------
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions, description=RetrievalOptions.__doc__)
    search: SearchOptions = Field(default_factory=SearchOptions, description="Natural-language search (POST /search).")
    new_items: NewItemOptions = Field(default_factory=NewItemOptions,
                                      description="Scoring of items added after training.")
    limits: Limits = Field(default_factory=Limits, description=Limits.__doc__)
    batching: Batching = Field(default_factory=Batching, description=Batching.__doc__)
    security: Security = Field(default_factory=Security, description=Security.__doc__)
    replica: ReplicaOptions = Field(default_factory=ReplicaOptions, description=ReplicaOptions.__doc__)
    stages: Stages = Stages()
    observability: Observability = Field(default_factory=Observability, description=Observability.__doc__)
    experiment: ExperimentSpec | None = Field(
        None, description="An A/B test between models started with the app (see README, Online experiments); "
                          "kept across restarts by its name, like one started with POST /admin/experiments.")

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, values: Any) -> Any:
        return nest_flat_keys(values) if isinstance(values, dict) else values

    @field_validator("event_weights")
    @classmethod
    def _weights_not_empty(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one event type is needed")
        return value

    def deployed_stages(self) -> dict[str, StageOptions]:
        """The stages this topology deploys, by name (``stages`` also holds the other topology's);
        ``auto`` as on one node."""
        names = ["ingress", "feedback"]
        if self.topology == Topology.FUSED:
            names.append("pipeline")
        elif self.topology == Topology.SPLIT:
            names += ["preprocessor", "user_encoder", "scorer"]
        return {name: getattr(self.stages, name) for name in names}

    @property
    def dislike_types(self) -> set[str]:
        return {name for name, weight in self.event_weights.items() if weight < 0}


#: The component lists of AppArgs and the kind each names.
COMPONENT_FIELDS = {
    "scorers": "scorer",
    "candidate_sources": "candidate_source",
    "feature_extractors": "feature_extractor",
    "feedback_handlers": "feedback_handler",
}


def check_components(args: AppArgs, where: str | None = None) -> None:
    """Create every configured component once, so a bad name or option fails before Ray starts
    (and check that compressed item vectors have the faiss they need).

    Raises :class:`rayrec.errors.ConfigError` in one line naming ``where`` (the config file),
    the list entry, the component and the field: ``serve.yaml: scorers[0]: invalid options
    for scorer 'popularity_blend': wieght: Extra inputs are not permitted``.
    """
    from rayrec.errors import ConfigError
    from rayrec.models.ann import faiss_available

    prefix = f"{where}: " if where else ""
    if args.retrieval.vectors != VectorKind.FLOAT32 and not faiss_available():
        raise ConfigError(f"{prefix}retrieval.vectors: {args.retrieval.vectors.value} needs faiss "
                          f"(pip install faiss-cpu), or use float32")
    for field, kind in COMPONENT_FIELDS.items():
        for index, spec in enumerate(getattr(args, field)):
            problem = component_problem(kind, spec)
            if problem is not None:
                raise ConfigError(f"{prefix}{field}[{index}]: {problem}")


def component_problem(kind: str, spec: ComponentSpec) -> str | None:
    """Why ``spec`` cannot be created as a ``kind`` (one line), or None when it can."""
    from pydantic import ValidationError

    from rayrec import plugins
    from rayrec.config import validation_problems
    from rayrec.errors import RayrecError

    component = f"{kind.replace('_', ' ')} {spec.name!r}"
    try:
        plugins.create_component(kind, spec.name, spec.options)
    except ValidationError as exc:
        return f"invalid options for {component}: {validation_problems(exc)}"
    except RayrecError as exc:  # an unknown name (the message lists the known ones), a bad plugin
        return str(exc)
    except Exception as exc:  # the component's own constructor failed
        return f"{component} cannot start: {type(exc).__name__}: {exc}"
    return None

