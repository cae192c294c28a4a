"""Tests for the text_embedding extractor, with the real bundled encoder on a handful of texts.

The model loads once per test process (about ten seconds on a laptop CPU); every test after
the first reuses it, so the whole file stays fast. Each test gets its own cache directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

import rayrec_text
from rayrec import plugins
from rayrec_text import EmbeddingCache, TextEncoder, encode_query, item_text
from rayrec_text.model import resolve_model_dir

ENTRY_POINT_NAME = "text"

JAZZ = {"item_id": "jazz", "title": "Saxophone Nights", "text": "A bebop quartet improvises live at a smoky club.",
        "categories": ["Jazz", "Live"]}
JAZZ_TOO = {"item_id": "jazz2", "title": "Blue Trumpet", "text": "Swing standards played by a brass band.",
            "categories": ["Jazz"]}
BAKING = {"item_id": "bread", "title": "The Sourdough Kitchen", "text": "Recipes for baking crusty bread at home.",
          "categories": ["Cooking"]}
SPACE = {"item_id": "rocket", "title": "To the Moon", "text": "Astronauts ride a rocket into lunar orbit.",
         "categories": ["Science"]}


def entry_point_installed() -> bool:
    return any(ep.name == ENTRY_POINT_NAME for ep in importlib.metadata.entry_points(group="rayrec"))


@pytest.fixture
def encoder(text_plugin, tmp_path) -> TextEncoder:
    # Built through the registry, as training and serving do, with a private cache.
    return plugins.create_component("feature_extractor", "text_embedding", {"cache_dir": str(tmp_path / "cache")})


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_registers_as_a_feature_extractor(text_plugin):
    registry = plugins.registry()
    assert registry.get("feature_extractor", "text_embedding") is TextEncoder
    assert registry.plugin_of("feature_extractor", "text_embedding") == text_plugin


def test_similar_items_land_closer_than_unrelated_ones(encoder):
    jazz, jazz_too, baking, space = encoder.extract([JAZZ, JAZZ_TOO, BAKING, SPACE])
    assert cosine(jazz, jazz_too) > cosine(jazz, baking) + 0.1
    assert cosine(jazz, jazz_too) > cosine(jazz, space) + 0.1
    assert cosine(baking, space) < 0.4


def test_vectors_are_float32_unit_rows_of_the_model_dimension(encoder):
    vectors = encoder.extract([JAZZ, BAKING, {"item_id": "empty"}])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.extract([]).shape == (0, 384)


def test_second_call_is_served_from_the_cache_with_identical_vectors(encoder, tmp_path):
    first = encoder.extract([JAZZ, BAKING, SPACE])
    assert (encoder.last_stats.hits, encoder.last_stats.misses) == (0, 3)
    # A fresh extractor (as a retraining run would build) reads the same cache file.
    again = TextEncoder({"cache_dir": str(tmp_path / "cache")})
    second = again.extract([JAZZ, BAKING, SPACE])
    assert (again.last_stats.hits, again.last_stats.misses) == (3, 0)
    assert again.last_stats.hit_rate == 1.0
    np.testing.assert_array_equal(first, second)


def test_only_changed_items_are_encoded_again(encoder):
    encoder.extract([JAZZ, BAKING])
    edited = {**BAKING, "title": "The Sourdough Kitchen, second edition"}
    encoder.extract([JAZZ, edited, JAZZ])  # the repeated item is encoded (and counted) once
    stats = encoder.last_stats
    assert (stats.texts, stats.unique, stats.hits, stats.misses) == (3, 2, 1, 1)
    assert stats.items_per_second is not None and stats.items_per_second > 0


def test_a_fully_cached_call_never_loads_the_model(encoder, monkeypatch):
    expected = encoder.extract([JAZZ, SPACE])

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although every vector was cached")

    monkeypatch.setattr(rayrec_text.extractor, "load_sentence_model", no_loading)
    np.testing.assert_array_equal(encoder.extract([SPACE, JAZZ]), expected[::-1])


def test_normalize_off_returns_the_raw_vectors_from_the_same_cache(encoder, tmp_path):
    unit = encoder.extract([JAZZ])
    raw_encoder = TextEncoder({"cache_dir": str(tmp_path / "cache"), "normalize": False})
    raw = raw_encoder.extract([JAZZ])
    assert raw_encoder.last_stats.hits == 1  # normalisation happens after the cache
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)


def test_the_loaded_model_is_shared_within_the_process(encoder, tmp_path):
    other = TextEncoder({"cache_dir": None, "batch_size": 8})
    assert other.sentence_model is encoder.sentence_model
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_caching_can_be_switched_off(tmp_path):
    encoder = TextEncoder({"cache_dir": None})
    encoder.extract([JAZZ])
    encoder.extract([JAZZ])
    assert encoder.last_stats.misses == 1
    assert not list(tmp_path.iterdir())


def test_an_unusable_cache_directory_warns_and_still_encodes(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    encoder = TextEncoder({"cache_dir": str(blocker)})
    with pytest.warns(RuntimeWarning, match="cache"):
        vectors = encoder.extract([JAZZ])
    assert vectors.shape == (1, 384)


def test_large_batches_report_progress_and_cache_hits(tmp_path, capsys):
    encoder = TextEncoder({"cache_dir": str(tmp_path), "batch_size": 2})
    encoder.extract([JAZZ, JAZZ_TOO, BAKING])
    encoder.extract([JAZZ, JAZZ_TOO, BAKING])
    err = capsys.readouterr().err
    assert "3 texts, 0 from cache, 3 encoded" in err
    assert "3 texts, 3 from cache, 0 encoded (hit rate 100%)" in err


def test_fields_choose_what_is_encoded():
    assert item_text(JAZZ) == "Saxophone Nights. A bebop quartet improvises live at a smoky club. Jazz, Live"
    assert item_text(JAZZ, ["categories", "title"]) == "Jazz, Live. Saxophone Nights"
    assert item_text({"title": " Heat ", "tags": ["heist", " ", "Al Pacino"]}) == "Heat. heist, Al Pacino"
    assert item_text({"item_id": "x"}) == ""


def test_fields_change_the_vectors(tmp_path):
    titles_only = TextEncoder({"cache_dir": str(tmp_path), "fields": ["title"]})
    everything = TextEncoder({"cache_dir": str(tmp_path)})
    assert cosine(titles_only.extract([JAZZ])[0], everything.extract([JAZZ])[0]) < 0.99


def test_encode_query_shares_the_item_space(encoder):
    items = encoder.extract([JAZZ, BAKING, SPACE])
    cache = EmbeddingCache(encoder.options.cache_dir, encoder.model_key())
    query = encode_query("live jazz saxophone", {"cache_dir": encoder.options.cache_dir})
    assert query.shape == (384,) and query.dtype == np.float32
    assert int(np.argmax(items @ query)) == 0
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-5
    assert cache.count() == 3  # queries stay out of the item cache
    cache.close()


def test_a_local_model_directory_can_be_named(tmp_path):
    bundled = resolve_model_dir("all-MiniLM-L6-v2")
    encoder = TextEncoder({"model": str(bundled), "cache_dir": None})
    assert encoder.model_dir == bundled
    assert encoder.extract([JAZZ]).shape == (1, 384)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model": "/nonexistent/model"}, "never downloaded"),
        ({"model": "sentence-transformers/all-mpnet-base-v2"}, "neither the bundled"),
        ({"fields": ["title", "summary"]}, "fields"),
        ({"fields": []}, "fields"),
        ({"fields": ["title", "title"]}, "repeat title"),
        ({"batch_size": 0}, "batch_size"),
        ({"cache": "/tmp"}, "cache"),
    ],
    ids=["missing-directory", "hub-name", "unknown-field", "no-fields", "repeated-field", "zero-batch",
         "misspelt-option"],
)
def test_bad_options_are_rejected(text_plugin, options, message):
    with pytest.raises(ValidationError, match=message):
        plugins.create_component("feature_extractor", "text_embedding", options)


def test_a_directory_without_a_model_is_rejected(tmp_path):
    with pytest.raises(ValidationError, match="SentenceTransformer.save"):
        TextEncoder({"model": str(tmp_path)})


def test_rayrec_plugins_lists_the_installed_plugin():
    if not entry_point_installed():
        pytest.skip("not installed; run: pip install -e plugins/rayrec-text")
    env = {key: value for key, value in os.environ.items() if key != "RAYREC_LOAD_PLUGINS"}
    result = subprocess.run(
        [sys.executable, "-m", "rayrec", "plugins", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    listing = {row["name"]: row for row in json.loads(result.stdout)}
    assert ENTRY_POINT_NAME in listing, f"plugins listed: {sorted(listing)}"
    row = listing[ENTRY_POINT_NAME]
    assert row["distribution"] == f"rayrec-text {rayrec_text.__version__}"
    components = {(c["kind"], c["name"]): c for c in row["components"]}
    assert set(components) == {("feature_extractor", "text_embedding"), ("encoder", "content_item_tower")}
    options = {option["name"]: option for option in components["feature_extractor", "text_embedding"]["options"]}
    assert options["model"]["default"] == "all-MiniLM-L6-v2"
    assert options["fields"]["default"] == ["title", "text", "categories", "tags"]
