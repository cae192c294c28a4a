"""Natural-language search in the scoring stage, in-process, with a bag-of-words query extractor.

The extractor is a plugin registered for the test, as a third party would register one; the
real sentence encoder is exercised by the rayrec-text plugin's own search tests.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np
import pytest

from rayrec.components import FeatureExtractor
from rayrec.hookspecs import hookimpl
from rayrec.serving.config import SearchOptions
from rayrec.serving.schemas import ItemIn, PreparedRequest, SearchRequest
from rayrec.serving.stages.errors import NotFoundError
from rayrec.serving.stages.scoring import RetrievalLogic
from rayrec.state import open_state_store

BUCKETS = 256

TITLES = {
    "rocket-1": "Rocket launch to the lunar orbit",
    "rocket-2": "Rocket engines and orbit mechanics",
    "cake-1": "Chocolate cake baking at home",
    "cake-2": "Baking bread and cake for beginners",
    "jazz-1": "Jazz saxophone standards",
    "jazz-2": "Bebop jazz trumpet nights",
}


class BagOfWords(FeatureExtractor):
    """Hashed word counts: texts sharing words are close, like a (much worse) sentence encoder."""

    name = "test-bag-of-words"
    supports_queries = True

    @staticmethod
    def vector(text: str) -> np.ndarray:
        out = np.zeros(BUCKETS, dtype=np.float32)
        for word in re.findall(r"[a-z]+", text.lower()):
            out[zlib.crc32(word.encode()) % BUCKETS] += 1.0
        return out

    def extract(self, records: Sequence[dict]) -> np.ndarray:
        return np.stack([self.vector(f"{r.get('title', '')} {r.get('text', '')}") for r in records])

    def encode_query(self, text: str) -> np.ndarray:
        return self.vector(text)


class BagOfWordsPlugin:
    @staticmethod
    @hookimpl
    def register_feature_extractors(register):
        register(BagOfWords)


class CatalogueModel:
    """Six titled items; item vectors put rockets on axis 0, cakes on 1, jazz on 2, and each
    pair's second item also a little along axis 3 (so a user vector can prefer it)."""

    version = "search-test-1"
    max_history = 5

    def __init__(self) -> None:
        self.item_ids = list(TITLES)
        vectors = np.zeros((len(self.item_ids), 4), dtype=np.float32)
        for row in range(len(self.item_ids)):
            vectors[row, row // 2] = 1.0
            vectors[row, 3] = 0.0 if row % 2 == 0 else 1.0
        self.item_embeddings = vectors
        self.item_popularity = np.ones(len(self.item_ids), dtype=np.float32)

    def item_records(self):
        return {i: {"item_id": i, "title": title, "categories": [i.split("-")[0]]} for i, title in TITLES.items()}

    def training_history(self, user_id: str) -> list[str]:
        return []

    def encode_histories(self, histories):
        vectors = np.stack([self.item_embeddings[list(h)].mean(0) for h in histories])
        return vectors, [np.full(len(h), 1.0 / len(h), dtype=np.float32) for h in histories]

    def encode_items(self, records):
        return np.full((len(records), 4), 0.5, dtype=np.float32)


@pytest.fixture
def scorer(tmp_path, register_rayrec_plugin):
    register_rayrec_plugin(BagOfWordsPlugin, name="test-search-bag-of-words")
    store = open_state_store(str(tmp_path / "state.db"))
    model = CatalogueModel()
    logic = RetrievalLogic(model, store, model.item_records(),
                        search=SearchOptions(extractor="test-bag-of-words", personalization=0.5, pool=6))
    yield logic
    store.close()


def search(logic: RetrievalLogic, query: str, k: int = 3, user_vector=None, prepared=None, **fields) -> list[str]:
    request = SearchRequest(query=query, k=k, **fields)
    result = logic.search(request, logic.encode_query(query), prepared, user_vector)
    return [item["item_id"] for item in result["items"]]


def test_items_whose_text_matches_the_query_come_first(scorer):
    assert set(search(scorer, "rocket orbit", k=2)) == {"rocket-1", "rocket-2"}
    assert set(search(scorer, "how to bake a cake", k=2)) == {"cake-1", "cake-2"}
    assert search(scorer, "saxophone", k=1) == ["jazz-1"]


def test_a_user_vector_reorders_equally_good_matches_toward_the_users_taste(scorer):
    prepared = PreparedRequest(user_id="u", k=2, generation=0, source="history")
    # "rocket orbit" matches both rocket items with two words each; the user decides.
    likes_axis_3 = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)
    likes_axis_0 = np.array([1.0, 0.0, 0.0, -1.0], dtype=np.float32)
    assert search(scorer, "rocket orbit", k=2, user_vector=likes_axis_3, prepared=prepared, user_id="u")[0] == "rocket-2"
    assert search(scorer, "rocket orbit", k=2, user_vector=likes_axis_0, prepared=prepared, user_id="u")[0] == "rocket-1"
    result = scorer.search(SearchRequest(query="rocket orbit", k=2, user_id="u"), scorer.encode_query("rocket orbit"),
                           prepared, likes_axis_3)
    assert {item["explanation"]["source"] for item in result["items"]} == {"search+history"}


