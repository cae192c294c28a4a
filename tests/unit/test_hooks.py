"""Every hook in rayrec.hookspecs, tested the way a plugin author meets it.

Each hook has a test named ``test_hook_<hook name>`` (tests/unit/test_docs.py checks that), and
the registry's error contract (wrong base class, duplicate name, unknown name, misspelt hook)
follows. Plugins here are small classes registered with the ``register_rayrec_plugin`` fixture,
which rayrec installs as a pytest plugin; no Ray and no torch are involved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pluggy
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrec import plugins
from rayrec.components import (
    COMPONENT_KINDS,
    Candidate,
    CandidateSource,
    Component,
    FeatureExtractor,
    FeedbackEvent,
    FeedbackHandler,
    DataSource,
    ItemEncoder,
    Scorer,
    ScoringContext,
    UserEncoder,
)
from rayrec.errors import PluginError, UnknownComponentError
from rayrec.hookspecs import hookimpl
from rayrec.schema import Dataset, Interactions
from rayrec.state import BaseStateStore, open_state_store


def assert_registered(kind: str, cls: type, plugin_name: str, good: dict[str, Any], bad: dict[str, Any]):
    """``cls`` is in the registry under ``kind`` only, from ``plugin_name``; options are validated.

    Returns the component built with ``good`` options; ``bad`` options must fail validation
    with an error naming the offending option.
    """
    registry = plugins.registry()
    assert cls.name in registry.names(kind)
    assert registry.get(kind, cls.name) is cls
    assert registry.plugin_of(kind, cls.name) == plugin_name
    assert [other for other in COMPONENT_KINDS if other != kind and cls.name in registry.names(other)] == []

    component = plugins.create_component(kind, cls.name, good)
    assert isinstance(component, cls)
    for option, value in good.items():
        assert getattr(component.options, option) == value
    [bad_option] = bad
    with pytest.raises(ValidationError, match=bad_option):
        plugins.create_component(kind, cls.name, bad)
    return component


# -- registration hooks --------------------------------------------------------------------


class HashingExtractor(FeatureExtractor):
    name = "test-hooks-hashing"
    description = "Bag of hashed title words."
    target = "item"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dim: int = Field(8, ge=1)

    def extract(self, records):
        out = np.zeros((len(records), self.options.dim), dtype=np.float32)
        for row, record in enumerate(records):
            for word in record.get("title", "").split():
                out[row, sum(map(ord, word)) % self.options.dim] += 1.0
        return out


class FeatureExtractorPlugin:
    @hookimpl
    def register_feature_extractors(register):
        register(HashingExtractor)


def test_hook_register_feature_extractors(register_rayrec_plugin):
    plugin = register_rayrec_plugin(FeatureExtractorPlugin, name="test-hooks-extractors")
    extractor = assert_registered("feature_extractor", HashingExtractor, plugin, {"dim": 4}, {"dim": 0})
    vectors = extractor.extract([{"title": "jazz club"}, {"title": ""}])
    assert vectors.shape == (2, 4) and vectors.dtype == np.float32
    assert vectors[0].sum() == 2 and vectors[1].sum() == 0


class LastItemEncoder(UserEncoder):
    name = "test-hooks-last-item"
    description = "The most recent item's vector."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = Field(1.0, gt=0)

    def build(self, **dims):  # pragma: no cover - building needs torch; not exercised here
        raise NotImplementedError


class ConstantItemEncoder(ItemEncoder):
    name = "test-hooks-constant-items"


class EncoderPlugin:
    @hookimpl
    def register_encoders(register):
        register(LastItemEncoder)
        register(ConstantItemEncoder)


def test_hook_register_encoders(register_rayrec_plugin):
    plugin = register_rayrec_plugin(EncoderPlugin, name="test-hooks-encoders")
    assert_registered("encoder", LastItemEncoder, plugin, {"scale": 2.0}, {"scale": -1})
    # User and item towers share the kind "encoder"; the class's own ``kind`` tells them apart.
    assert plugins.get_component("encoder", "test-hooks-last-item").kind == "user"
    assert plugins.get_component("encoder", "test-hooks-constant-items").kind == "item"
    # Components without options reject any option rather than silently ignoring it.
    with pytest.raises(ValidationError, match="typo"):
        plugins.create_component("encoder", "test-hooks-constant-items", {"typo": 1})
    # The built-in towers come through the very same hook.
    assert {"sasrec", "gru", "mean", "item_tower"} <= set(plugins.registry().names("encoder"))


class ReverseScorer(Scorer):
    name = "test-hooks-reverse"
    description = "Ranks the retrieved candidates backwards."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        offset: float = Field(0.0, ge=0)

    def rerank(self, candidates, context):
        return [c.model_copy(update={"score": self.options.offset - c.score}) for c in reversed(candidates)]


class ScorerPlugin:
    @hookimpl
    def register_scorers(register):
        register(ReverseScorer)


def test_hook_register_scorers(register_rayrec_plugin):
    plugin = register_rayrec_plugin(ScorerPlugin, name="test-hooks-scorers")
    scorer = assert_registered("scorer", ReverseScorer, plugin, {"offset": 1.0}, {"ofset": 1.0})
    ranked = scorer.rerank([Candidate(item_id="a", score=0.9), Candidate(item_id="b", score=0.1)], ScoringContext())
    assert [(c.item_id, c.score) for c in ranked] == [("b", pytest.approx(0.9)), ("a", pytest.approx(0.1))]


class PopularSource(CandidateSource):
    name = "test-hooks-popular"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        boost: float = Field(0.5, ge=0, le=1)

    def candidates(self, context, k):
        ranked = sorted(context.item_popularity, key=lambda item: -context.item_popularity[item])
        return [Candidate(item_id=item, score=self.options.boost) for item in ranked[:k]]


class CandidateSourcePlugin:
    @hookimpl
    def register_candidate_sources(register):
        register(PopularSource)


def test_hook_register_candidate_sources(register_rayrec_plugin):
    plugin = register_rayrec_plugin(CandidateSourcePlugin, name="test-hooks-sources")
    source = assert_registered("candidate_source", PopularSource, plugin, {"boost": 0.25}, {"boost": 2})
    context = ScoringContext(item_popularity={"x": 1.0, "y": 5.0, "z": 3.0})
    assert [(c.item_id, c.score) for c in source.candidates(context, k=2)] == [("y", 0.25), ("z", 0.25)]


class RecordingHandler(FeedbackHandler):
    name = "test-hooks-recording"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_events: int = Field(100, ge=1)

    def __init__(self, options=None):
        super().__init__(options)
        self.seen: list[FeedbackEvent] = []

    def handle(self, events):
        self.seen.extend(events[: self.options.max_events])


class FeedbackHandlerPlugin:
    @hookimpl
    def register_feedback_handlers(register):
        register(RecordingHandler)


def test_hook_register_feedback_handlers(register_rayrec_plugin):
    plugin = register_rayrec_plugin(FeedbackHandlerPlugin, name="test-hooks-handlers")
    handler = assert_registered("feedback_handler", RecordingHandler, plugin, {"max_events": 1}, {"max_events": 0})
    handler.handle([FeedbackEvent(user_id="u", item_id="i1"), FeedbackEvent(user_id="u", item_id="i2")])
    assert [event.item_id for event in handler.seen] == ["i1"]


class TinySource(DataSource):
    """Loads ``tiny:N``: user u<k> clicked items i0..i<N-1> in order."""

    name = "test-hooks-tiny"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        users: int = Field(2, ge=1)

    def can_load(self, path):
        return path.startswith("tiny:")

    def load(self, path):
        items = int(path.removeprefix("tiny:"))
        users = self.options.users
        return Dataset(
            name="tiny",
            interactions=Interactions(
                user_id=np.array([f"u{u}" for u in range(users) for _ in range(items)], dtype=object),
                item_id=np.array([f"i{i}" for _ in range(users) for i in range(items)], dtype=object),
                timestamp=np.arange(users * items, dtype=np.int64),
            ),
        )


class DataSourcePlugin:
    @hookimpl
    def register_data_sources(register):
        register(TinySource)


def test_hook_register_data_sources(register_rayrec_plugin):
    from rayrec.data import load_dataset

    plugin = register_rayrec_plugin(DataSourcePlugin, name="test-hooks-data")
    assert_registered("data_source", TinySource, plugin, {"users": 3}, {"users": 0})
    # What a user sees: `rayrec train --interactions tiny:4` picks the plugin's source by its path.
    dataset = load_dataset("tiny:4", options={"users": 3})
    assert dataset.name == "tiny"
    assert len(dataset.interactions) == 12
    assert list(dataset.interactions.item_id[:4]) == ["i0", "i1", "i2", "i3"]


class MemoryStore(BaseStateStore):
    name = "test-hooks-memory"
    schemes = ("test-hooks-mem",)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: str
        recent_limit: int = Field(500, ge=1)


class StateStorePlugin:
    @hookimpl
    def register_state_stores(register):
        register(MemoryStore)


def test_hook_register_state_stores(register_rayrec_plugin):
    plugin = register_rayrec_plugin(StateStorePlugin, name="test-hooks-stores")
    assert_registered("state_store", MemoryStore, plugin, {"url": "test-hooks-memory://", "recent_limit": 5},
                      {"recent_limit": 0})
    # The URL scheme selects the store: its name, or one of its extra ``schemes``.
    store = open_state_store("test-hooks-memory://cache-1")
    assert isinstance(store, MemoryStore) and store.options.url == "test-hooks-memory://cache-1"
    assert isinstance(open_state_store("test-hooks-mem://cache-2", recent_limit=7), MemoryStore)
    with pytest.raises(UnknownComponentError, match="test-hooks-memory"):
        open_state_store("nosuchstore://x")  # the error lists the available stores


class HalfAStore(Component):
    """A component with a state store's name but not its interface."""

    name = "test-hooks-half-a-store"


