"""Tests for the popularity_blend scorer, written the way a plugin author would.

The plugin may reach rayrec two ways in one test process: through its entry point (once the
package is pip-installed) or through the ``register_rayrec_plugin`` fixture. The fixture
takes both cases: it registers the module for one test, or hands back the entry point's name
when it is already loaded. A separate test re-runs the fixture path in a subprocess with
entry-point loading switched off, so both routes are covered whether installed or not.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import rayrec_popularity_blend
from rayrec import plugins
from rayrec.components import Candidate, ScoringContext
from rayrec_popularity_blend import PopularityBlend

ENTRY_POINT_NAME = "popularity_blend"
HOUR = 3600.0


def entry_point_installed() -> bool:
    return any(ep.name == ENTRY_POINT_NAME for ep in importlib.metadata.entry_points(group="rayrec"))


@pytest.fixture
def blend_plugin(register_rayrec_plugin) -> str:
    """The plugin's name in rayrec's plugin manager (registered for this test if not installed)."""
    return register_rayrec_plugin(rayrec_popularity_blend)


def test_registers_as_a_scorer(blend_plugin):
    registry = plugins.registry()
    assert "popularity_blend" in registry.names("scorer")
    assert registry.get("scorer", "popularity_blend") is PopularityBlend
    assert registry.plugin_of("scorer", "popularity_blend") == blend_plugin


def test_the_fixture_route_works_when_the_package_is_installed():
    if not entry_point_installed():
        pytest.skip("not installed: test_registers_as_a_scorer already took the fixture route")
    # Same test, in a process where rayrec loads no installed plugin, so the fixture registers it.
    env = {**os.environ, "RAYREC_LOAD_PLUGINS": ""}
    node = f"{Path(__file__)}::test_registers_as_a_scorer"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def make_blend(options: dict) -> PopularityBlend:
    # Built through the registry, as the scoring stage does, with options validated there.
    return plugins.create_component("scorer", "popularity_blend", options)


CANDIDATES = [
    Candidate(item_id="niche", score=1.00),
    Candidate(item_id="blockbuster", score=0.95),
]
CONTEXT = ScoringContext(user_id="u1", item_popularity={"niche": 0.0, "blockbuster": 1000.0}, now=1_000_000.0)


def test_weight_zero_keeps_the_retrieval_order(blend_plugin):
    ranked = make_blend({"weight": 0.0}).rerank(CANDIDATES, CONTEXT)
    assert [c.item_id for c in ranked] == ["niche", "blockbuster"]
    assert [c.score for c in ranked] == [1.00, 0.95]


def test_a_popular_item_overtakes_a_slightly_better_scored_unpopular_one(blend_plugin):
    ranked = make_blend({"weight": 0.01}).rerank(CANDIDATES, CONTEXT)
    # blockbuster: 0.95 + 0.01 * log(1 + 1000) = 0.95 + 0.0691 = 1.0191 > niche: 1.00 + 0
    assert [c.item_id for c in ranked] == ["blockbuster", "niche"]
    assert ranked[0].score == pytest.approx(1.0191, abs=1e-4)
    assert ranked[0].explanation == ["popularity +0.069"]
    assert ranked[1].explanation == []  # no boost, no claim of one


def test_recency_boost_halves_every_half_life(blend_plugin):
    context = ScoringContext(
        item_timestamps={"fresh": 1_000_000.0 - 24 * HOUR, "stale": 1_000_000.0 - 72 * HOUR},
        now=1_000_000.0,
    )
    candidates = [Candidate(item_id=item, score=0.0) for item in ("stale", "fresh", "unknown")]
    ranked = make_blend({"weight": 0.0, "recency_weight": 1.0, "half_life_hours": 24}).rerank(candidates, context)
    # One half-life old: 0.5; three: 0.125; no timestamp: no boost.
    assert [(c.item_id, c.score) for c in ranked] == [("fresh", 0.5), ("stale", 0.125), ("unknown", 0.0)]


@pytest.mark.parametrize(
    "options, field",
    [({"weight": -0.5}, "weight"), ({"half_life_hours": 0}, "half_life_hours"), ({"wieght": 0.2}, "wieght")],
    ids=["negative-weight", "zero-half-life", "misspelt-option"],
)
def test_bad_options_are_rejected(blend_plugin, options, field):
    with pytest.raises(ValidationError, match=field):
        make_blend(options)


def test_rayrec_plugins_lists_the_installed_plugin():
    if not entry_point_installed():
        pytest.skip("not installed; run: pip install -e plugins/rayrec-popularity-blend")
    env = {key: value for key, value in os.environ.items() if key != "RAYREC_LOAD_PLUGINS"}
    result = subprocess.run(
        [sys.executable, "-m", "rayrec", "plugins", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    listing = {row["name"]: row for row in json.loads(result.stdout)}
    assert ENTRY_POINT_NAME in listing, f"plugins listed: {sorted(listing)}"
    row = listing[ENTRY_POINT_NAME]
    assert row["distribution"] == f"rayrec-popularity-blend {rayrec_popularity_blend.__version__}"
    [component] = row["components"]
    assert (component["kind"], component["name"]) == ("scorer", "popularity_blend")
    assert {option["name"] for option in component["options"]} == {"weight", "recency_weight", "half_life_hours"}
