"""The serving stages' logic, in-process and without Ray, against a stand-in model."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pytest

from rayrec.components import Candidate, FeedbackEvent, FeedbackHandler, Scorer, ScoringContext
from rayrec.serving.schemas import ItemIn, RecommendRequest
from rayrec.serving.stages.encode import HistoryEncoderLogic
from rayrec.serving.stages.errors import NotFoundError, RequestError
from rayrec.serving.stages.feedback import FeedbackLogic
from rayrec.serving.stages.generations import ModelSlots
from rayrec.serving.stages.preprocess import PreprocessorLogic
from rayrec.serving.stages.scoring import RetrievalLogic
from rayrec.state import open_state_store

WEIGHTS = {"view": 0.5, "click": 1.0, "purchase": 3.0, "skip": 0.0, "dislike": -1.0}


class StandInModel:
    """The smallest RecommenderModel: random item vectors, mean-pooling user tower.

    Items ``a0..a9`` point along axis 0, ``b0..b9`` along axis 1, ``c0..c9`` along axis 2,
    so a user who clicked ``a`` items must get ``a`` items back.
    """

    version = "stand-in-1"
    max_history = 6

    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.item_ids = [f"{g}{i}" for g in "abc" for i in range(10)]
        vectors = 0.05 * rng.normal(size=(30, dim)).astype(np.float32)
        for g in range(3):
            vectors[g * 10 : (g + 1) * 10, g] += 1.0
        self.item_embeddings = vectors
        self.item_popularity = np.arange(30, 0, -1).astype(np.float32)  # a0 most popular
        self.histories = {"alice": ["a0", "a1"], "bob": ["b0"]}

    def item_records(self):
        names = {"a": "Comedy", "b": "Drama", "c": "Horror"}
        return {i: {"item_id": i, "title": i, "categories": [names[i[0]]]} for i in self.item_ids}

    def training_history(self, user_id: str) -> list[str]:
        return list(self.histories.get(user_id, []))

    def encode_histories(self, histories: Sequence[Sequence[int]]):
        vectors = np.stack([self.item_embeddings[list(h)].mean(0) for h in histories])
        attributions = [np.full(len(h), 1.0 / len(h), dtype=np.float32) for h in histories]
        return vectors, attributions

    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        axis = {"Comedy": 0, "Drama": 1, "Horror": 2}
        out = np.zeros((len(records), self.item_embeddings.shape[1]), dtype=np.float32)
        for m, record in enumerate(records):
            for category in record.get("categories", []):
                if category in axis:
                    out[m, axis[category]] = 2.0  # stronger than any trained item
        return out


@pytest.fixture
def model():
    return StandInModel()


@pytest.fixture
def store(tmp_path):
    s = open_state_store(str(tmp_path / "state.db"))
    yield s
    s.close()


def click(user, item, kind="click", event_id=None):
    return FeedbackEvent(user_id=user, item_id=item, event_type=kind, event_id=event_id)


class Pipeline:
    """The three request stages wired in-process, as the Serve graph wires them."""

    def __init__(self, model, store, **scorer_kwargs):
        self.pre = PreprocessorLogic(model, store, WEIGHTS)
        self.enc = HistoryEncoderLogic(model)
        self.scorer = RetrievalLogic(model, store, model.item_records(), **scorer_kwargs)
        self.feedback = FeedbackLogic(store, WEIGHTS)

    def recommend(self, **request):
        prepared = self.pre.prepare(RecommendRequest(**request))
        [(vector, attribution)] = self.enc.encode([prepared.history_indices])
        return self.scorer.recommend(prepared, vector, attribution)

    def ids(self, **request):
        return [item["item_id"] for item in self.recommend(**request)["items"]]


# -- preprocessor ---------------------------------------------------------------------------
def test_sequence_is_training_history_then_events_weighted(model, store):
    store.append_events([click("alice", "b0", "purchase"), click("alice", "c0", "view"), click("alice", "c1", "skip")])
    prepared = PreprocessorLogic(model, store, WEIGHTS).prepare(RecommendRequest(user_id="alice"))
    # purchase (weight 3) is repeated three times; view (0.5) counts once; skip (0) not at all
    assert prepared.history_ids == ["a0", "a1", "b0", "b0", "b0", "c0"]
    assert prepared.history_indices == [model.item_ids.index(i) for i in prepared.history_ids]
    assert prepared.seen == {"a0", "a1", "b0", "c0", "c1"}
    assert prepared.source == "history"


def test_sequence_keeps_the_most_recent_max_history(model, store):
    store.append_events([click("u", f"c{i}") for i in range(9)])
    prepared = PreprocessorLogic(model, store, WEIGHTS).prepare(RecommendRequest(user_id="u"))
    assert prepared.history_ids == [f"c{i}" for i in range(3, 9)]


def test_dislike_removes_from_sequence_and_excludes(model, store):
    store.append_events([click("alice", "a1", "dislike")], dislike_types={"dislike"})
    prepared = PreprocessorLogic(model, store, WEIGHTS).prepare(
        RecommendRequest(user_id="alice", exclude_items=["c5"])
    )
    assert prepared.history_ids == ["a0"]
    assert prepared.exclude == {"a1", "c5"}


def test_erased_user_loses_training_history(model, store):
    store.erase_user("alice")
    prepared = PreprocessorLogic(model, store, WEIGHTS).prepare(RecommendRequest(user_id="alice"))
    assert prepared.history_ids == [] and prepared.source == "popular" and not prepared.personalized


def test_anonymous_session_and_unknown_items(model, store):
    pre = PreprocessorLogic(model, store, WEIGHTS)
    session = pre.prepare(RecommendRequest(user_id="anon", recent_items=["b1", "nope", "b2"]))
    assert session.history_ids == ["b1", "b2"] and session.source == "session"
    assert pre.prepare(RecommendRequest(user_id="nobody")).source == "popular"


# -- encoder --------------------------------------------------------------------------------
def test_encoder_batches_and_skips_empty_histories(model):
    results = HistoryEncoderLogic(model).encode([[0, 1], [], [10]])
    assert results[1][0] is None and len(results[1][1]) == 0
    np.testing.assert_allclose(results[0][0], model.item_embeddings[[0, 1]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(results[2][0], model.item_embeddings[10], rtol=1e-6)
    assert results[0][1].shape == (2,)


# -- scorer ---------------------------------------------------------------------------------
def test_recommendations_follow_the_history_and_skip_seen(model, store):
    ids = Pipeline(model, store).ids(user_id="alice", k=5)
    assert len(ids) == 5 and all(i.startswith("a") for i in ids)
    assert "a0" not in ids and "a1" not in ids


def test_exact_top_k_matches_brute_force(model, store):
    pipeline = Pipeline(model, store, filter_seen=False)
    result = pipeline.recommend(user_id="bob", k=30)
    user = model.item_embeddings[[10]].mean(0)
    expected = [model.item_ids[i] for i in np.argsort(-(model.item_embeddings @ user), kind="stable")]
    assert [item["item_id"] for item in result["items"]] == expected
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)


def test_feedback_changes_the_next_recommendation(model, store):
    pipeline = Pipeline(model, store)
    assert pipeline.ids(user_id="bob", k=3)[0].startswith("b")
    pipeline.feedback.ingest([click("bob", f"c{i}", "purchase") for i in range(3)])
    ids = pipeline.ids(user_id="bob", k=3)
    assert all(i.startswith("c") for i in ids) and not {"c0", "c1", "c2"} & set(ids)


def test_disliked_and_excluded_items_are_never_recommended(model, store):
    pipeline = Pipeline(model, store)
    pipeline.feedback.ingest([click("alice", "a2", "dislike")])
    ids = pipeline.ids(user_id="alice", k=28, exclude_items=["a3"])
    assert "a2" not in ids and "a3" not in ids
    assert len(ids) == 30 - 4  # everything else: a0, a1 seen, a2 disliked, a3 excluded


def test_attribute_filter_and_unknown_attribute(model, store):
    pipeline = Pipeline(model, store)
    ids = pipeline.ids(user_id="alice", k=5, filters={"categories": ["Horror"]})
    assert ids and all(i.startswith("c") for i in ids)
    assert set(pipeline.ids(user_id="alice", k=30, filters={"categories": "Drama"})) == {f"b{i}" for i in range(10)}
    with pytest.raises(RequestError) as info:
        pipeline.recommend(user_id="alice", filters={"colour": ["red"]})
    assert info.value.field == "filters.colour" and "categories" in info.value.message


def test_unknown_user_gets_popular_items(model, store):
    result = Pipeline(model, store).recommend(user_id="stranger", k=3)
    assert [i["item_id"] for i in result["items"]] == ["a0", "a1", "a2"]
    assert all(i["explanation"] == {"because": [], "source": "popular"} for i in result["items"])
    assert result["model_version"] == "stand-in-1"


def test_explanations_name_the_history_items_that_contributed(model, store):
    store.append_events([click("carol", "a0"), click("carol", "c0")])
    result = Pipeline(model, store).recommend(user_id="carol", k=30)
    by_id = {item["item_id"]: item["explanation"] for item in result["items"]}
    assert by_id["a5"]["because"][0] == "a0" and by_id["c5"]["because"][0] == "c0"
    assert "c0" not in by_id["a5"]["because"]  # orthogonal: contributed nothing
    assert by_id["a5"]["source"] == "history"


class Reverse(Scorer):
    name = "reverse-test"

    def rerank(self, candidates, context):
        assert context.history and context.item_popularity
        return candidates[::-1]


class BringBackSeen(Scorer):
    name = "bring-back-test"

    def rerank(self, candidates, context):
        return [Candidate(item_id="a0", score=1e9)] + candidates


def test_scorers_and_candidate_filters_rerank_the_pool(model, store):
    base = Pipeline(model, store).ids(user_id="alice", k=3)
    reversed_ids = Pipeline(model, store, scorers=[Reverse()]).ids(user_id="alice", k=3)
    assert set(reversed_ids).isdisjoint(base)  # the worst of a larger pool now come first

    def no_a4(candidates: list[Candidate], context: ScoringContext):
        return [c for c in candidates if c.item_id != "a4"]

    ids = Pipeline(model, store, candidate_filters=[no_a4, lambda candidates, context: None]).ids(user_id="alice", k=8)
    assert "a4" not in ids and len(ids) == 8
    assert "a0" not in Pipeline(model, store, scorers=[BringBackSeen()]).ids(user_id="alice", k=5)


class PutLast(Scorer):
    """New form: sends the best candidate to the end and says so, without touching any score."""

    name = "put-last-test"

    def rerank(self, candidates, context):
        best, *others = candidates
        return others + [best.model_copy(update={"explanation": [*best.explanation, "put last"]})]


def test_a_rerank_order_is_final_and_the_model_score_is_reported(model, store):
    base = Pipeline(model, store).recommend(user_id="alice", k=28)["items"]
    model_scores = {item["item_id"]: item["score"] for item in base}
    best = base[0]["item_id"]
    assert "rank_score" not in base[0] and "notes" not in base[0]["explanation"]
    items = Pipeline(model, store, scorers=[PutLast()]).recommend(user_id="alice", k=28)["items"]
    assert [i["item_id"] for i in items] == [i["item_id"] for i in base[1:]] + [best]  # not re-sorted by score
    assert all(i["score"] == model_scores[i["item_id"]] for i in items)
    assert items[-1]["explanation"]["notes"] == ["put last"]
    assert items[-1]["rank_score"] == model_scores[best]  # PutLast left the score as it came


def test_the_old_score_form_still_works_and_warns_once(model, store):
    with pytest.warns(DeprecationWarning, match=r"OldBoost implements Scorer.score\(\).*rename it to rerank") as caught:
        class OldBoost(Scorer):
            name = "old-boost-test"

            def score(self, candidates, context):  # the first form: rayrec sorts by these scores
                return [c.model_copy(update={"score": c.score + (10.0 if c.item_id == "b5" else 0.0)})
                        for c in candidates]
    assert len(caught) == 1
    pipeline = Pipeline(model, store, scorers=[OldBoost()])
    import warnings

    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        items = pipeline.recommend(user_id="alice", k=3)["items"]
        pipeline.recommend(user_id="alice", k=3)
    assert not [w for w in later if issubclass(w.category, DeprecationWarning)]  # once, at class definition
    assert items[0]["item_id"] == "b5"  # sorted by the scores it returned, as before
    assert items[0]["rank_score"] == pytest.approx(items[0]["score"] + 10.0)  # score: the model's


def test_recency_boost_puts_a_freshly_active_item_first(model, store):
    blend_module = pytest.importorskip("rayrec_popularity_blend")
    blend = blend_module.PopularityBlend({"weight": 0.0, "recency_weight": 1.0, "half_life_hours": 1})
    before = Pipeline(model, store, scorers=[blend]).recommend(user_id="alice", k=5)["items"]
    assert before[0]["item_id"] != "a7" and "notes" not in before[0]["explanation"]
    store.append_events([click("someone-else", "a7")])  # a7 is active right now
    after = Pipeline(model, store, scorers=[blend]).recommend(user_id="alice", k=5)["items"]
    assert after[0]["item_id"] == "a7"
    assert after[0]["explanation"]["notes"] == ["recency +1.000"]


def test_scorer_options_of_a_request_apply_to_that_request_only(model, store):
    from rayrec.builtin.scorers import CategoryDiversity

    pipeline = Pipeline(model, store, scorers=[CategoryDiversity({"penalty": 0.0})])

    def categories(**request):
        return [item["item_id"][0] for item in pipeline.recommend(user_id="alice", k=3, **request)["items"]]

    assert categories() == ["a", "a", "a"]  # no penalty: alice's own category
    assert sorted(categories(scorer_options={"category_diversity": {"penalty": 5.0}})) == ["a", "b", "c"]
    assert categories() == ["a", "a", "a"]  # the configured options again
    assert pipeline.scorer.scorers[0].options.penalty == 0.0
    with pytest.raises(RequestError) as error:
        categories(scorer_options={"category_diversity": {"penalty": -1}})
    assert error.value.field == "scorer_options.category_diversity.penalty" and "greater than or equal to 0" in error.value.message


def test_an_experiment_arm_runs_its_own_re_rankers_and_the_others_the_servers(model, store):
    from rayrec.serving.experiments.live import new_record
    from rayrec.serving.experiments.spec import ExperimentSpec

    spec = ExperimentSpec(name="rerank", arms=[
        {"name": "plain", "model_dir": "/m", "share": 0.5},
        {"name": "diverse", "model_dir": "/m", "share": 0.5,
         "scorers": [{"name": "category_diversity", "options": {"penalty": 5.0}}]}])
    store.save_experiment(new_record(spec, {arm: {"generation": 1, "model_dir": "/m"} for arm in ("plain", "diverse")}))
    pipeline = Pipeline(model, store)

    def categories(**request):
        return [item["item_id"][0] for item in pipeline.recommend(user_id="alice", k=3, **request)["items"]]

    assert categories() == ["a", "a", "a"]  # outside the experiment: the server has no scorers
    assert categories(arm="plain") == ["a", "a", "a"]
    assert sorted(categories(arm="diverse")) == ["a", "b", "c"]  # the arm's category_diversity ran
    assert sorted(categories(arm="diverse", scorer_options={"category_diversity": {"penalty": 0.0}})) == ["a", "a", "a"]


@pytest.mark.parametrize("requested, field, message", [
    ({"category_diversity": {"penalti": 1}}, "scorer_options.category_diversity.penalti", "Extra inputs are not permitted"),
    ({"category_diversity": {"penalty": "lots"}}, "scorer_options.category_diversity.penalty", "valid number"),
    ({"mmr": {"lambda_": 0.3}}, "scorer_options.mmr", "no scorer 'mmr' is configured on this server (configured: "
                                                       "category_diversity)"),
])
def test_bad_scorer_options_are_refused_naming_the_scorer_and_the_option(requested, field, message):
    from rayrec.serving.config import ComponentSpec
    from rayrec.serving.stages.scoring import check_scorer_options

    configured = [ComponentSpec(name="category_diversity", options={"penalty": 0.2})]
    check_scorer_options(configured, {"category_diversity": {"penalty": 0.9}})  # valid: no error
    with pytest.raises(RequestError) as error:
        check_scorer_options(configured, requested)
    assert error.value.field == field and message in error.value.message


class CountCandidates(Scorer):
    name = "count-test"
    seen: list[int] = []

    def rerank(self, candidates, context):
        CountCandidates.seen.append(len(candidates))
        assert set(context.item_timestamps) <= {c.item_id for c in candidates}
        return candidates


@pytest.mark.parametrize("k, rerank_pool, expected", [(3, None, 23), (4, None, 24), (3, 7, 7), (5, 2, 5)])
def test_rerank_pool_is_how_many_candidates_a_scorer_sees(model, store, k, rerank_pool, expected):
    store.append_events([click("zoe", "c0")])  # zoe has seen 1 of 30 items: 29 are candidates
    CountCandidates.seen = []
    items = Pipeline(model, store, scorers=[CountCandidates()], rerank_pool=rerank_pool).recommend(user_id="zoe", k=k)
    assert CountCandidates.seen == [expected]  # default: min(max(2k, k + 20), 2000); never fewer than k
    assert len(items["items"]) == k


def test_new_item_is_recommendable_at_once_on_every_replica(model, store):
    replica_1 = Pipeline(model, store)
    replica_2 = Pipeline(model, store)  # another process would see the same store
    replica_1.scorer.put_item("new-horror", ItemIn(title="Fresh", categories=["Horror"]))
    store.append_events([click("dan", "c0")])
    assert replica_2.ids(user_id="dan", k=1) == ["new-horror"]
    assert "new-horror" in replica_2.ids(user_id="dan", k=5, filters={"categories": ["Horror"]})
    replica_1.scorer.delete_item("new-horror")
    assert "new-horror" not in replica_2.ids(user_id="dan", k=30)
    with pytest.raises(NotFoundError):
        replica_2.scorer.delete_item("new-horror")
    with pytest.raises(NotFoundError):
        replica_2.scorer.similar("new-horror", 3)


def test_deleted_trained_item_is_gone_and_can_come_back(model, store):
    pipeline = Pipeline(model, store)
    pipeline.scorer.delete_item("a2")
    assert "a2" not in pipeline.ids(user_id="alice", k=28)
    assert "a2" not in [i["item_id"] for i in pipeline.scorer.similar("a3", 29)["items"]]
    pipeline.scorer.put_item("a2", ItemIn(title="back", categories=["Comedy"]))
    assert "a2" in pipeline.ids(user_id="alice", k=28)


def test_similar_items_by_cosine(model, store):
    result = Pipeline(model, store).scorer.similar("b3", 9)
    ids = [i["item_id"] for i in result["items"]]
    assert set(ids) == {f"b{i}" for i in range(10)} - {"b3"}
    assert result["items"][0]["explanation"] == {"because": ["b3"], "source": "similar"}
    assert -1.0 <= result["items"][-1]["score"] <= result["items"][0]["score"] <= 1.0


# -- feedback -------------------------------------------------------------------------------
class Recorder(FeedbackHandler):
    name = "recorder-test"
    seen: list = []

    def handle(self, events):
        Recorder.seen.extend(events)


class Broken(FeedbackHandler):
    name = "broken-test"

    def handle(self, events):
        raise RuntimeError("boom")


def test_feedback_is_durable_idempotent_and_notifies(store, caplog):
    hooked = []
    Recorder.seen = []
    logic = FeedbackLogic(store, WEIGHTS, handlers=[Broken(), Recorder()], on_ingested=hooked.extend)
    with caplog.at_level(logging.ERROR):
        first = logic.ingest([click("u", "a0", event_id="x1"), click("u", "a1", event_id="x2")])
    assert first == {"accepted": 2, "stored": 2, "duplicates": 0}
    assert "broken-test" in caplog.text  # logged, not raised: the events are already stored
    assert len(Recorder.seen) == 2 and len(hooked) == 2
    again = logic.ingest([click("u", "a0", event_id="x1")])
    assert again == {"accepted": 1, "stored": 0, "duplicates": 1}
    assert store.event_count("u") == 2


def test_feedback_handlers_are_told_which_events_were_new(store):
    hooked = []
    Recorder.seen = []
    logic = FeedbackLogic(store, WEIGHTS, handlers=[Recorder()], on_ingested=hooked.extend)
    logic.ingest([click("u", "a0", event_id="r1")])
    logic.ingest([click("u", "a0", event_id="r1"), click("u", "a1", event_id="r2"), click("u", "a2")])
    assert [(e.item_id, e.new) for e in Recorder.seen] == [("a0", True), ("a0", False), ("a1", True), ("a2", True)]
    assert [e.new for e in hooked] == [True, False, True, True]  # the feedback_ingested hook too


class CountingStore:
    """A third-party store written before AppendResult.new: it reports only counts."""

    def __init__(self, stored, duplicates):
        self.result = (stored, duplicates)

    def append_events(self, events, dislike_types=()):
        from rayrec.state.base import AppendResult

        return AppendResult(*self.result)


@pytest.mark.parametrize("stored, duplicates, expected", [(2, 0, True), (0, 2, False), (1, 1, None)])
def test_new_from_a_store_that_reports_only_counts(stored, duplicates, expected):
    Recorder.seen = []
    FeedbackLogic(CountingStore(stored, duplicates), WEIGHTS, handlers=[Recorder()]).ingest(
        [click("u", "a0"), click("u", "a1")])
    assert [e.new for e in Recorder.seen] == [expected, expected]


@pytest.mark.parametrize(
    "events, field",
    [
        ([click("u", "a0", "teleport")], "events[0].event_type"),
        ([click("u", "a0"), click("", "a0")], "events[1].user_id"),
        ([FeedbackEvent(user_id="u", item_id="a0", timestamp=float("nan"))], "events[0].timestamp"),
        ([], "events"),
        ([click("u", "a0")] * 11, "events"),
    ],
)
def test_feedback_validation_names_the_field(store, events, field):
    with pytest.raises(RequestError) as info:
        FeedbackLogic(store, WEIGHTS, max_batch=10).ingest(events)
    assert info.value.field == field
    assert store.event_count() == 0  # nothing of a rejected batch is stored


def test_erase_user_makes_recommendations_non_personal(model, store):
    pipeline = Pipeline(model, store)
    pipeline.feedback.ingest([click("alice", "c0")])
    assert pipeline.feedback.erase_user("alice") == {"user_id": "alice", "erased_events": 1}
    result = pipeline.recommend(user_id="alice", k=3)
    assert [i["item_id"] for i in result["items"]] == ["a0", "a1", "a2"]  # popular, training history ignored


# -- model generations ----------------------------------------------------------------------
def test_model_slots_load_lazily_and_keep_the_last_two(store):
    built = []

    def build(record):
        built.append(record.generation)
        return f"logic-{record.model_dir}"

    slots = ModelSlots(store, build, keep=2)
    store.ensure_model("/m1")
    assert slots.get() == "logic-/m1"
    g2 = store.stage_model("/m2")
    assert slots.get() == "logic-/m1"  # staged, not live
    slots.load(g2)  # a reload preloads before activating
    store.activate_model(g2)
    assert slots.get() == "logic-/m2" and slots.get(1) == "logic-/m1"
    g3 = store.stage_model("/m3")
    store.activate_model(g3)
    assert slots.get() == "logic-/m3"
    assert slots.loaded() == [g2, g3] and built == [1, g2, g3]


class BoostNew(Scorer):
    """Puts items that were added after training first (a 'freshness' re-ranker)."""

    name = "boost-new-test"

    def rerank(self, candidates, context):
        return sorted(candidates, key=lambda c: not c.item_id.startswith("new"))


def test_candidate_sources_widen_the_pool_the_rerankers_see(model, store):
    from rayrec.builtin.candidate_sources import NewItems

    Pipeline(model, store).scorer.put_item("new-drama", ItemIn(title="Fresh", categories=["Drama"]))
    # alice likes comedies: a drama is far down her list and outside the retrieved pool...
    without_source = Pipeline(model, store, scorers=[BoostNew()]).recommend(user_id="alice", k=3)
    assert "new-drama" not in [i["item_id"] for i in without_source["items"]]
    # ...until the new-items source adds it, and the freshness re-ranker can put it first.
    with_source = Pipeline(model, store, scorers=[BoostNew()], candidate_sources=[NewItems()]).recommend(
        user_id="alice", k=3)
    assert with_source["items"][0]["item_id"] == "new-drama"
    assert with_source["items"][0]["explanation"]["source"] == "new_items"
    # Without a re-ranker the model's own score decides: the drama stays out of alice's top 3.
    plain = Pipeline(model, store, candidate_sources=[NewItems()]).ids(user_id="alice", k=3)
    assert "new-drama" not in plain


class UntrainedItems:
    """A third-party source written against CatalogView's list and set: every catalogue item
    the model was not trained on, with the catalogue's last row first."""

    name = "untrained"

    def candidates(self, context, k):
        catalog = context.catalog
        untrained = set(catalog.item_ids) - catalog.trained_items
        assert catalog.trained_items & {"a0", "zz"} == {"a0"} and len(catalog.trained_items) == 30
        assert catalog.item_ids[:2] == ["a0", "a1"] and catalog.item_ids.index("b0") == 10
        ordered = [item_id for item_id in reversed(catalog.item_ids) if item_id in untrained]
        return [Candidate(item_id=item_id, score=0.0) for item_id in ordered[:k]]