class HalfAStorePlugin:
    @hookimpl
    def register_state_stores(register):
        register(HalfAStore)


def test_a_state_store_must_implement_the_one_interface(register_rayrec_plugin):
    register_rayrec_plugin(HalfAStorePlugin, name="test-hooks-half-store")
    with pytest.raises(PluginError, match=r"HalfAStore.*does not inherit from rayrec\.state\.BaseStateStore"):
        plugins.registry()


def test_the_old_state_store_name_is_the_interface_with_a_warning():
    import rayrec.components

    with pytest.warns(DeprecationWarning, match="rayrec.state.BaseStateStore"):
        old = rayrec.components.StateStore
    assert old is BaseStateStore


# -- lifecycle hooks -----------------------------------------------------------------------

BANNED = {"banned-1", "banned-2"}


class BanFilter:
    @hookimpl
    def filter_candidates(candidates, context):
        return [c for c in candidates if c.item_id not in BANNED]


class KeepAllFilter:
    @hookimpl
    def filter_candidates(candidates, context):
        return None  # "keep all": pluggy leaves None results out of the result list


def test_hook_filter_candidates(register_rayrec_plugin):
    register_rayrec_plugin(BanFilter, name="test-hooks-ban-filter")
    register_rayrec_plugin(KeepAllFilter, name="test-hooks-keep-all-filter")
    candidates = [Candidate(item_id=item, score=1.0) for item in ("a", "banned-1", "b", "banned-2")]
    results = plugins.pm.hook.filter_candidates(candidates=candidates, context=ScoringContext(user_id="u1"))
    assert [c.item_id for c in BanFilter.filter_candidates(candidates, None)] == ["a", "b"]
    assert [[c.item_id for c in kept] for kept in results if kept is not None].count(["a", "b"]) == 1
    assert None not in results
    implementers = {plugins.pm.get_name(impl.plugin) for impl in plugins.pm.hook.filter_candidates.get_hookimpls()}
    assert {"test-hooks-ban-filter", "test-hooks-keep-all-filter"} <= implementers


