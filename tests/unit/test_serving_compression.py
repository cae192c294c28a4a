"""Compressed item vectors (``retrieval.vectors``: float16, int8, pq): search finds what exact
float32 search finds, dead and excluded rows stay out, added items are found, the float32 file
is not kept resident, and codes saved in the model directory are loaded, not rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from rayrec.models import ann  # noqa: E402
from rayrec.models.new_items import NewItemCalibration  # noqa: E402
from rayrec.serving.stages import index as index_module  # noqa: E402
from rayrec.serving.stages.index import ItemIndex  # noqa: E402

N, DIM = 6000, 32
#: Least mean recall@10 against exact float32 search on the clustered catalogue below (measured:
#: float16 1.0, int8 0.99, pq 1.0 flat, 0.61 without its float32 re-scoring; HNSW over float16 /
#: int8 codes 1.0 / 0.99). A search that mixed up rows, skipped re-scoring or decoded wrongly
#: lands far below.
RECALL_BOUNDS = {
    ("float16", "flat"): 0.98, ("int8", "flat"): 0.95, ("pq", "flat"): 0.9,
    ("float16", "hnsw"): 0.9, ("int8", "hnsw"): 0.9,
}


def clustered(n=N, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim)).astype(np.float32)
    return (centers[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def exact_top(vectors, query, k, allowed):
    scores = np.where(allowed[: len(vectors)], vectors @ query, -np.inf)
    return np.argsort(-scores, kind="stable")[:k]


def make_index(vectors, kind, structure, **kwargs):
    ids = [f"i{i}" for i in range(len(vectors))]
    exact_max_items = 10**9 if structure == "flat" else 100
    return ItemIndex(ids, vectors, exact_max_items=exact_max_items, vector_kind=kind, ef_search=128, **kwargs)


def queries(vectors, count=60, seed=1):
    rng = np.random.default_rng(seed)
    return vectors[rng.integers(0, len(vectors), count)] + 0.2 * rng.normal(size=(count, vectors.shape[1])).astype(np.float32)


@pytest.mark.parametrize("kind,structure", list(RECALL_BOUNDS))
def test_compressed_search_finds_most_of_the_exact_top_10_and_never_a_dead_row(kind, structure):
    vectors = clustered()
    index = make_index(vectors, kind, structure)
    assert index.codes is not None and (index.ann is not None) == (structure == "hnsw")
    rng = np.random.default_rng(2)
    dead = rng.choice(N, 300, replace=False)
    for row in dead:
        index.delete(f"i{row}")
    hits = 0
    for query in queries(vectors):
        excluded = [f"i{j}" for j in rng.integers(0, N, 30)]
        allowed = index.allowed_mask(excluded)
        rows, scores = index.search(query, 10, allowed)
        assert len(rows) == 10 and allowed[rows].all() and not set(rows) & set(dead)
        assert list(scores) == sorted(scores, reverse=True)
        hits += len(set(rows) & set(exact_top(vectors, query, 10, allowed)))
    recall = hits / (10 * 60)
    assert recall >= RECALL_BOUNDS[kind, structure], recall


@pytest.mark.parametrize("kind", ["float16", "int8", "pq"])
def test_a_restrictive_filter_is_answered_completely(kind):
    vectors = clustered()
    index = make_index(vectors, kind, "flat")
    allowed = np.zeros(N, dtype=bool)
    allowed[[5, 50, 500, 5000]] = True  # nothing a top-K scan would reach
    rows, _ = index.search(vectors[0], 10, allowed)
    assert sorted(rows) == [5, 50, 500, 5000]
    index.delete("i50")
    rows, _ = index.search(vectors[0], 10, index.allowed_mask([]) & allowed)
    assert sorted(rows) == [5, 500, 5000]


@pytest.mark.parametrize("kind,structure", [("int8", "flat"), ("pq", "flat"), ("int8", "hnsw")])
def test_added_items_are_found_and_scored_like_exact_search(kind, structure):
    vectors = clustered()
    calibration = NewItemCalibration.fit(vectors, 0.1 * vectors)
    index = make_index(vectors, kind, structure, new_item_calibration=calibration)
    exact = ItemIndex([f"i{i}" for i in range(N)], vectors, exact_max_items=10**9, new_item_calibration=calibration)
    twins = [42, 1000, 2500]
    for each in (index, exact):
        each.upsert([f"new-{t}" for t in twins], 0.1 * vectors[twins])
        each.upsert(["loud"], vectors[7] * 50)
    assert index.row_ids[index.search(vectors[7], 1, index.allowed_mask([]))[0][0]] == "loud"
    for twin in twins:
        allowed = index.allowed_mask(["loud"])
        rows, scores = index.search(vectors[twin], 20, allowed)
        found = dict(zip((index.row_ids[r] for r in rows), scores))
        assert f"new-{twin}" in found  # calibrated onto its twin's scale, so it ranks like it
        expected = exact.row_scores([exact.row_of[f"new-{twin}"]], vectors[twin])[0]
        assert found[f"new-{twin}"] == pytest.approx(expected, rel=1e-5)  # added rows are scored exactly
    index.delete("loud")
    rows, _ = index.search(vectors[7], 50, index.allowed_mask([]))
    assert "loud" not in {index.row_ids[r] for r in rows}


def test_exact_rows_cosines_and_scores_still_work_on_compressed_vectors():
    vectors = clustered()
    index = make_index(vectors, "int8", "flat")
    np.testing.assert_array_equal(index.rows_vectors([3, 9]), vectors[[3, 9]])  # the float32 rows themselves
    unit = index.unit_rows([3])
    assert np.linalg.norm(unit) == pytest.approx(1.0)
    cosine = index.cosine_to(3)
    exact = vectors @ unit[0] / np.linalg.norm(vectors, axis=1)
    assert cosine.shape == (N,) and np.abs(cosine - exact).max() < 0.02
    np.testing.assert_allclose(index.scores(vectors[3]), vectors @ vectors[3], rtol=0.05, atol=0.5)
    assert index.scores_many(vectors[:2]) is None  # each query goes through the codes' own search


def test_codes_take_the_memory_the_kind_promises():
    vectors = clustered()
    float32_bytes = vectors.nbytes
    assert make_index(vectors, "float32", "flat").vector_bytes == float32_bytes
    assert make_index(vectors, "float16", "flat").vector_bytes * 2 == float32_bytes
    assert make_index(vectors, "int8", "flat").vector_bytes * 4 == float32_bytes
    assert make_index(vectors, "pq", "flat").vector_bytes * 16 == float32_bytes  # dim/4 bytes per item


def test_bad_settings_are_refused_in_one_line(monkeypatch):
    vectors = clustered(300)
    with pytest.raises(ValueError, match="retrieval.vectors must be one of float32, float16, int8, pq"):
        ItemIndex([f"i{i}" for i in range(300)], vectors, vector_kind="int4")
    with pytest.raises(ValueError, match="code_bytes=5 must divide the model's dimension 32"):
        ItemIndex([f"i{i}" for i in range(300)], vectors, vector_kind="pq", pq_code_bytes=5)
    monkeypatch.setattr(index_module, "faiss_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"int8 needs faiss \(pip install faiss-cpu\)"):
        ItemIndex([f"i{i}" for i in range(300)], vectors, vector_kind="int8")


def test_the_serve_config_validates_the_vectors_setting(monkeypatch):
    from pydantic import ValidationError

    from rayrec.config import validation_problems
    from rayrec.errors import ConfigError
    from rayrec.serving.config import AppArgs, check_components

    with pytest.raises(ValidationError) as caught:
        AppArgs(model_dir="m", retrieval={"vectors": "int4"})
    assert validation_problems(caught.value) == "retrieval.vectors: Input should be 'float32', 'float16', 'int8' or 'pq'"
    args = AppArgs(model_dir="m", retrieval={"vectors": "int8", "pq": {"rerank": 0}})
    monkeypatch.setattr(ann, "faiss_available", lambda: False)
    with pytest.raises(ConfigError, match=r"serve.yaml: retrieval.vectors: int8 needs faiss \(pip install faiss-cpu\)"):
        check_components(args, where="serve.yaml")


def test_building_codes_from_a_mapped_file_leaves_it_unresident(tmp_path):
    """The point of compression: after start-up (which reads the whole float32 file once to
    encode it) and searches, the replica holds the codes, not the file's pages."""
    smaps = "/proc/self/smaps"
    try:
        open(smaps).close()
    except OSError:
        pytest.skip("needs Linux /proc")
    path = tmp_path / "item_embeddings.npy"
    np.save(path, clustered(40_000, 64))  # 10 MB of float32
    vectors = np.load(path, mmap_mode="r")

    def resident_kb():
        total, inside = 0, False
        for line in open(smaps):
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total

    index = ItemIndex([f"i{i}" for i in range(len(vectors))], vectors, exact_max_items=10**9, vector_kind="int8")
    for query in queries(np.asarray(vectors[:1000]), 20):
        index.search(query, 10, index.allowed_mask([]))
    index.cosine_to(5)
    index.rows_vectors([1, 2, 3])
    assert resident_kb() < 1024, resident_kb()  # of 10 MB: a few pages of rows
    float32 = ItemIndex([f"i{i}" for i in range(len(vectors))], vectors, exact_max_items=10**9)
    float32.search(np.asarray(vectors[0]), 10, float32.allowed_mask([]))
    assert resident_kb() > 9 * 1024  # the same measure sees a float32 scan


