"""Top-K retrieval: exact search, the FAISS HNSW index and its recall, the no-faiss fallback."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from rayrec.models.ann import hnsw_parameters, scaled_hnsw_parameters
from rayrec.models.new_items import NewItemCalibration
from rayrec.serving.stages import index as index_module
from rayrec.serving.stages.index import ItemIndex


def clustered(n=20_000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim)).astype(np.float32)
    return (centers[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def exact_top(vectors, query, k, allowed):
    scores = np.where(allowed, vectors @ query, -np.inf)
    return np.argsort(-scores, kind="stable")[:k]


def test_exact_search_respects_the_mask_and_orders_by_score():
    vectors = clustered(2000, 16)
    index = ItemIndex([f"i{i}" for i in range(2000)], vectors, exact_max_items=10_000)
    assert index.ann is None
    allowed = index.allowed_mask(["i0", "i1"])
    query = vectors[0]
    rows, scores = index.search(query, 10, allowed)
    assert list(rows) == list(exact_top(vectors, query, 10, allowed))
    assert 0 not in rows and list(scores) == sorted(scores, reverse=True)


def test_upsert_and_delete_change_the_live_rows():
    vectors = clustered(100, 8)
    index = ItemIndex([f"i{i}" for i in range(100)], vectors)
    index.upsert(["new", "i5"], np.stack([vectors[3] * 10, vectors[7] * 10]))
    assert "new" in index and "i5" in index and len(index) == 101  # i5 replaced, not duplicated
    rows, _ = index.search(vectors[3], 1, index.allowed_mask([]))
    assert index.row_ids[rows[0]] == "new"
    index.delete("new")
    assert "new" not in index
    rows, _ = index.search(vectors[3], 101, index.allowed_mask([]))
    assert "new" not in {index.row_ids[r] for r in rows} and len(rows) == 100


def test_without_faiss_large_catalogues_fall_back_to_exact_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(index_module, "faiss_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        index = ItemIndex([f"i{i}" for i in range(500)], clustered(500, 8), exact_max_items=100)
    assert index.ann is None
    assert "faiss is not installed" in caplog.text and "exact search" in caplog.text


def test_hnsw_recall_against_exact_search():
    pytest.importorskip("faiss")
    vectors = clustered(20_000, 32)
    ids = [f"i{i}" for i in range(len(vectors))]
    index = ItemIndex(ids, vectors, exact_max_items=1000, ef_search=128)
    assert index.ann is not None
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, len(vectors), 100)] + 0.1 * rng.normal(size=(100, 32)).astype(np.float32)
    k = 10
    hits = 0
    for query in queries:
        allowed = index.allowed_mask([ids[j] for j in rng.integers(0, len(ids), 20)])
        rows, _ = index.search(query, k, allowed)
        assert allowed[rows].all()
        hits += len(set(rows) & set(exact_top(vectors, query, k, allowed)))
    recall = hits / (k * len(queries))
    assert recall >= 0.95, recall


def test_hnsw_index_follows_catalogue_changes():
    pytest.importorskip("faiss")
    vectors = clustered(3000, 16)
    index = ItemIndex([f"i{i}" for i in range(3000)], vectors, exact_max_items=100)
    index.upsert(["new"], vectors[42] * 5)
    rows, _ = index.search(vectors[42], 3, index.allowed_mask([]))
    assert index.row_ids[rows[0]] == "new"
    index.delete("new")
    rows, _ = index.search(vectors[42], 3, index.allowed_mask([]))
    assert "new" not in {index.row_ids[r] for r in rows}


def long_tailed(n=20_000, dim=32, seed=0):
    """Item vectors whose lengths spread over a long tail, and user-like queries (far longer,
    pointing into the clusters): the case where the inner-product graph is the better one."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim)).astype(np.float32)
    items = centers[rng.integers(0, 64, n)] + 0.7 * rng.normal(size=(n, dim))
    items *= rng.lognormal(mean=-2.0, sigma=0.6, size=(n, 1)) / np.linalg.norm(items, axis=1, keepdims=True)
    queries = 15 * (centers[rng.integers(0, 64, 100)] + 0.5 * rng.normal(size=(100, dim)))
    return items.astype(np.float32), queries.astype(np.float32)


