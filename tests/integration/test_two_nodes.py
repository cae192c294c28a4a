"""Two Ray nodes (two raylets on this machine, ``ray.cluster_utils.Cluster``) sharing the Redis
state store: ``topology: auto`` picks the split graph, every stage has replicas on both nodes,
and read-your-writes holds across them (a dislike written through a feedback replica on one
node is honoured by the next read, whichever node's preprocessor serves it)."""

from __future__ import annotations

import uuid

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ray.cluster_utils import Cluster  # noqa: E402

from rayrec.serving.app import build_app  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import write_toy_model  # noqa: E402
from rayrec.testing import RedisServer, free_port, redis_unavailable  # noqa: E402

pytestmark = [pytest.mark.integration]

#: The deployments that must run on both nodes, two replicas each.
SPREAD = ("Preprocessor", "HistoryEncoder", "Retriever", "FeedbackIngestor")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("two-nodes")
    redis = RedisServer(root).start()
    model = write_toy_model(root / "model", num_items=300, dim=16)
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    nodes.add_node(num_cpus=2)
    try:
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        two = {"num_replicas": 2, "num_cpus": 0.25}
        args = AppArgs(model_dir=str(model), state=f"{redis.url}?prefix=two-nodes-{uuid.uuid4().hex[:8]}:",
                       stages={"preprocessor": two, "user_encoder": two, "scorer": two,
                               "feedback": {"num_replicas": 2, "num_cpus": 0.125}})
        serve.run(build_app(args), name="rayrec", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()
        redis.stop()


def replica_nodes() -> dict[str, set[str]]:
    """Deployment name -> the node ids its live replicas run on (the GCS's actor table through
    the connected driver; the public state API needs the dashboard, which is off here)."""
    from ray._private.state import actors

    nodes: dict[str, set[str]] = {}
    for actor in actors().values():
        name = actor["ActorClassName"]
        if actor["State"] == "ALIVE" and name.startswith("ServeReplica:rayrec:"):
            nodes.setdefault(name.rsplit(":", 1)[1], set()).add(actor["Address"]["NodeID"])
    return nodes


def test_auto_picks_the_split_graph_with_replicas_on_both_nodes(cluster):
    deployments = set(serve.status().applications["rayrec"].deployments)
    assert {"Ingress", *SPREAD} <= deployments  # auto on two nodes: a deployment per stage
    placed = replica_nodes()
    for name in SPREAD:
        assert len(placed[name]) == 2, (name, placed)


def test_read_your_writes_across_nodes(cluster):
    stale = 0
    for trial in range(100):
        user = f"cross-node-{trial % 10}"
        body = {"user_id": user, "k": 5, "recent_items": ["item3", "item4"]}
        top = cluster.post("/recommend", json=body).json()["items"][0]["item_id"]
        event = {"user_id": user, "item_id": top, "event_type": "dislike", "event_id": f"cross-{trial}"}
        assert cluster.post("/feedback", json={"events": [event]}).status_code == 200
        after = [item["item_id"] for item in cluster.post("/recommend", json=body).json()["items"]]
        stale += top in after
    assert stale == 0