def test_a_candidate_source_reads_the_catalogue_ids_as_a_list_and_the_trained_ones_as_a_set(model, store):
    writer = Pipeline(model, store)
    writer.scorer.put_item("new-drama", ItemIn(title="Fresh", categories=["Drama"]))
    writer.scorer.put_item("a4", ItemIn(title="a4 again", categories=["Comedy"]))  # trained: not "untrained"
    answer = Pipeline(model, store, scorers=[BoostNew()], candidate_sources=[UntrainedItems()]).recommend(
        user_id="alice", k=3)
    assert answer["items"][0]["item_id"] == "new-drama"
    assert answer["items"][0]["explanation"]["source"] == "untrained"


def test_requests_answered_together_get_what_each_would_get_alone(model, store):
    """The pipeline answers requests that queued together in one pass (one user-tower batch,
    one product with the item matrix); each answer must be exactly its own, bad ones included."""
    from rayrec.serving.stages.errors import StageError
    from rayrec.serving.stages.pipeline import PipelineLogic

    alone = Pipeline(model, store)
    together = PipelineLogic(alone.pre, alone.enc, alone.scorer)
    alone.feedback.ingest([click("u-batch", "i3"), click("u-batch", "i9", "purchase")])
    requests = [RecommendRequest(user_id="u0", k=5), RecommendRequest(user_id="stranger", k=4),
                RecommendRequest(user_id="u-batch", k=6, exclude_items=["i4"]),
                RecommendRequest(k=3, recent_items=["i12"]),
                RecommendRequest(user_id="u1", k=3, filters={"colour": "red"})]
    answers = together.recommend_many(requests)
    for request, answer in zip(requests[:4], answers):
        expected = alone.recommend(**request.model_dump())
        assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in expected["items"]]
        assert [i["explanation"] for i in answer["items"]] == [i["explanation"] for i in expected["items"]]
        assert [i["score"] for i in answer["items"]] == pytest.approx([i["score"] for i in expected["items"]], rel=1e-5)
    assert isinstance(answers[4], StageError)  # an unknown attribute: that request alone fails
    with pytest.raises(RequestError):
        alone.recommend(**requests[4].model_dump())