def test_export_keeps_the_graph_kind_that_finds_more_of_its_users_top_10():
    pytest.importorskip("faiss")
    from rayrec.models.ann import CHOICE_MARGIN, HnswParameters, choose_item_graph

    items, queries = long_tailed()
    choice = choose_item_graph(items, queries, HnswParameters(32, 80, 256))
    recalls = choice["sample_recall_at_10"]
    assert set(recalls) == {"inner_product", "l2_lengthened"} and choice["queries"] == 100
    assert recalls["inner_product"] >= 0.95 and choice["metric"] == "inner_product"
    assert (choice["metric"] == "l2_lengthened") == (recalls["l2_lengthened"] >= recalls["inner_product"] + CHOICE_MARGIN)


def test_a_lengthened_item_graph_loads_from_the_model_directory_and_ranks_by_inner_product(tmp_path):
    """The other kind export may save (rayrec.models.ann.LengthenedGraph): an L2 graph over
    vectors lengthened to one norm, loaded by what config.json records, searched with exact
    inner products; items added later are scored beside it."""
    pytest.importorskip("faiss")
    import faiss

    from rayrec.models.ann import LengthenedGraph, read_index

    vectors = clustered(3000, 16)
    graph = LengthenedGraph.build(vectors, 32, 80)
    faiss.write_index(graph.index, str(tmp_path / "item_index.faiss"))
    config = {"item_index": {"file": "item_index.faiss", "kind": "hnsw", "metric": "l2_lengthened",
                             "max_norm": graph.max_norm, "m": 32, "ef_construction": 80, "ef_search": 256, "rows": 3000}}
    loaded = read_index(tmp_path, config, 3000, 32)
    assert isinstance(loaded, LengthenedGraph) and loaded.ntotal == 3000 and loaded.max_norm == graph.max_norm
    with pytest.raises(TypeError, match="scored exactly beside it"):
        loaded.add(vectors[:1])
    index = ItemIndex([f"i{i}" for i in range(3000)], vectors, exact_max_items=100, ann_index=loaded)
    assert index.loaded and index.ann is loaded
    everything = index.allowed_mask([])
    hits = 0
    for query in vectors[:50] * 10:
        rows, scores = index.search(query, 10, everything)
        np.testing.assert_allclose(scores, vectors[rows] @ query, rtol=1e-4)  # inner products, not distances
        hits += len(set(rows) & set(exact_top(vectors, query, 10, everything)))
    assert hits / 500 >= 0.9
    index.upsert(["new"], vectors[42] * 5)  # far longer than any trained item: exact beside the graph
    rows, _ = index.search(vectors[42], 3, index.allowed_mask([]))
    assert index.row_ids[rows[0]] == "new"


def test_new_items_get_calibrated_scores_in_exact_and_hnsw_search_alike():
    pytest.importorskip("faiss")
    vectors = clustered(3000, 16)
    ids = [f"i{i}" for i in range(3000)]
    # Content alone gives a tenth of the full score: raw, a new item would sink below its twin.
    calibration = NewItemCalibration.fit(vectors, 0.1 * vectors)
    twins = [42, 1000, 2500]
    new_ids = [f"new-{t}" for t in twins]
    raw = ItemIndex(ids, vectors)
    exact = ItemIndex(ids, vectors, new_item_calibration=calibration)
    hnsw = ItemIndex(ids, vectors, exact_max_items=100, new_item_calibration=calibration)
    assert hnsw.ann is not None
    for index in (raw, exact, hnsw):
        index.upsert(new_ids, 0.1 * vectors[twins])
    for twin, new_id in zip(twins, new_ids):
        query = vectors[twin]
        allowed = exact.allowed_mask([])
        rows, scores = exact.search(query, 50, allowed)
        found = {exact.row_ids[r]: s for r, s in zip(rows, scores)}
        assert found[new_id] == pytest.approx(found[f"i{twin}"], rel=1e-4)  # the twin's score
        hnsw_rows, hnsw_scores = hnsw.search(query, 50, allowed)
        assert {hnsw.row_ids[r] for r in hnsw_rows} == set(found)
        np.testing.assert_allclose(hnsw_scores, scores, rtol=1e-4)
        np.testing.assert_allclose(exact.row_scores(rows, query), scores, rtol=1e-5)
        raw_rows, _ = raw.search(query, 50, allowed)
        assert new_id not in {raw.row_ids[r] for r in raw_rows}


