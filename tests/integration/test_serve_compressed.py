"""End to end: a model served with int8 item vectors (``retrieval.vectors: int8``) by the real
Serve graph on a local Ray, over HTTP, with the codes ``rayrec index build`` saved in the model
directory. Answers match exact float32 search for almost every user; deleted items never come
back; an item added through ``PUT /items`` is recommendable and has neighbours."""

from __future__ import annotations

import dataclasses
import json

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
pytest.importorskip("faiss")

from rayrec.data.synthetic import SyntheticConfig, generate, synthetic_truth  # noqa: E402
from rayrec.models.als import ALSParams, fit_als  # noqa: E402
from rayrec.models.ann import MANIFEST_FILE, write_compressed  # noqa: E402
from rayrec.models.servable import load_model_dir  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402
from rayrec.training.export_als import export_als_model_dir  # noqa: E402
from rayrec.training.prepare import prepare  # noqa: E402

DATA = SyntheticConfig(num_users=300, num_items=400, num_clusters=4, mean_events_per_user=20, seed=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-int8")
    data = prepare(generate(DATA))
    rng = np.random.default_rng(1)
    data = dataclasses.replace(data, sequences=[rng.permutation(s) for s in data.sequences])
    params = ALSParams(factors=16, iterations=10)
    factors = fit_als([s - 1 for s in data.sequences], data.num_items, params, threads=1)
    model_dir = export_als_model_dir(data, params, factors, root / "model")
    record = write_compressed(model_dir, np.load(model_dir / "item_embeddings.npy", mmap_mode="r"), "int8")
    assert json.loads((model_dir / MANIFEST_FILE).read_text())["flat-int8"] == record
    args = AppArgs(model_dir=str(model_dir), state=f"sqlite:///{root / 'state.db'}",
                   retrieval={"vectors": "int8"})
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield {"client": client, "model": load_model_dir(model_dir), "truth": synthetic_truth(DATA)}


def recommend(client, **body):
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_the_scorer_holds_the_saved_int8_codes(server):
    health = server["client"].get("/healthz").json()
    dim = server["model"].item_embeddings.shape[1]
    assert health["item_vectors"] == {"kind": "int8", "bytes_per_item": dim, "search": "exact scan",
                                      "from_model_dir": True}


def test_int8_answers_match_exact_float32_search_for_almost_every_user(server):
    client, model = server["client"], server["model"]
    users = list(range(0, 300, 15))
    exact, _ = model.recommend_indices(users, 10)  # float32, the training history excluded
    overlap = []
    for user, expected in zip(users, exact):
        user_id = model.user_vocab.ids[user]
        served = recommend(client, user_id=user_id, k=10)
        assert len(served) == 10 and not set(served) & set(model.training_history(user_id))
        overlap.append(len(set(served) & set(model.item_vocab.decode(expected))) / 10)
    assert np.mean(overlap) >= 0.9, overlap


def test_deleted_items_never_come_back_and_added_ones_are_found(server):
    client, model, truth = server["client"], server["model"], server["truth"]
    user = truth.user_ids[5]
    best = recommend(client, user_id=user, k=3)
    assert client.delete(f"/items/{best[0]}").status_code == 200
    assert best[0] not in recommend(client, user_id=user, k=len(model.item_ids))
    home = truth.user_cluster_of(user)
    category = next(record["categories"][0] for record in model.items if truth.item_cluster_of(str(record["item_id"])) == home)
    added = client.put("/items/int8-new", json={"title": "New", "text": "", "categories": [category]})
    assert added.status_code == 200, added.text
    ranked = recommend(client, user_id=user, k=len(model.item_ids))
    assert "int8-new" in ranked[:len(ranked) // 2]  # scored like its category's items, beside the codes
    similar = client.get("/similar-items/int8-new", params={"k": 10})
    assert similar.status_code == 200, similar.text
    neighbours = [item["item_id"] for item in similar.json()["items"]]
    assert np.mean([truth.item_cluster_of(i) == home for i in neighbours]) >= 0.7
