"""A scorer plugin on the real Serve graph, over HTTP: what it ranks by and notes reaches the answer.

The popularity-blend template plugin is registered with the ``register_rayrec_plugin``
fixture, as a plugin author's test would. Ray replicas load installed plugins only, so the
test needs the plugin installed (``pip install -e plugins/rayrec-popularity-blend``).
"""

from __future__ import annotations

import importlib.metadata
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve")
blend = pytest.importorskip("rayrec_popularity_blend")

from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import write_toy_model  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402

if not any(ep.name == "popularity_blend" for ep in importlib.metadata.entry_points(group="rayrec")):
    pytest.skip("Ray replicas load installed plugins: pip install -e plugins/rayrec-popularity-blend",
                allow_module_level=True)


def test_a_scorer_plugin_ranks_by_recency_and_its_notes_reach_the_answer(tmp_path, register_rayrec_plugin):
    register_rayrec_plugin(blend)
    model = write_toy_model(tmp_path / "model", num_items=60, dim=8)
    scorer = {"name": "popularity_blend", "options": {"weight": 0.0, "recency_weight": 5.0, "half_life_hours": 1}}
    # The whole catalogue is the pool: a boost can only lift what the scorer is given.
    args = AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/state.db", scorers=[scorer], rerank_pool=60)
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