def als_model_dir(tmp_path):
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.models.als import ALSParams, fit_als
    from rayrec.training.export_als import export_als_model_dir
    from rayrec.training.prepare import prepare

    data = prepare(generate(SyntheticConfig(num_users=200, num_items=400, num_clusters=4, mean_events_per_user=15)))
    params = ALSParams(factors=16, iterations=4)
    factors = fit_als([s - 1 for s in data.sequences], data.num_items, params, threads=1)
    return export_als_model_dir(data, params, factors, tmp_path / "model")


@pytest.mark.parametrize("vectors,structure,exact_max", [("int8", "flat", 250_000), ("pq", "flat", 250_000),
                                                         ("int8", "hnsw", 100)])
def test_codes_saved_by_rayrec_index_build_are_loaded_not_rebuilt(tmp_path, monkeypatch, vectors, structure,
                                                                  exact_max):
    from click.testing import CliRunner

    from rayrec.cli import cli
    from rayrec.models.servable import load_model_dir
    from rayrec.serving.graph.model_loading import item_records
    from rayrec.serving.stages.scoring import RetrievalLogic
    from rayrec.state import open_state_store

    model_dir = als_model_dir(tmp_path)
    result = CliRunner().invoke(cli, ["index", "build", "--model", str(model_dir), "--vectors", vectors,
                                      "--exact-search-max-items", str(exact_max)])
    assert result.exit_code == 0, result.output
    assert "less than float32" in result.output
    manifest = json.loads((model_dir / ann.MANIFEST_FILE).read_text())
    [record] = manifest.values()
    assert record["structure"] == structure and (model_dir / record["file"]).exists()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the scorer rebuilt the codes instead of loading the saved ones")

    monkeypatch.setattr(index_module, "build_codes", no_rebuild)
    monkeypatch.setattr(index_module, "build_hnsw_codes", no_rebuild)
    model = load_model_dir(model_dir)
    store = open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    scorer = RetrievalLogic(model, store, item_records(model, model_dir), exact_search_max_items=exact_max,
                         vectors=vectors)
    assert scorer.index.codes is not None and scorer.index.codes.rows == len(model.item_ids)
    assert not scorer.index.codes.index.codes.is_owned  # mapped from the file, shared by replicas
    embeddings = np.asarray(model.item_embeddings)
    hits = 0
    for row in range(0, 400, 40):
        rows, _ = scorer.index.search(embeddings[row], 10, scorer.index.allowed_mask([]))
        hits += len(set(rows) & set(exact_top(embeddings, embeddings[row], 10, np.ones(400, bool))))
    assert hits >= 0.8 * 100
    # Mapped codes cannot grow (FAISS would abort the process): an added item is kept beside them.
    scorer.index.upsert(["new"], embeddings[3:4] * 10)
    rows, _ = scorer.index.search(embeddings[3], 1, scorer.index.allowed_mask([]))
    assert scorer.index.row_ids[rows[0]] == "new"
    store.close()

    # A directory retrained in place (another model version) must not serve the old codes.
    config = json.loads((model_dir / "config.json").read_text())
    config["model_version"] = "retrained"
    (model_dir / "config.json").write_text(json.dumps(config))
    retrained = load_model_dir(model_dir)
    assert RetrievalLogic._saved_indexes(retrained, vectors, 32, None, exact_max) == (None, None)


