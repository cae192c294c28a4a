"""End to end: the real Serve graph on a local Ray, over HTTP, with a real SQLite file.

The model is a real two-tower model trained in-process on synthetic data with known clusters,
so the tests can check that answers follow a user's cluster. One Ray + Serve start per
topology (the default: auto, which is ingress here, behind HAProxy as ``rayrec serve`` starts
it; split: five deployments; fused: the three read stages in one; ingress: the ingress replicas
run them), 2 logical CPUs like the target machine; every test runs against each.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from rayrec.data.synthetic import SyntheticConfig, generate, synthetic_truth  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.models.servable import load_model_dir  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402
from rayrec.training.config import TrainConfig  # noqa: E402
from rayrec.training.local import train_in_process  # noqa: E402

DATA = SyntheticConfig(num_users=300, num_items=200, num_clusters=4, mean_events_per_user=20, seed=0)
TRAIN = TrainConfig(epochs=10, eval_every=5, learning_rate=5e-3, model={"dim": 16, "max_len": 20,
                    # categories let a 10-epoch model learn the synthetic topics; this tests serving, not quality
                    "item_encoder_options": {"use_categories": True}})


class Truth:
    """The synthetic ground truth: which cluster every user and item belongs to."""

    def __init__(self, model) -> None:
        truth = synthetic_truth(DATA)
        self.model = model
        self.user_ids = truth.user_ids
        self.item_cluster = {item: int(truth.item_cluster[i]) for i, item in enumerate(truth.item_ids)}
        self.user_cluster = {user: int(truth.user_cluster[u]) for u, user in enumerate(truth.user_ids)}

    def items_of(self, cluster: int) -> list[str]:
        return [item for item in self.model.item_ids if self.item_cluster.get(item) == cluster]

    def share(self, items: list[str], cluster: int) -> float:
        return float(np.mean([self.item_cluster.get(i) == cluster for i in items])) if items else 0.0


def make_models(root):
    """A trained model, and the same model under a second version (for the hot reload)."""
    v1 = train_in_process(generate(DATA), root / "model-v1", TRAIN, log=lambda line: None)
    v2 = root / "model-v2"
    shutil.copytree(v1, v2)
    config = json.loads((v2 / "config.json").read_text())
    config["model_version"] = "reloaded-v2"
    (v2 / "config.json").write_text(json.dumps(config))
    return load_model_dir(v1), v1, v2


#: Two replicas of whatever holds the catalogue: a change made through one must reach the other.
TOPOLOGIES = {
    # The default: topology auto (ingress on this one-node Ray), behind HAProxy like `rayrec serve`.
    "default": {"stages": {"ingress": {"num_replicas": 2, "num_cpus": 0.25}}},
    "split": {"topology": "split", "stages": {"scorer": {"num_replicas": 2, "num_cpus": 0.25}}},
    "fused": {"topology": "fused", "stages": {"pipeline": {"num_replicas": 2, "num_cpus": 0.25}}},
    "ingress": {"topology": "ingress", "stages": {"ingress": {"num_replicas": 2, "num_cpus": 0.25}}},
}


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def server(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("serve")
    model, v1, v2 = make_models(root)
    state = root / "state.db"
    args = AppArgs(model_dir=str(v1), state=f"sqlite:///{state}", **TOPOLOGIES[request.param],
                   limits={"max_feedback_batch": 100})
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield {"client": client, "model": model, "truth": Truth(model), "v1": v1, "v2": v2, "state": state, "url": url,
               "topology": request.param}


def recommend(client, **body):
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def ids(result):
    return [item["item_id"] for item in result["items"]]


def test_openapi_and_health(server):
    client = server["client"]
    schema = client.get("/openapi.json").json()
    for path in ["/recommend", "/feedback", "/similar-items/{item_id}", "/items/{item_id}", "/users/{user_id}", "/admin/reload", "/healthz"]:
        assert path in schema["paths"], path
    assert "RecommendRequest" in schema["components"]["schemas"]
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_known_user_gets_personal_recommendations_with_explanations(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    user = truth.user_ids[3]
    result = recommend(client, user_id=user, k=10)
    assert result["user_id"] == user and result["model_version"] == model.version
    assert len(result["items"]) == 10
    history = model.training_history(user)
    assert truth.share(ids(result), truth.user_cluster[user]) >= 0.7
    assert not set(ids(result)) & set(history)  # already-seen items are filtered
    for item in result["items"]:
        assert item["explanation"]["source"] == "history"
        assert item["explanation"]["because"] and set(item["explanation"]["because"]) <= set(history)
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_and_anonymous_users(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    popular = recommend(client, user_id="never-seen", k=5)
    expected = [model.item_ids[i] for i in np.argsort(-model.item_popularity, kind="stable")[:5]]
    assert [model.item_popularity[model.item_ids.index(i)] for i in ids(popular)] == [
        model.item_popularity[model.item_ids.index(i)] for i in expected
    ]
    assert all(item["explanation"]["source"] == "popular" for item in popular["items"])
    session_items = truth.items_of(2)[:4]
    session = recommend(client, user_id="anonymous-1", k=5, recent_items=session_items)
    assert truth.share(ids(session), 2) >= 0.8
    assert all(item["explanation"]["source"] == "session" for item in session["items"])
    anonymous = recommend(client, k=5, recent_items=session_items)  # no user_id at all
    assert anonymous["user_id"] is None and ids(anonymous) == ids(session)
    assert all(item["explanation"]["source"] == "session" for item in anonymous["items"])


def test_popular_fallback_scores_are_relative_popularity(server):
    client, model = server["client"], server["model"]
    result = recommend(client, user_id="nobody-knows-me", k=5)
    top = float(model.item_popularity.max())
    for item in result["items"]:
        expected = model.item_popularity[model.item_ids.index(item["item_id"])] / top
        assert 0 < item["score"] <= 1 and item["score"] == pytest.approx(expected, rel=1e-5)


def test_include_puts_item_metadata_in_the_answer(server):
    client, truth = server["client"], server["truth"]
    plain = recommend(client, user_id=truth.user_ids[4], k=3)
    assert "title" not in plain["items"][0]  # only when asked for
    rich = recommend(client, user_id=truth.user_ids[4], k=3, include=["title", "categories"])
    for item in rich["items"]:
        metadata = client.get(f"/items/{item['item_id']}").json()
        assert item["title"] == metadata["title"] and item["title"]
        assert item["categories"] == metadata["categories"]
        assert "text" not in item
    bad = client.post("/recommend", json={"user_id": "u", "include": ["price"]})
    assert bad.status_code == 422 and bad.json()["message"].startswith("include[0]")


def test_feedback_takes_iso_8601_timestamps(server):
    client, model = server["client"], server["model"]
    item = model.item_ids[7]
    events = [{"user_id": "iso-user", "item_id": item, "event_type": "click", "timestamp": "2026-12-02T09:30:00Z",
               "event_id": "iso-1"},
              {"user_id": "iso-user", "item_id": item, "event_type": "click", "timestamp": "2026-12-02 09:31:00"}]
    response = client.post("/feedback", json={"events": events})
    assert response.status_code == 200 and response.json()["stored"] == 2
    row = sqlite3.connect(server["state"]).execute(
        "SELECT timestamp FROM events WHERE event_id = 'iso-1'").fetchone()
    assert row[0] == 1796203800  # 2026-12-02T09:30:00Z
    assert recommend(client, user_id="iso-user", k=3)["items"][0]["explanation"]["source"] == "history"


def test_docs_page_needs_no_cdn(server):
    client = server["client"]
    page = client.get("/docs")
    assert page.status_code == 200
    scripts = [part.split('"')[1] for part in page.text.split("src=")[1:]] + \
              [part.split('"')[1] for part in page.text.split("href=")[1:] if ".css" in part.split('"')[1]]
    assert scripts and all(src.startswith("/") for src in scripts), scripts  # served here, not by a CDN
    for src in scripts:
        assert client.get(src).status_code == 200, src


def test_feedback_changes_the_very_next_recommendation(server):
    client, truth = server["client"], server["truth"]
    user = truth.user_ids[1]
    before = recommend(client, user_id=user, k=10)
    other = (truth.user_cluster[user] + 1) % DATA.num_clusters
    new_items = truth.items_of(other)[:8]
    events = [{"user_id": user, "item_id": i, "event_type": "purchase"} for i in new_items]
    response = client.post("/feedback", json={"events": events})
    assert response.status_code == 200 and response.json()["accepted"] == 8
    after = recommend(client, user_id=user, k=10)
    assert ids(after) != ids(before)
    assert truth.share(ids(after), other) >= 0.5
    assert not set(ids(after)) & set(new_items)
    because = {b for item in after["items"] for b in item["explanation"]["because"]}
    assert because & set(new_items)


def test_zero_stale_reads(server):
    """Read-your-writes: every disliked top item is gone from the very next answer."""
    client = server["client"]
    stale = 0
    for trial in range(40):
        top = ids(recommend(client, user_id="fresh-user", k=3, recent_items=[server["model"].item_ids[5]]))[0]
        client.post("/feedback", json={"events": [{"user_id": "fresh-user", "item_id": top, "event_type": "dislike"}]})
        if top in ids(recommend(client, user_id="fresh-user", k=3, recent_items=[server["model"].item_ids[5]])):
            stale += 1
    assert stale == 0


def test_resending_events_is_idempotent(server):
    client = server["client"]
    items = server["model"].item_ids
    events = [{"user_id": "idem", "item_id": items[i], "event_type": "click", "event_id": f"idem-{i}"} for i in range(3)]
    first = client.post("/feedback", json={"events": events}).json()
    again = client.post("/feedback", json={"events": events}).json()
    assert first == {"accepted": 3, "stored": 3, "duplicates": 0}
    assert again == {"accepted": 3, "stored": 0, "duplicates": 3}
    with sqlite3.connect(server["state"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE user_id = 'idem'").fetchone()[0] == 3


def test_disliked_item_is_never_recommended_again(server):
    client, items = server["client"], server["model"].item_ids
    user = server["truth"].user_ids[5]
    top = ids(recommend(client, user_id=user, k=1))[0]
    client.post("/feedback", json={"events": [{"user_id": user, "item_id": top, "event_type": "dislike"}]})
    for _ in range(3):
        assert top not in ids(recommend(client, user_id=user, k=50))
    # it stays excluded after many later events push it out of the recent window
    client.post("/feedback", json={"events": [{"user_id": user, "item_id": items[i]} for i in range(60)]})
    assert top not in ids(recommend(client, user_id=user, k=200))


def test_item_add_is_recommendable_at_once_and_delete_is_final(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    categories = sorted({c for r in model.items for c in r.get("categories", [])})
    response = client.put("/items/brand-new", json={"title": "Brand new", "text": "fresh", "categories": [categories[0], "brand-new-shelf"]})
    assert response.status_code == 200, response.text
    # every scorer replica must know it at once: ask repeatedly, the router spreads requests
    for _ in range(10):
        only = recommend(client, user_id="shelf-browser", k=5, filters={"categories": ["brand-new-shelf"]})
        assert ids(only) == ["brand-new"]
        assert "brand-new" in ids(recommend(client, user_id="x", k=200, filters={"categories": [categories[0]]}))
    similar = client.get("/similar-items/brand-new", params={"k": 5})
    assert similar.status_code == 200 and len(similar.json()["items"]) == 5

    assert client.delete("/items/brand-new").status_code == 200
    for _ in range(10):
        assert ids(recommend(client, user_id="shelf-browser", k=5, filters={"categories": ["brand-new-shelf"]})) == []
        assert "brand-new" not in ids(recommend(client, user_id="x", k=200))
    assert client.get("/similar-items/brand-new").status_code == 404
    assert client.delete("/items/brand-new").status_code == 404
    user = truth.user_ids[2]
    deleted_trained = ids(recommend(client, user_id=user, k=1))[0]
    assert client.delete(f"/items/{deleted_trained}").status_code == 200
    for _ in range(6):
        assert deleted_trained not in ids(recommend(client, user_id=user, k=100))


def test_erased_user_gets_non_personal_results(server):
    client = server["client"]
    user = server["truth"].user_ids[7]
    item = server["model"].item_ids[1]
    client.post("/feedback", json={"events": [{"user_id": user, "item_id": item, "event_type": "like"}]})
    personal = recommend(client, user_id=user, k=5)
    assert personal["items"][0]["explanation"]["source"] == "history"
    erased = client.delete(f"/users/{user}")
    assert erased.status_code == 200 and erased.json() == {"user_id": user, "erased_events": 1}
    after = recommend(client, user_id=user, k=5)
    assert ids(after) == ids(recommend(client, user_id="nobody-at-all", k=5))
    assert all(item["explanation"] == {"because": [], "source": "popular"} for item in after["items"])
    with sqlite3.connect(server["state"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user,)).fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM erased_users WHERE user_id = ?", (user,)).fetchone()[0] == 1


@pytest.mark.parametrize(
    "method, path, body, status, field",
    [
        ("post", "/recommend", "{not json", 422, "body"),
        ("post", "/recommend", {"user_id": "u", "k": 0}, 422, "k"),
        ("post", "/recommend", {"user_id": "u", "k": 1001}, 422, "k"),
        ("post", "/recommend", {"user_id": "u", "k": "10"}, 422, "k"),
        ("post", "/recommend", {"user_id": 42}, 422, "user_id"),
        ("post", "/recommend", {"user_id": ""}, 422, "user_id"),
        ("post", "/recommend", {"user_id": "u", "exclude_items": "item1"}, 422, "exclude_items"),
        ("post", "/recommend", {"user_id": "u", "filters": {"colour": ["red"]}}, 422, "filters.colour"),
        ("post", "/recommend", {"user_id": "u", "kk": 3}, 422, "kk"),
        ("post", "/feedback", {"events": []}, 422, "events"),
        ("post", "/feedback", {"events": [{"user_id": "u", "item_id": "i", "event_type": "teleport"}]}, 422, "events[0].event_type"),
        ("post", "/feedback", {"events": [{"user_id": "u"}]}, 422, "events[0].item_id"),
        ("post", "/feedback", {"events": [{"user_id": "u", "item_id": "i"}] * 101}, 422, "events"),
        ("post", "/feedback", {"events": [{"user_id": "u", "item_id": "i", "timestamp": "yesterday"}]}, 422, "events[0].timestamp"),
        ("get", "/similar-items/no-such-item", None, 404, "item_id"),
        ("get", "/similar-items/i001?k=0", None, 422, "k"),
        ("get", "/similar-items/i001?k=abc", None, 422, "k"),
        ("put", "/items/x1", {"title": "t", "categories": "Drama"}, 422, "categories"),
        ("delete", "/items/no-such-item", None, 404, "item_id"),
        ("post", "/admin/reload", {"model_dir": "/no/such/model"}, 403, "model_dir"),  # outside the model roots
        ("post", "/admin/reload", {"model_dir": "relative/model"}, 422, "model_dir"),
        ("post", "/admin/reload", {}, 422, "model_dir"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server, method, path, body, status, field):
    client = server["client"]
    if isinstance(body, str):
        response = client.request(method, path, content=body, headers={"content-type": "application/json"})
    elif body is None:
        response = client.request(method, path)
    else:
        response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    message = response.json()["message"]
    assert field in message, message


def test_hot_reload_under_load_fails_no_request(server):
    client, url, users = server["client"], server["url"], server["truth"].user_ids
    old_version = server["model"].version
    stop = threading.Event()
    outcomes: list[tuple[int, str]] = []
    lock = threading.Lock()

    def load(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            n = 0
            while not stop.is_set():
                try:
                    r = c.post("/recommend", json={"user_id": users[(worker * 7 + n) % 300], "k": 10})
                    version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                    outcome = (r.status_code, version)
                except httpx.HTTPError as exc:
                    outcome = (0, repr(exc))
                with lock:
                    outcomes.append(outcome)
                n += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 60
        while len(outcomes) < 20 and time.time() < deadline:  # the old model is under load first
            time.sleep(0.1)
        response = client.post("/admin/reload", json={"model_dir": str(server["v2"])})
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "reloaded-v2"
        # Keep the load on until plenty of requests ran after the swap (slow machines need longer).
        after_swap = len(outcomes) + 40
        deadline = time.time() + 120
        while len(outcomes) < max(after_swap, 60) and time.time() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [o for o in outcomes if o[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in outcomes]
    assert old_version in versions and "reloaded-v2" in versions
    switched = versions.index("reloaded-v2")
    assert set(versions[switched + 20 :]) == {"reloaded-v2"}  # after the switch (a few in flight), only v2
    assert recommend(client, user_id=users[1], k=3)["model_version"] == "reloaded-v2"
    assert client.get("/healthz").json()["model_version"] == "reloaded-v2"
    assert len(outcomes) > 50
    print(json.dumps({"requests_during_reload_test": len(outcomes)}))


def test_search_without_a_text_model_says_how_to_turn_it_on(server):
    # The model here has no query-capable item feature and no search extractor is configured.
    response = server["client"].post("/search", json={"query": "space films", "k": 5})
    assert response.status_code == 404
    assert server["client"].get("/healthz").json()["search"] is False
    assert "search is not enabled" in response.json()["message"]
    assert "text_embedding" in response.json()["message"]


def test_replicas_on_a_node_share_one_copy_of_the_item_vectors_and_histories(server):
    """Every replica that scores maps the model's item_embeddings.npy read-only (one copy in
    the node's page cache, whatever the replica count) instead of loading its own."""
    # The GCS's actor table through the connected driver: the public ray.util.state API needs
    # the dashboard (off here) and refuses to pick when other Ray instances run on the machine.
    from ray._private.state import actors

    holders = {"split": "Retriever", "fused": "RecommendPipeline"}
    deployment = holders.get(server["topology"], "Ingress")
    pids = [actor["Pid"] for actor in actors().values()
            if actor["State"] == "ALIVE" and actor["ActorClassName"] == f"ServeReplica:rayrec:{deployment}"]
    assert len(pids) == 2
    # The training histories too (every user's items): mapped, not one array per user per replica.
    for name in ("item_embeddings.npy", "history_items.npy"):
        shared_file = str((server["v1"] / name).resolve())
        for pid in pids:
            with open(f"/proc/{pid}/maps") as maps:
                mapped = [line for line in maps if line.rstrip().endswith(shared_file)]
            assert mapped and all(line.split()[1].startswith("r") and "w" not in line.split()[1] for line in mapped), name