class FeedbackRecorder:
    batches: list[list[FeedbackEvent]] = []

    @hookimpl
    def feedback_ingested(events):
        FeedbackRecorder.batches.append(list(events))


def test_hook_feedback_ingested(register_rayrec_plugin):
    FeedbackRecorder.batches = []
    register_rayrec_plugin(FeedbackRecorder, name="test-hooks-feedback-recorder")
    events = [FeedbackEvent(user_id="u1", item_id="i1", event_type="like", event_id="e-1")]
    assert plugins.pm.hook.feedback_ingested(events=events) == []  # implementations return None
    assert FeedbackRecorder.batches == [events]


class EpochRecorder:
    calls: list[tuple[int, dict]] = []

    @hookimpl
    def training_epoch_end(epoch, metrics):
        EpochRecorder.calls.append((epoch, dict(metrics)))
        return metrics.get("loss")


def test_hook_training_epoch_end(register_rayrec_plugin):
    EpochRecorder.calls = []
    register_rayrec_plugin(EpochRecorder, name="test-hooks-epoch-recorder")
    results = plugins.pm.hook.training_epoch_end(epoch=3, metrics={"loss": 0.5, "NDCG@10": 0.2})
    assert EpochRecorder.calls == [(3, {"loss": 0.5, "NDCG@10": 0.2})]
    assert 0.5 in results