def test_adding_items_never_copies_the_trained_vectors():
    """PUT /items costs the new rows, not the catalogue: the trained block (a memory-mapped
    model file in serving) stays the same array, and search sees trained and added rows."""
    vectors = clustered(500, 8)
    index = ItemIndex([f"i{i}" for i in range(500)], vectors)
    trained = index.trained_vectors
    for n in range(40):
        index.upsert([f"new{n}"], vectors[n : n + 1] * 3)
    index.upsert(["loud"], vectors[7:8] * 100)
    assert index.trained_vectors is trained and np.shares_memory(trained, vectors)
    rows, _ = index.search(vectors[7], 1, index.allowed_mask([]))
    assert index.row_ids[rows[0]] == "loud"
    assert np.allclose(index.rows_vectors([7, 507]), np.stack([vectors[7], vectors[7] * 3]))
    cosine = index.cosine_to(507)
    assert cosine[507] == pytest.approx(1.0) and cosine[7] == pytest.approx(1.0)


@pytest.mark.skipif(not index_module.faiss_available(), reason="faiss is a test dependency")
def test_an_index_saved_at_export_is_loaded_not_rebuilt(tmp_path, monkeypatch):
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.models import ann
    from rayrec.models.servable import load_model_dir
    from rayrec.serving.graph.model_loading import item_records
    from rayrec.serving.stages.scoring import RetrievalLogic
    from rayrec.state import open_state_store
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    monkeypatch.setattr(ann, "EXPORT_MIN_ITEMS", 50)  # a toy catalogue counts as big here
    monkeypatch.setattr(ann, "SCALE_FROM_ITEMS", 20)  # and two doublings past the scaling's start
    data = generate(SyntheticConfig(num_users=60, num_items=80, num_clusters=3, mean_events_per_user=10))
    model_dir = train_in_process(data, tmp_path / "model", TrainConfig(epochs=1, model={"dim": 8, "max_len": 10}),
                                 log=lambda line: None)
    recorded = load_model_dir(model_dir).config["item_index"]
    assert (model_dir / recorded["file"]).exists() and recorded["rows"] == 80
    assert {key: recorded[key] for key in ("m", "ef_construction", "ef_search")} == {
        "m": 32, "ef_construction": 240, "ef_search": 768}
    assert faiss_read(model_dir / recorded["file"]).hnsw.efConstruction == 240

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the scorer rebuilt the index instead of loading the exported one")

    monkeypatch.setattr(index_module, "build_hnsw_codes", no_rebuild)
    config = json.loads((model_dir / "config.json").read_text())
    config["item_index"]["ef_search"] = 300  # serving must search with what export recorded
    (model_dir / "config.json").write_text(json.dumps(config))
    model = load_model_dir(model_dir)
    store = open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    scorer = RetrievalLogic(model, store, item_records(model, model_dir), exact_search_max_items=50,
                            ann_options={"m": None, "ef_construction": None, "ef_search": None})
    assert scorer.index.ann is not None and scorer.index.ann.ntotal == 80
    assert scorer.index.loaded and scorer.index.ef_search == 300
    configured = RetrievalLogic(model, store, exact_search_max_items=50, ann_options={"ef_search": 64})
    assert configured.index.loaded and configured.index.ef_search == 64
    with pytest.raises(AssertionError, match="rebuilt"):  # another build breadth asked for: rebuilt
        RetrievalLogic(model, store, exact_search_max_items=50, ann_options={"ef_construction": 40})
    query = model.item_embeddings[3]
    rows, _ = scorer.index.search(query, 5, scorer.index.allowed_mask([]))
    exact = exact_top(np.asarray(model.item_embeddings), query, 5, scorer.index.allowed_mask([]))
    assert len(set(rows) & set(exact)) >= 4
    store.close()


