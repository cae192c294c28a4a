"""Topologies: how the ingress reaches the read stages (recommend, search, the catalogue).

::

    split    Ingress ─► Preprocessor ─► HistoryEncoder ─► Retriever   (SplitStages)
    fused    Ingress ─► RecommendPipeline                               (FusedPipeline)
    ingress  Ingress running a RecommendPipeline in its own process     (IngressPipeline)

Writes always go to the FeedbackIngestor. The builder hands the Ingress one read path (its
fields are bound deployments there, which Serve turns into handles in the replica); the routes
call it the same way whatever the topology, so they hold no topology checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from rayrec.serving.config import AppArgs, Topology

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from rayrec.serving.schemas import ItemIn, RecommendRequest, SearchRequest


def pick_topology() -> Topology:
    """``auto``'s choice for the Ray this process is connected to (one node when not connected):
    on one node every handle hop costs CPU the model needs; on several, stages scale apart."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")] if ray.is_initialized() else []
    return Topology.SPLIT if len(nodes) > 1 else Topology.INGRESS


class ReadPath:
    """The read stages as the ingress sees them. Answers are a stage's values: a dict, or a
    :class:`~rayrec.serving.stages.errors.StageError` the ingress raises again."""

    topology: Topology

    def start(self, args: AppArgs) -> ReadPath:
        """Called once in each ingress replica, before it takes traffic."""
        return self

    async def recommend(self, request: RecommendRequest, generation: int | None = None) -> Any:
        """Answer ``request`` from model ``generation`` (an experiment arm's), else the live one."""
        raise NotImplementedError

    async def search(self, request: SearchRequest) -> Any:
        raise NotImplementedError

    def _on_scorer(self, method: str) -> Callable[..., Awaitable[Any]]:
        """``method`` of whatever holds the scorer (catalogue reads and writes, status)."""
        raise NotImplementedError

    async def similar(self, item_id: str, k: int) -> Any:
        return await self._on_scorer("similar")(item_id, k)

    async def item(self, item_id: str) -> Any:
        return await self._on_scorer("item")(item_id)

    async def put_item(self, item_id: str, item: ItemIn) -> Any:
        return await self._on_scorer("put_item")(item_id, item)

    async def delete_item(self, item_id: str) -> Any:
        return await self._on_scorer("delete_item")(item_id)

    async def status(self) -> dict[str, Any]:
        return await self._on_scorer("status")()

    def model_holders(self) -> list[DeploymentHandle]:
        """The deployments whose every replica must ``preload`` a model before a reload switches."""
        raise NotImplementedError

    def check_health(self) -> None:
        """Raise if a read stage inside the ingress replica is unusable (remote ones check themselves)."""


@dataclass
class SplitStages(ReadPath):
    """``topology: split``: a deployment per stage, each scaled on its own."""

    preprocessor: DeploymentHandle
    encoder: DeploymentHandle
    scorer: DeploymentHandle
    topology = Topology.SPLIT

    async def _prepare_and_encode(self, request: RecommendRequest, generation: int | None = None):
        """The user's state from the preprocessor, then their vector when they have history
        -> (prepared, user vector or None, attributions or None)."""
        prepared = await self.preprocessor.prepare.remote(request, generation)
        vector = attributions = None
        if prepared.personalized:
            vector, attributions = await self.encoder.encode.remote(prepared.generation, prepared.history_indices)
        return prepared, vector, attributions

    async def recommend(self, request: RecommendRequest, generation: int | None = None) -> Any:
        prepared, vector, attributions = await self._prepare_and_encode(request, generation)
        return await self.scorer.recommend.remote(prepared, vector, attributions)

    async def search(self, request: SearchRequest) -> Any:
        prepared = vector = attributions = None
        if request.user_id is not None:
            prepared, vector, attributions = await self._prepare_and_encode(request.as_recommend_request())
        return await self.scorer.search.remote(request, prepared, vector, attributions)

    def _on_scorer(self, method: str) -> Callable[..., Awaitable[Any]]:
        return getattr(self.scorer, method).remote

    def model_holders(self) -> list[DeploymentHandle]:
        return [self.preprocessor, self.encoder, self.scorer]


@dataclass
class FusedPipeline(ReadPath):
    """``topology: fused``: one RecommendPipeline deployment runs the three stages in process."""

    pipeline: DeploymentHandle
    topology = Topology.FUSED

    async def recommend(self, request: RecommendRequest, generation: int | None = None) -> Any:
        return await self.pipeline.recommend_for.remote(request, generation)

    async def search(self, request: SearchRequest) -> Any:
        return await self.pipeline.search_for.remote(request)

    def _on_scorer(self, method: str) -> Callable[..., Awaitable[Any]]:
        return getattr(self.pipeline, method).remote

    def model_holders(self) -> list[DeploymentHandle]:
        return [self.pipeline]


@dataclass
class IngressPipeline(ReadPath):
    """``topology: ingress``: each ingress replica builds its own RecommendPipeline in
    :meth:`start` and calls it directly, so a read makes no handle hop."""

    pipeline: Any = None  # this replica's own RecommendPipeline object, built by start()
    topology = Topology.INGRESS

    def start(self, args: AppArgs) -> IngressPipeline:
        from rayrec.serving.graph.deployments import RecommendPipeline

        return IngressPipeline(RecommendPipeline.func_or_class(args))

    async def recommend(self, request: RecommendRequest, generation: int | None = None) -> Any:
        return await self.pipeline.recommend_for(request, generation)

    async def search(self, request: SearchRequest) -> Any:
        return await self.pipeline.search_for(request)

    def _on_scorer(self, method: str) -> Callable[..., Awaitable[Any]]:
        return getattr(self.pipeline, method)

    async def preload(self, generation: int) -> Any:
        return await self.pipeline.preload(generation)

    def model_holders(self) -> list[DeploymentHandle]:
        # Every ingress replica holds a pipeline: the reload broadcasts to the Ingress itself.
        from ray import serve

        context = serve.get_replica_context()
        return [serve.get_deployment_handle(context.deployment, context.app_name)]

    def check_health(self) -> None:
        self.pipeline.check_health()  # the state store of the in-process pipeline