def test_the_readme_compression_config_parses_and_states_the_pq_defaults():
    from pathlib import Path

    import yaml

    from rayrec.serving.config import AppArgs, PQOptions

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("#### Compressed item vectors", 1)[1]
    block = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    args = AppArgs(model_dir="m", **block)
    assert args.retrieval.vectors == "int8"
    assert args.retrieval.pq == PQOptions()  # the values shown are the defaults


@pytest.mark.parametrize("kind", ["float16", "int8", "pq"])
def test_blockwise_products_and_norms_are_those_of_faiss_decoded_rows(kind, monkeypatch):
    from rayrec.serving.stages import codes as codes_module

    monkeypatch.setattr(codes_module, "BLOCK", 1000)  # several blocks and a ragged last one
    vectors = clustered(2500)
    rows = make_index(vectors, kind, "flat").codes
    decoded = rows.index.reconstruct_n(0, rows.rows)  # FAISS's own decoding
    query = queries(vectors, 2)
    np.testing.assert_allclose(rows.decode(rows.codes), decoded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows.products(query), query @ decoded.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(rows.norms(), np.linalg.norm(decoded, axis=1), rtol=1e-4)
    found, _ = rows.search(query[0], 5)
    np.testing.assert_array_equal(found, np.argsort(-(decoded @ query[0]))[:5])
