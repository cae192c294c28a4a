"""Ray Serve's direct ingress: the ingress replica's own HTTP port answers like the proxy does.

``rayrec serve --direct-ingress`` prints these URLs; they skip the proxy hop (the lowest
latency in benchmarks/serving.py). Same routes, same guard, same error answers.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rayrec.serving.config import AppArgs
from rayrec.serving.graph.proxy import DIRECT_INGRESS_ENV, replica_urls
from rayrec.testing import write_toy_model
from rayrec.testing import serve_locally

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("direct")
    # 50,000 items: each answer takes a few ms, so a burst of requests really queues.
    model = write_toy_model(root / "model", num_items=50_000, dim=32, num_users=50)
    args = AppArgs(model_dir=str(model), state=f"sqlite:///{root / 'state.db'}", topology="ingress",
                   limits={"max_body_bytes": 4096},
                   stages={"ingress": {"max_ongoing_requests": 2, "max_queued_requests": 2}})
    with serve_locally(args, cluster_env=DIRECT_INGRESS_ENV) as proxy_url:
        [direct_url] = replica_urls()  # one ingress replica, one port of its own
        assert direct_url != proxy_url
        yield {"proxy": proxy_url, "direct": direct_url}


def test_the_replica_port_answers_like_the_proxy(urls):
    with httpx.Client(timeout=30) as client:
        body = {"user_id": "user3", "k": 5}
        through_proxy = client.post(urls["proxy"] + "/recommend", json=body)
        direct = client.post(urls["direct"] + "/recommend", json=body)
        assert through_proxy.status_code == direct.status_code == 200
        assert direct.json() == through_proxy.json()
        assert client.get(urls["direct"] + "/healthz").json()["status"] == "ok"
        assert "/recommend" in client.get(urls["direct"] + "/openapi.json").json()["paths"]


def test_feedback_through_the_replica_port_changes_the_next_answer(urls):
    with httpx.Client(base_url=urls["direct"], timeout=30) as client:
        body = {"user_id": "direct-user", "k": 5, "recent_items": ["item1", "item2"]}
        top = client.post("/recommend", json=body).json()["items"][0]["item_id"]
        ack = client.post("/feedback", json={"events": [{"user_id": "direct-user", "item_id": top, "event_type": "dislike"}]})
        assert ack.status_code == 200 and ack.json()["accepted"] == 1
        after = [item["item_id"] for item in client.post("/recommend", json=body).json()["items"]]
        assert top not in after


@pytest.mark.parametrize(
    "method, path, kwargs, status, field",
    [
        ("post", "/recommend", {"content": b'{"user_id": "u", "k": '}, 422, "body"),
        ("post", "/recommend", {"json": {"user_id": "u", "k": 0}}, 422, "k"),
        ("post", "/feedback", {"json": {"events": [{"user_id": "u", "item_id": "item1", "event_type": 3}]}}, 422,
         "events[0].event_type"),
        ("get", "/similar-items/no-such-item", {}, 404, "item_id"),
        ("post", "/recommend", {"json": {"user_id": "u" * 5000}}, 413, "body"),
    ],
)
def test_bad_input_through_the_replica_port_gets_the_same_4xx(urls, method, path, kwargs, status, field):
    response = getattr(httpx, method)(urls["direct"] + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["message"].startswith(field), response.json()


def test_overload_on_the_replica_port_is_answered_503_with_retry_after(urls):
    """Without the proxy, the replica itself refuses what exceeds 2 running + 2 queued requests."""

    async def burst() -> list:
        async with httpx.AsyncClient(base_url=urls["direct"], timeout=60) as client:
            return await asyncio.gather(
                # k=1000: each answer takes long enough that a slow client still overlaps them
                *(client.post("/recommend", json={"user_id": f"user{i % 50}", "k": 1000}) for i in range(100)),
                return_exceptions=True,
            )

    responses = asyncio.run(burst())
    assert not [r for r in responses if isinstance(r, Exception)]
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2 and 503 in statuses, statuses
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