def _exported_graph(tmp_path, monkeypatch, vectors):
    from rayrec.models import ann

    monkeypatch.setattr(ann, "EXPORT_MIN_ITEMS", 50)  # a toy catalogue counts as big here
    record = ann.write_index(tmp_path, vectors)
    return ann.read_index(tmp_path, {"item_index": record}, len(vectors), record["m"]), tmp_path / record["file"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc (Linux)")
def test_the_exported_graph_is_mapped_from_the_model_directory_not_copied(tmp_path, monkeypatch):
    """Every scorer replica of a node maps the same file, so the page cache holds one copy of the
    graph and its vectors for all of them."""
    pytest.importorskip("faiss")
    graph, path = _exported_graph(tmp_path, monkeypatch, clustered(n=3000, dim=16))
    assert os.path.realpath(path) in Path("/proc/self/maps").read_text()
    del graph


def test_items_added_beside_a_mapped_graph_are_found_and_the_graph_is_left_as_exported(tmp_path, monkeypatch):
    """FAISS cannot grow a mapped graph (it would abort the process), so an added item is
    scored exactly beside it, and found as if it were in the graph."""
    pytest.importorskip("faiss")
    vectors = clustered(n=3000, dim=16)
    graph, _ = _exported_graph(tmp_path, monkeypatch, vectors)
    index = ItemIndex([f"i{i}" for i in range(len(vectors))], vectors, exact_max_items=1000, ann_index=graph)
    assert index.loaded
    index.upsert(["longer-7"], 3 * vectors[7])  # item 7's direction, longer: the top product for it
    rows, _ = index.search(vectors[7], 5, index.allowed_mask([]))
    assert index.row_ids[rows[0]] == "longer-7"
    rows, _, path = index.similar(7, 3, index.allowed_mask(["i7"]))
    assert path == "hnsw" and index.row_ids[rows[0]] == "longer-7"
    assert graph.ntotal == len(vectors)


def test_a_new_item_with_categories_and_no_text_lands_among_its_kind(tmp_path):
    """The default item tower does not read categories; a new item that has some (and no text)
    gets the mean vector of the trained items sharing them, not the catalogue's mean."""
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.models.servable import load_model_dir
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    data = generate(SyntheticConfig(num_users=80, num_items=60, num_clusters=3, mean_events_per_user=12))
    model_dir = train_in_process(data, tmp_path / "model", TrainConfig(epochs=1, model={"dim": 8, "max_len": 10}),
                                 log=lambda line: None)
    model = load_model_dir(model_dir)
    assert model.network.item_tower.category_embedding is None  # the default tower
    category = next(c for record in model.items for c in record.get("categories") or [])
    members = [model.item_ids.index(str(r["item_id"])) for r in model.items if category in (r.get("categories") or [])]
    [vector] = model.encode_items([{"item_id": "new", "categories": [category]}])
    assert np.allclose(vector, np.asarray(model.item_embeddings)[members].mean(axis=0), atol=1e-5)
    [neutral] = model.encode_items([{"item_id": "other", "categories": ["no-such-category"]}])
    assert np.allclose(neutral, np.asarray(model.item_embeddings).mean(axis=0), atol=1e-5)


def faiss_read(path):
    import faiss

    return faiss.read_index(str(path))


@pytest.mark.parametrize("rows, expected", [
    (1_000, (32, 80, 256)), (250_000, (32, 80, 256)), (250_001, (32, 160, 512)), (500_000, (32, 160, 512)),
    (1_000_000, (32, 240, 768)), (4_000_000, (32, 400, 1280)), (100_000_000, (32, 400, 2048)),
])
def test_hnsw_parameters_scale_with_the_catalogue_up_to_their_caps(rows, expected):
    parameters = scaled_hnsw_parameters(rows)
    assert (parameters.m, parameters.ef_construction, parameters.ef_search) == expected
    assert hnsw_parameters(rows, ef_search=64) == type(parameters)(expected[0], expected[1], 64)  # configured wins


def varied_norms(n=6000, dim=16, seed=0, spread=1.8):
    """Clustered vectors of lengths between 1 and ``spread``: the graph's inner-product order is not cosine's."""
    vectors = clustered(n, dim, seed)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.random.default_rng(seed + 1).uniform(1.0, spread, size=(n, 1)).astype(np.float32)


def exact_similar(vectors, row, k, allowed):
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return exact_top(units, units[row], k, allowed)


def test_similar_items_come_from_the_graph_above_the_threshold_with_exact_recall():
    pytest.importorskip("faiss")
    vectors = varied_norms()
    ids = [f"i{i}" for i in range(len(vectors))]
    index = ItemIndex(ids, vectors, exact_max_items=1000)
    hits = 0
    rows_asked = np.random.default_rng(2).choice(len(ids), 60, replace=False)
    for row in rows_asked:
        allowed = index.allowed_mask([ids[row]])
        rows, scores, path = index.similar(int(row), 10, allowed)
        assert path == "hnsw" and row not in rows and list(scores) == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, index.unit_rows(rows) @ index.unit_rows([row])[0], rtol=1e-5)
        hits += len(set(rows) & set(exact_similar(vectors, row, 10, allowed)))
    assert hits / (10 * len(rows_asked)) >= 0.95


