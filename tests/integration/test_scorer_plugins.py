"""Scorers on the real Serve graph, over HTTP: what a plugin ranks by and notes reaches the
answer, and a request can set a configured scorer's options for itself.

The popularity-blend template plugin is registered with the ``register_rayrec_plugin``
fixture, as a plugin author's test would. Ray replicas load installed plugins only, so that
test needs the plugin installed (``pip install -e plugins/rayrec-popularity-blend``).
"""

from __future__ import annotations

import importlib.metadata
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve")

from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import serve_locally, write_toy_model  # noqa: E402


def installed_blend():
    """The popularity-blend plugin, or a skip saying how to install it where the replicas see it."""
    blend = pytest.importorskip("rayrec_popularity_blend")
    if not any(ep.name == "popularity_blend" for ep in importlib.metadata.entry_points(group="rayrec")):
        pytest.skip("Ray replicas load installed plugins: pip install -e plugins/rayrec-popularity-blend")
    return blend


def test_a_scorer_plugin_ranks_by_recency_and_its_notes_reach_the_answer(tmp_path, register_rayrec_plugin):
    register_rayrec_plugin(installed_blend())
    model = write_toy_model(tmp_path / "model", num_items=60, dim=8)
    scorer = {"name": "popularity_blend", "options": {"weight": 0.0, "recency_weight": 5.0, "half_life_hours": 1}}
    # The whole catalogue is the pool: a boost can only lift what the scorer is given.
    args = AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/state.db", scorers=[scorer],
                   retrieval={"rerank_pool": 60})
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        def recommend(k):
            response = client.post("/recommend", json={"recent_items": [], "k": k})
            assert response.status_code == 200, response.text
            return response.json()["items"]

        before = recommend(50)
        assert all("notes" not in item["explanation"] for item in before)  # nothing noted, nothing sent
        assert all(item["rank_score"] == item["score"] for item in before)
        fresh = before[-1]["item_id"]  # far down the list
        response = client.post("/feedback", json={"events": [
            {"user_id": "someone", "item_id": fresh, "timestamp": time.time(), "event_id": "e1"}]})
        assert response.status_code == 200, response.text
        [first, *_] = recommend(5)
        assert first["item_id"] == fresh  # the recency boost, from the state store's last-seen time
        assert first["explanation"]["notes"] == ["recency +5.000"]
        assert first["score"] == before[-1]["score"]  # the retrieval score, not the blended one
        assert first["rank_score"] == pytest.approx(first["score"] + 5.0, abs=1e-3)


def test_a_request_sets_a_scorer_option_for_itself_only_without_a_restart(tmp_path):
    # The toy model's users stay in one category: with no diversity penalty, a list is all one
    # category. Split topology: the options travel from the ingress through the preprocessor
    # to the scorer replica.
    model = write_toy_model(tmp_path / "model", num_items=80, dim=8, num_categories=4)
    args = AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/state.db", topology="split",
                   retrieval={"rerank_pool": 80},
                   scorers=[{"name": "category_diversity", "options": {"penalty": 0.0}}])
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        def categories(**body):
            response = client.post("/recommend", json={"user_id": "user1", "k": 4, "include": ["categories"], **body})
            assert response.status_code == 200, response.text
            return [item["categories"][0] for item in response.json()["items"]]

        alike = categories()
        assert len(set(alike)) == 1
        assert len(set(categories(scorer_options={"category_diversity": {"penalty": 10.0}}))) == 4
        assert categories() == alike  # the next request has the configured options again

        for options, message in [
            ({"category_diversity": {"penalty": -1}},
             "scorer_options.category_diversity.penalty: Input should be greater than or equal to 0"),
            ({"category_diversity": {"lambda_": 0.5}},
             "scorer_options.category_diversity.lambda_: Extra inputs are not permitted"),
            ({"mmr": {"lambda_": 0.5}},
             "scorer_options.mmr: no scorer 'mmr' is configured on this server (configured: category_diversity)"),
        ]:
            refused = client.post("/recommend", json={"user_id": "user1", "scorer_options": options})
            assert refused.status_code == 422 and refused.json()["message"] == message, refused.text