# -- the registry's error contract ---------------------------------------------------------


class NotAScorer(CandidateSource):
    name = "test-hooks-not-a-scorer"


class WrongBasePlugin:
    @hookimpl
    def register_scorers(register):
        register(NotAScorer)


def test_a_component_of_the_wrong_base_class_names_the_base_to_inherit(register_rayrec_plugin):
    register_rayrec_plugin(WrongBasePlugin, name="test-hooks-wrong-base")
    with pytest.raises(PluginError) as error:
        plugins.registry()
    message = str(error.value)
    assert "rayrec.components.Scorer" in message
    assert "test-hooks-wrong-base" in message and "NotAScorer" in message


class NamelessScorer(Scorer):
    pass


class NamelessPlugin:
    @hookimpl
    def register_scorers(register):
        register(NamelessScorer)


def test_a_component_without_a_name_is_refused(register_rayrec_plugin):
    register_rayrec_plugin(NamelessPlugin, name="test-hooks-nameless")
    with pytest.raises(PluginError, match="NamelessScorer without a name"):
        plugins.registry()


class DuplicateA:
    @hookimpl
    def register_scorers(register):
        register(type("ClashA", (ReverseScorer,), {"name": "test-hooks-clash"}))


class DuplicateB:
    @hookimpl
    def register_scorers(register):
        register(type("ClashB", (ReverseScorer,), {"name": "test-hooks-clash"}))


def test_a_duplicate_name_names_both_plugins(register_rayrec_plugin):
    register_rayrec_plugin(DuplicateA, name="test-hooks-dup-a")
    register_rayrec_plugin(DuplicateB, name="test-hooks-dup-b")
    with pytest.raises(PluginError) as error:
        plugins.registry()
    message = str(error.value)
    assert "'test-hooks-clash'" in message
    assert "test-hooks-dup-a" in message and "test-hooks-dup-b" in message


class ShadowsBuiltin:
    @hookimpl
    def register_scorers(register):
        register(type("MyDiversity", (ReverseScorer,), {"name": "category_diversity"}))