def test_without_a_user_the_source_is_search(scorer):
    result = scorer.search(SearchRequest(query="jazz", k=2), scorer.encode_query("jazz"))
    assert [item["explanation"] for item in result["items"]] == [{"because": [], "source": "search"}] * 2
    assert result["model_version"] == "search-test-1" and result["query"] == "jazz"


def test_exclusions_filters_and_deleted_items_are_respected(scorer):
    assert "rocket-1" not in search(scorer, "rocket orbit", exclude_items=["rocket-1"])
    assert set(search(scorer, "rocket orbit cake", k=6, filters={"categories": ["cake"]})) == {"cake-1", "cake-2"}
    scorer.delete_item("rocket-2")
    assert "rocket-2" not in search(scorer, "rocket orbit", k=6)


def test_dislikes_of_the_user_are_not_found_but_seen_items_are(scorer):
    prepared = PreparedRequest(user_id="u", k=3, generation=0, seen={"jazz-1"}, exclude={"jazz-2"}, source="history")
    found = search(scorer, "jazz saxophone trumpet", k=6, prepared=prepared, user_id="u")
    assert "jazz-1" in found and "jazz-2" not in found


def test_new_and_updated_items_are_searchable_at_once(scorer):
    scorer.put_item("telescope-1", ItemIn(title="A telescope for watching comets"))
    assert search(scorer, "comets telescope", k=1) == ["telescope-1"]
    # A trained item with new text is found by that text, and no longer by the old one.
    scorer.put_item("jazz-2", ItemIn(title="Sourdough starter handbook"))
    assert search(scorer, "sourdough starter", k=1) == ["jazz-2"]
    assert "jazz-2" not in search(scorer, "bebop trumpet", k=1)


def test_items_without_any_text_are_never_returned(scorer):
    scorer.put_item("blank-1", ItemIn())
    assert "blank-1" not in search(scorer, "anything at all", k=10)


def test_search_is_off_without_a_query_capable_extractor(tmp_path):
    store = open_state_store(str(tmp_path / "state.db"))
    model = CatalogueModel()
    logic = RetrievalLogic(model, store, model.item_records(), search=SearchOptions())
    with pytest.raises(NotFoundError, match="search is not enabled.*text_embedding"):
        logic.encode_query("rocket")
    store.close()


def test_naming_an_extractor_that_cannot_encode_queries_is_refused(tmp_path, register_rayrec_plugin):
    class TitleLength(FeatureExtractor):
        name = "test-title-length"

        def extract(self, records):
            return np.array([[len(r.get("title", ""))] for r in records], dtype=np.float32)

    class Plugin:
        @staticmethod
        @hookimpl
        def register_feature_extractors(register):
            register(TitleLength)

    register_rayrec_plugin(Plugin, name="test-search-title-length")
    store = open_state_store(str(tmp_path / "state.db"))
    model = CatalogueModel()
    with pytest.raises(ValueError, match="search.extractor.*cannot encode queries"):
        RetrievalLogic(model, store, model.item_records(), search=SearchOptions(extractor="test-title-length"))
    store.close()


