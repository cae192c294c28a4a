"""End to end: an ALS model directory served by the real Serve graph on a local Ray, over HTTP,
and an EASE one switched in by ``/admin/reload``.

The models are fitted on synthetic data whose per-user order is shuffled, so only which items
a user has carries signal. Serving makes each request's user vector from its current history,
so feedback must move the very next answer toward what the user just did, with no retraining.
"""

from __future__ import annotations

import dataclasses

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from rayrec.data.synthetic import SyntheticConfig, generate, synthetic_truth  # noqa: E402
from rayrec.evaluation.baselines import EASEBaseline  # noqa: E402
from rayrec.models.als import ALSParams, fit_als  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.models.servable import load_model_dir  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402
from rayrec.training.export_als import export_als_model_dir  # noqa: E402
from rayrec.training.export_ease import export_ease_model_dir  # noqa: E402
from rayrec.training.prepare import prepare  # noqa: E402

DATA = SyntheticConfig(num_users=300, num_items=200, num_clusters=4, mean_events_per_user=20, seed=0)
PARAMS = ALSParams(factors=16, iterations=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-als")
    data = prepare(generate(DATA))
    rng = np.random.default_rng(1)
    data = dataclasses.replace(data, sequences=[rng.permutation(s) for s in data.sequences])
    factors = fit_als([s - 1 for s in data.sequences], data.num_items, PARAMS, threads=1)
    model_dir = export_als_model_dir(data, PARAMS, factors, root / "model")
    truth = synthetic_truth(DATA)
    args = AppArgs(model_dir=str(model_dir), state=f"sqlite:///{root / 'state.db'}")
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield {"client": client, "model": load_model_dir(model_dir), "truth": truth, "data": data, "root": root}


def recommend(client, **body):
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def ids(result):
    return [item["item_id"] for item in result["items"]]


def share(truth, items, cluster):
    return float(np.mean([truth.item_cluster_of(item) == cluster for item in items]))


def test_a_known_user_gets_their_cluster_with_explanations(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    user = truth.user_ids[3]
    result = recommend(client, user_id=user, k=10)
    assert result["model_version"] == model.version and len(result["items"]) == 10
    history = model.training_history(user)
    assert share(truth, ids(result), truth.user_cluster_of(user)) >= 0.7
    assert not set(ids(result)) & set(history)
    for item in result["items"]:
        assert item["explanation"]["source"] == "history"
        assert item["explanation"]["because"] and set(item["explanation"]["because"]) <= set(history)


def test_feedback_moves_the_very_next_answer_toward_what_the_user_did(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    user = truth.user_ids[1]
    home = truth.user_cluster_of(user)
    other = (home + 1) % DATA.num_clusters
    before = recommend(client, user_id=user, k=10)
    assert share(truth, ids(before), other) <= 0.2
    clicked = [item for item in model.item_ids if truth.item_cluster_of(item) == other][:8]
    events = [{"user_id": user, "item_id": item, "event_type": "purchase"} for item in clicked]
    response = client.post("/feedback", json={"events": events})
    assert response.status_code == 200 and response.json()["accepted"] == 8
    after = recommend(client, user_id=user, k=10)
    assert share(truth, ids(after), other) >= 0.5
    assert not set(ids(after)) & set(clicked)
    because = {b for item in after["items"] if truth.item_cluster_of(item["item_id"]) == other
               for b in item["explanation"]["because"]}
    assert because and because <= set(clicked)  # the new cluster's items are explained by the new events


def test_an_anonymous_session_and_a_new_item_in_a_known_category(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    session = [item for item in model.item_ids if truth.item_cluster_of(item) == 2][:4]
    result = recommend(client, user_id="anonymous-als", k=5, recent_items=session)
    assert share(truth, ids(result), 2) >= 0.8
    assert all(item["explanation"]["source"] == "session" for item in result["items"])
    category = model.items[model.item_ids.index(session[0])]["categories"][0]
    added = client.put("/items/als-new", json={"title": "New", "text": "", "categories": [category]})
    assert added.status_code == 200, added.text
    ranked = ids(recommend(client, user_id="anonymous-als", k=200, recent_items=session))
    # scored like its category's items: among the session's cluster (50 items), where a
    # newcomer without categories (the mean item vector) would not be
    assert "als-new" in ranked[:40]


def test_an_ease_model_switched_in_answers_from_the_current_history(server):
    """Swaps the served model, and the ALS one back at the end for the tests around it."""
    client, truth, data, root = server["client"], server["truth"], server["data"], server["root"]
    ease = EASEBaseline(l2=50.0).fit([s - 1 for s in data.sequences], data.num_items)
    ease_dir = export_ease_model_dir(data, 50.0, ease.item_weights(), root / "ease")
    model = load_model_dir(ease_dir)
    reloaded = client.post("/admin/reload", json={"model_dir": str(ease_dir)})
    assert reloaded.status_code == 200, reloaded.text
    try:
        user = truth.user_ids[5]
        home = truth.user_cluster_of(user)
        other = (home + 2) % DATA.num_clusters
        trained = set(model.item_ids)  # items added by other tests here have no cluster

        def trained_ids(result):
            return [item for item in ids(result) if item in trained]

        before = recommend(client, user_id=user, k=10)
        assert before["model_version"] == model.version
        assert share(truth, trained_ids(before), home) >= 0.7 and share(truth, trained_ids(before), other) <= 0.2
        # EASE counts an item once however it was consumed, so it takes a few more clicks than ALS
        clicked = [item for item in model.item_ids if truth.item_cluster_of(item) == other][:12]
        events = [{"user_id": user, "item_id": item, "event_type": "purchase"} for item in clicked]
        assert client.post("/feedback", json={"events": events}).json()["accepted"] == 12
        after = recommend(client, user_id=user, k=10)
        assert share(truth, trained_ids(after), other) >= 0.4 and not set(ids(after)) & set(clicked)
        because = {b for item in after["items"] if item["item_id"] in trained
                   and truth.item_cluster_of(item["item_id"]) == other for b in item["explanation"]["because"]}
        assert because and because <= set(clicked)
    finally:
        back = client.post("/admin/reload", json={"model_dir": str(server["model"].model_dir)})
        assert back.status_code == 200, back.text
