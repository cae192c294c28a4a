"""End to end: a catalogue above ``retrieval.exact_search_max_items`` (lowered to 100 here) served
by the real Serve graph on a local Ray, over HTTP. The scorer loads the HNSW graph export
saved (with its scaled parameters) instead of building one; ``/similar-items`` and ``/search``
answer through graphs (``retrieval: "hnsw"``) with the exact answers' items; an item added
through ``PUT /items`` is found by both afterwards.

The model is a small two-tower model with cosine similarity (unit item vectors, so the
inner-product graph answers cosine questions too), trained in-process for two epochs; search
uses the rayrec-text sentence encoder when it is installed.
"""

from __future__ import annotations

import importlib.metadata
import json

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
pytest.importorskip("faiss")

from rayrec.data.synthetic import SyntheticConfig, generate  # noqa: E402
from rayrec.models import ann  # noqa: E402
from rayrec.models.servable import load_model_dir  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402
from rayrec.training.config import TrainConfig  # noqa: E402
from rayrec.training.local import train_in_process  # noqa: E402

DATA = SyntheticConfig(num_users=200, num_items=400, num_clusters=4, mean_events_per_user=15, seed=5)
TRAIN = TrainConfig(epochs=2, model={"dim": 16, "max_len": 20, "similarity": "cosine"})
EXACT_MAX_ITEMS = 100
TEXT_PLUGIN = any(ep.name == "text" for ep in importlib.metadata.entry_points(group="rayrec"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-hnsw")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ann, "EXPORT_MIN_ITEMS", EXACT_MAX_ITEMS)  # export writes the graph for ~400 items
        model_dir = train_in_process(generate(DATA), root / "model", TRAIN, log=lambda line: None)
    search = ({"extractor": "text_embedding", "personalization": 0.0,
               "options": {"cache_dir": str(root / "text-cache"), "progress": False}} if TEXT_PLUGIN else {})
    args = AppArgs(model_dir=str(model_dir), state=f"sqlite:///{root / 'state.db'}",
                   retrieval={"exact_search_max_items": EXACT_MAX_ITEMS}, search=search)
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield {"client": client, "model": load_model_dir(model_dir),
               "recorded": json.loads((model_dir / "config.json").read_text())["item_index"]}


def item_ids(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def test_the_scorer_loads_the_exported_graph_with_its_recorded_parameters(server):
    recorded, rows = server["recorded"], len(server["model"].item_ids)
    assert recorded["rows"] == rows and recorded["ef_search"] == ann.scaled_hnsw_parameters(rows).ef_search
    health = server["client"].get("/healthz").json()
    assert health["item_vectors"]["search"] == "hnsw" and health["item_vectors"]["from_model_dir"] is True
    assert health["item_vectors"]["hnsw"] == {"m": recorded["m"], "ef_search": recorded["ef_search"],
                                              "similar_items": True}


def test_similar_items_come_from_the_graph_and_match_exact_cosine(server):
    client, model = server["client"], server["model"]
    vectors = np.asarray(model.item_embeddings)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    overlap = []
    for row in range(0, len(model.item_ids), 40):
        answer = client.get(f"/similar-items/{model.item_ids[row]}", params={"k": 10})
        assert answer.status_code == 200, answer.text
        assert answer.json()["retrieval"] == "hnsw"
        cosine = units @ units[row]
        cosine[row] = -np.inf
        exact = {model.item_ids[r] for r in np.argsort(-cosine, kind="stable")[:10]}
        overlap.append(len(exact & set(item_ids(answer.json()))) / 10)
    assert np.mean(overlap) >= 0.95, overlap


def test_an_item_put_later_is_found_by_similar_items_through_the_graph(server):
    client, model = server["client"], server["model"]
    twin = next(record for record in model.items if record.get("categories"))
    record = {"title": "Telescope handbook for comet watchers", "categories": twin["categories"]}
    put = client.put("/items/hnsw-added", json=record)
    assert put.status_code == 200, put.text
    [added] = model.encode_items([{"item_id": "hnsw-added", **record}])  # what the scorer computed
    units = np.asarray(model.item_embeddings)
    units = units / np.linalg.norm(units, axis=1, keepdims=True)
    cosine = units @ (added / np.linalg.norm(added))
    own = client.get("/similar-items/hnsw-added", params={"k": 5}).json()
    assert own["retrieval"] == "hnsw"
    expected = [model.item_ids[r] for r in np.argsort(-cosine, kind="stable")[:5]]
    assert len(set(item_ids(own)) & set(expected)) >= 4, (item_ids(own), expected)
    # And the other way: it is among its nearest trained item's neighbours.
    back = client.get(f"/similar-items/{expected[0]}", params={"k": 10}).json()
    assert back["retrieval"] == "hnsw" and "hnsw-added" in item_ids(back)


@pytest.mark.skipif(not TEXT_PLUGIN, reason="search needs a query-capable extractor: pip install -e plugins/rayrec-text")
def test_search_goes_through_the_text_graph_and_finds_items_put_later(server):
    client, model = server["client"], server["model"]
    found = []
    for record in model.items[:40:4]:
        answer = client.post("/search", json={"query": record["title"], "k": 5})
        assert answer.status_code == 200, answer.text
        assert answer.json()["retrieval"] == "hnsw"
        found.append(str(record["item_id"]) in item_ids(answer.json()))
    assert np.mean(found) >= 0.9, found
    put = client.put("/items/hnsw-searchable", json={"title": "Violin sonatas by candlelight", "text": "chamber music"})
    assert put.status_code == 200, put.text
    answer = client.post("/search", json={"query": "violin sonatas by candlelight", "k": 3}).json()
    assert answer["retrieval"] == "hnsw" and item_ids(answer)[0] == "hnsw-searchable"