@pytest.mark.parametrize("body, field", [
    ({"query": ""}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "x" * 1001}, "query"),
    ({"query": "jazz", "k": 0}, "k"),
    ({"query": "jazz", "k": "3"}, "k"),
    ({"query": "jazz", "user_id": ""}, "user_id"),
    ({"query": "jazz", "colour": "red"}, "colour"),
], ids=["empty", "blank", "too-long", "k-zero", "k-string", "empty-user", "unknown-field"])
def test_bad_search_requests_are_rejected_naming_the_field(body, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        SearchRequest(**body)
    assert any(field in [str(part) for part in error["loc"]] for error in caught.value.errors())


WORDS = [f"w{n}" for n in range(400)]


class WordyCatalogueModel(CatalogueModel):
    """``n`` items titled with four random words of 400 (bag-of-words matches tie often), unit item vectors."""

    def __init__(self, n: int = 3000) -> None:
        rng = np.random.default_rng(7)
        self.titles = {f"item-{i}": " ".join(rng.choice(WORDS, 4, replace=False)) for i in range(n)}
        self.item_ids = list(self.titles)
        vectors = rng.normal(size=(n, 4)).astype(np.float32)
        self.item_embeddings = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.item_popularity = np.ones(n, dtype=np.float32)

    def item_records(self):
        return {i: {"item_id": i, "title": title} for i, title in self.titles.items()}


@pytest.fixture
def wordy(tmp_path, register_rayrec_plugin):
    """The same catalogue searched through the HNSW graph (threshold lowered) and exactly."""
    pytest.importorskip("faiss")
    register_rayrec_plugin(BagOfWordsPlugin, name="test-search-bag-of-words")
    model = WordyCatalogueModel()
    options = SearchOptions(extractor="test-bag-of-words", personalization=0.0)
    stores = [open_state_store(str(tmp_path / f"state-{n}.db")) for n in range(2)]
    graph = RetrievalLogic(model, stores[0], model.item_records(), search=options, exact_search_max_items=500)
    exact = RetrievalLogic(model, stores[1], model.item_records(), search=options)
    yield graph, exact
    for store in stores:
        store.close()


def answer(logic: RetrievalLogic, query: str, k: int = 10) -> dict:
    return logic.search(SearchRequest(query=query, k=k), logic.encode_query(query))


def test_search_above_the_threshold_goes_through_the_graph_with_exact_recall(wordy):
    graph, exact = wordy
    assert graph.text_search.ann is not None and exact.text_search.ann is None
    rng = np.random.default_rng(3)
    found = []
    for _ in range(40):
        query = " ".join(rng.choice(WORDS, 3, replace=False))
        through_graph, scanned = answer(graph, query), answer(exact, query)
        assert through_graph["retrieval"] == "hnsw" and scanned["retrieval"] == "exact"
        # Ties are many: recall counts answers scoring at least the exact 10th best.
        tenth = scanned["items"][-1]["score"]
        found.append(np.mean([item["score"] >= tenth - 1e-6 for item in through_graph["items"]]))
    assert np.mean(found) >= 0.95, found


def test_items_put_after_start_are_found_through_the_graph(wordy):
    graph, _ = wordy
    graph.put_item("telescope-1", ItemIn(title="A telescope for watching comets"))
    result = answer(graph, "comets telescope", k=1)
    assert result["retrieval"] == "hnsw" and [item["item_id"] for item in result["items"]] == ["telescope-1"]
    # A trained item re-described: found by its new text (the graph holds the old), not by the old.
    graph.put_item("item-5", ItemIn(title="Sourdough starter handbook"))
    result = answer(graph, "sourdough starter", k=1)
    assert result["retrieval"] == "hnsw" and result["items"][0]["item_id"] == "item-5"
    before = WordyCatalogueModel().titles["item-5"]
    assert "item-5" not in [item["item_id"] for item in answer(graph, before, k=3)["items"]]


def test_similar_items_report_the_path_that_answered_and_find_items_put_later(wordy):
    graph, exact = wordy
    through_graph, scanned = graph.similar("item-1", 5), exact.similar("item-1", 5)
    assert through_graph["retrieval"] == "hnsw" and scanned["retrieval"] == "exact"
    assert [i["item_id"] for i in through_graph["items"]] == [i["item_id"] for i in scanned["items"]]
    graph.put_item("added-1", ItemIn(title="Anything"))  # the model's vector for new items: (0.5, 0.5, 0.5, 0.5)
    nearest = graph.similar("added-1", 3)
    expected = np.argsort(-(graph.model.item_embeddings @ np.full(4, 0.5, np.float32)), kind="stable")[:3]
    assert nearest["retrieval"] == "hnsw"
    assert [i["item_id"] for i in nearest["items"]] == [f"item-{row}" for row in expected]
    assert "added-1" in [i["item_id"] for i in graph.similar(nearest["items"][0]["item_id"], 3)["items"]]


def test_the_text_graph_saved_at_export_is_loaded_not_rebuilt(tmp_path, register_rayrec_plugin, monkeypatch):
    """Above the exact-search size, ``rayrec train`` saves the text graph beside the model and
    every scorer replica loads it instead of building its own; answers match exact search."""
    pytest.importorskip("faiss")
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.models import ann
    from rayrec.models.servable import load_model_dir
    from rayrec.schema import is_searchable
    from rayrec.serving.graph.model_loading import item_records
    from rayrec.serving.stages import search as search_module
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    register_rayrec_plugin(BagOfWordsPlugin, name="test-search-bag-of-words")
    monkeypatch.setattr(ann, "EXPORT_MIN_ITEMS", 50)  # a toy catalogue counts as big here
    data = generate(SyntheticConfig(num_users=60, num_items=80, num_clusters=3, mean_events_per_user=10))
    config = TrainConfig(epochs=1, model={"dim": 8, "max_len": 10}, item_features=[{"name": "test-bag-of-words"}])
    model_dir = train_in_process(data, tmp_path / "model", config, log=lambda line: None)
    model = load_model_dir(model_dir)
    recorded = model.config["text_index"]
    searchable = [record for record in model.items if is_searchable(record)]
    assert (model_dir / recorded["file"]).is_file() and recorded["rows"] == 80
    assert len(np.load(model_dir / recorded["rows_file"])) == len(searchable) > 0

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the scorer rebuilt the text graph instead of loading the exported one")

    monkeypatch.setattr(search_module, "build_hnsw", no_rebuild)
    stores = [open_state_store(str(tmp_path / f"state-{n}.db")) for n in range(2)]
    records = item_records(model, model_dir)
    graph = RetrievalLogic(model, stores[0], records, search=SearchOptions(personalization=0.0),
                           exact_search_max_items=50)
    exact = RetrievalLogic(model, stores[1], records, search=SearchOptions(personalization=0.0))
    assert graph.text_search.ann is not None and graph.text_search.ann.ntotal == len(searchable)
    for record in searchable[:10]:
        query = record["title"]
        through_graph, scanned = answer(graph, query, k=3), answer(exact, query, k=3)
        assert through_graph["retrieval"] == "hnsw" and scanned["retrieval"] == "exact"
        assert [i["score"] for i in through_graph["items"]] == pytest.approx([i["score"] for i in scanned["items"]])
    # The loaded graph is mapped from its file and cannot grow: an item put now is scored beside it.
    graph.put_item("telescope-1", ItemIn(title="A telescope for watching comets"))
    assert answer(graph, "telescope comets", k=1)["items"][0]["item_id"] == "telescope-1"
    assert graph.text_search.ann.ntotal == len(searchable)
    for store in stores:
        store.close()