def test_similar_items_are_exact_when_vector_lengths_vary_too_much_for_the_graph():
    """Lengths spread 4x: the inner-product graph's best 160 miss about one in ten of the cosine top 10."""
    pytest.importorskip("faiss")
    vectors = varied_norms(spread=4.0)
    index = ItemIndex([f"i{i}" for i in range(len(vectors))], vectors, exact_max_items=1000)
    assert index.ann is not None and not index.similar_through_graph
    allowed = index.allowed_mask(["i7"])
    rows, _, path = index.similar(7, 10, allowed)
    assert path == "exact" and list(rows) == list(exact_similar(vectors, 7, 10, allowed))
    index.similar_through_graph = True  # what the guard prevents
    recall = np.mean([len(set(index.similar(r, 10, index.allowed_mask([f"i{r}"]))[0])
                          & set(exact_similar(vectors, r, 10, index.allowed_mask([f"i{r}"])))) / 10
                      for r in range(0, 6000, 100)])
    assert recall < 0.95


def test_similar_items_are_exact_below_the_threshold():
    vectors = varied_norms(2000)
    index = ItemIndex([f"i{i}" for i in range(2000)], vectors, exact_max_items=2000)
    allowed = index.allowed_mask(["i7"])
    rows, _, path = index.similar(7, 10, allowed)
    assert path == "exact" and list(rows) == list(exact_similar(vectors, 7, 10, allowed))


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_an_added_item_is_similar_to_its_twin_through_the_graph(kind):
    """A short vector pointing the same way (a new item from content alone) is the nearest by cosine."""
    pytest.importorskip("faiss")
    vectors = varied_norms()
    index = ItemIndex([f"i{i}" for i in range(len(vectors))], vectors, exact_max_items=1000, vector_kind=kind)
    index.upsert(["twin-of-42"], 0.2 * vectors[42])
    rows, _, path = index.similar(42, 5, index.allowed_mask(["i42"]))
    assert path == "hnsw" and index.row_ids[rows[0]] == "twin-of-42"
    rows, _, path = index.similar(index.row_of["twin-of-42"], 5, index.allowed_mask(["twin-of-42"]))
    assert path == "hnsw" and index.row_ids[rows[0]] == "i42"


def test_the_index_reads_the_model_vocabulary_instead_of_copying_every_item_id():
    import tracemalloc

    from rayrec.schema import Vocabulary

    vocabulary = Vocabulary(f"item-{i}" for i in range(200_000))
    vectors = clustered(200_000, 8)
    tracemalloc.start()
    index = ItemIndex(vocabulary, vectors, exact_max_items=1_000_000)
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # A list, dict and set of 200k ids cost ~25 MB; liveness and popularity ~1 MB.
    assert allocated < 4 * 2**20
    assert index.row_ids[123] == "item-123" and index.row_of["item-123"] == 123 and "item-9" in index


def test_a_trained_item_put_again_moves_to_its_new_row_and_the_old_row_is_gone():
    from rayrec.schema import Vocabulary

    vectors = clustered(500, 16)
    index = ItemIndex(Vocabulary(f"i{i}" for i in range(500)), vectors, exact_max_items=10_000)
    index.upsert(["i7", "brand-new"], np.stack([vectors[3] * 5, vectors[4] * 5]))
    assert index.row_of["i7"] == 500 and index.row_of["brand-new"] == 501
    assert index.row_ids[500] == "i7" and index.row_ids[-1] == "brand-new" and len(index.row_ids) == 502
    assert list(index.row_ids)[498:] == ["i498", "i499", "i7", "brand-new"]
    assert len(index) == 501 and "brand-new" in index.row_of and "never" not in index.row_of
    rows, _ = index.search(vectors[3], 3, index.allowed_mask([]))
    assert index.row_ids[rows[0]] == "i7" and 7 not in rows  # its trained row is dead
    index.delete("i7")
    assert "i7" not in index and index.row_of.get("never") is None
