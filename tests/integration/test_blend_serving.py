"""A blended model (sequential + EASE, as model selection writes it) served by the real graph
over HTTP: answers come from both parts, feedback changes the next answer at once, and a new
item added with categories is recommendable."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve")

from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402


@pytest.fixture(scope="module")
def blended_model_dir(tmp_path_factory):
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.training import selection
    from rayrec.training.config import TrainConfig
    from rayrec.training.ease import train_ease
    from rayrec.training.local import train_prepared_in_process
    from rayrec.training.prepare import prepare

    root = tmp_path_factory.mktemp("blend-serving")
    data = prepare(generate(SyntheticConfig(num_users=120, num_items=80, num_clusters=4, mean_events_per_user=15)))
    work = root / "work"
    train_prepared_in_process(data, work / "sasrec", TrainConfig(epochs=3, model={"dim": 16, "max_len": 20}),
                              log=lambda line: None, shortlists=True)
    train_ease(data, work / "ease", log=lambda line: None)
    row = {"candidate": "sasrec+ease", "val_ndcg@10": 0.5, "val_hr@10": 0.6,
           "details": {"parts": ["sasrec", "ease"], "weight": 2.0}}
    out = root / "model"
    selection._install_blend(work, row, data, out)
    return out


def test_the_shortlists_are_what_validation_scored(blended_model_dir):
    """The shortlists a blend is weighted on come from the model validation chose (before the
    final fit on the validation items), so alone they give its validation NDCG@10."""
    import json

    from rayrec.training.shortlists import Shortlists, shortlist_ndcg

    shortlists = Shortlists.load(blended_model_dir.parent / "work" / "sasrec")
    metrics = json.loads((blended_model_dir / "parts" / "sasrec" / "metrics.json").read_text())
    assert metrics["final_epochs_with_validation_items"] > 0
    assert shortlist_ndcg(shortlists) == pytest.approx(metrics["best_val_ndcg@10"], abs=1e-6)


def test_a_blended_model_serves_feedback_and_new_items_over_http(blended_model_dir, tmp_path):
    from rayrec.models.servable import load_model_dir

    model = load_model_dir(blended_model_dir)
    user = model.user_vocab.ids[0]
    history = model.training_history_indices(0)

    def expected_top(items):
        scores = model.user_vectors([items], [0]) @ model.item_embeddings.T
        scores[0, items] = -np.inf
        return [model.item_ids[i] for i in np.argsort(-scores[0], kind="stable")[:5]]

    args = AppArgs(model_dir=str(blended_model_dir), state=f"sqlite:///{tmp_path}/state.db")
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        def recommend():
            response = client.post("/recommend", json={"user_id": user, "k": 5})
            assert response.status_code == 200, response.text
            return response.json()["items"]

        first = recommend()
        assert [item["item_id"] for item in first] == expected_top(history)  # both parts' scores, summed
        clicked = first[0]["item_id"]
        response = client.post("/feedback", json={"events": [
            {"user_id": user, "item_id": clicked, "timestamp": time.time(), "event_id": "blend-1"}]})
        assert response.status_code == 200, response.text
        # The next answer is the blend's for the history with the click: both parts re-encoded it.
        with_click = np.append(history, model.item_ids.index(clicked))
        assert [item["item_id"] for item in recommend()] == expected_top(with_click)

        response = client.put("/items/brand-new", json={"title": "A new thing", "categories": ["genre-0"]})
        assert response.status_code in (200, 201), response.text
        response = client.post("/recommend", json={"user_id": user, "k": 100})
        assert response.status_code == 200, response.text
        assert "brand-new" in [item["item_id"] for item in response.json()["items"]]