def test_a_name_clashing_with_a_built_in_names_the_built_in_plugin(register_rayrec_plugin):
    register_rayrec_plugin(ShadowsBuiltin, name="test-hooks-shadow")
    with pytest.raises(PluginError, match="rayrec.builtin.scorers.*test-hooks-shadow"):
        plugins.registry()


def test_an_unknown_name_lists_the_available_ones(register_rayrec_plugin):
    register_rayrec_plugin(ScorerPlugin, name="test-hooks-scorers")
    with pytest.raises(UnknownComponentError) as error:
        plugins.create_component("scorer", "test-hooks-revers")
    message = str(error.value)
    assert "unknown scorer 'test-hooks-revers'" in message
    assert "category_diversity" in message and "test-hooks-reverse" in message
    with pytest.raises(UnknownComponentError, match="available: .*sasrec"):
        plugins.get_component("encoder", "transformer")


class MisspeltHook:
    @hookimpl
    def register_scorer(register):  # the hook is register_scorers
        register(ReverseScorer)


class WrongArgument:
    @hookimpl
    def register_scorers(registry):  # the argument is called register
        registry(ReverseScorer)


def test_a_misspelt_hook_fails_loudly_and_leaves_nothing_registered(register_rayrec_plugin):
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'register_scorer'"):
        register_rayrec_plugin(MisspeltHook, name="test-hooks-typo")
    assert plugins.pm.get_plugin("test-hooks-typo") is None
    assert not plugins.pm.is_registered(MisspeltHook)
    with pytest.raises(pluggy.PluginValidationError, match="registry"):
        register_rayrec_plugin(WrongArgument, name="test-hooks-wrong-argument")
    assert plugins.pm.get_plugin("test-hooks-wrong-argument") is None
    # Nothing half-registered breaks the registry for everyone else.
    assert "category_diversity" in plugins.registry().names("scorer")
    plugins.pm.check_pending()


# -- the register_rayrec_plugin fixture ----------------------------------------------------


class CleanupPlugin:
    @hookimpl
    def register_scorers(register):
        register(type("CleanupScorer", (ReverseScorer,), {"name": "test-hooks-cleanup"}))


def test_the_fixture_registers_a_plugin_for_this_test(register_rayrec_plugin):
    name = register_rayrec_plugin(CleanupPlugin, name="test-hooks-cleanup-plugin")
    assert name == "test-hooks-cleanup-plugin"
    assert plugins.pm.get_plugin(name) is CleanupPlugin
    assert "test-hooks-cleanup" in plugins.registry().names("scorer")


def test_the_fixture_unregistered_it_after_that_test():
    # Runs after the test above (pytest keeps file order): its plugin must be gone.
    assert plugins.pm.get_plugin("test-hooks-cleanup-plugin") is None
    assert not plugins.pm.is_registered(CleanupPlugin)
    assert "test-hooks-cleanup" not in plugins.registry().names("scorer")


def test_the_fixture_unregisters_even_when_the_test_fails(tmp_path):
    (tmp_path / "test_fixture_cleanup.py").write_text(textwrap.dedent('''
        from rayrec import plugins
        from rayrec.components import Scorer
        from rayrec.hookspecs import hookimpl

        class Doomed(Scorer):
            name = "doomed-scorer"

        class DoomedPlugin:
            @hookimpl
            def register_scorers(register):
                register(Doomed)

        def test_fails_after_registering(register_rayrec_plugin):
            register_rayrec_plugin(DoomedPlugin, name="doomed")
            assert "doomed-scorer" in plugins.registry().names("scorer")
            raise RuntimeError("the test fails")

        def test_nothing_left_behind():
            assert plugins.pm.get_plugin("doomed") is None
            assert "doomed-scorer" not in plugins.registry().names("scorer")
    '''))
    env = {**os.environ, "RAYREC_LOAD_PLUGINS": ""}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fixture_cleanup.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert "RuntimeError: the test fails" in result.stdout
