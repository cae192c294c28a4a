"""The plugin manager around the hooks: loading, run-time registration, the listing.

Each hook's own contract is in test_hooks.py; ``rayrec plugins`` and RAYREC_LOAD_PLUGINS in a
real process are in test_cli_plugins.py.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from rayrec import plugins
from rayrec.components import Scorer
from rayrec.errors import PluginError
from rayrec.hookspecs import hookimpl

pytest_plugins = ["pytester"]


class PinnedScorer(Scorer):
    name = "test-plugins-pinned"
    description = "Keeps the retrieval order."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        strength: float = Field(0.5, ge=0, description="How strongly to pin.")

    def rerank(self, candidates, context):
        return candidates


class PinnedPlugin:
    @hookimpl
    def register_scorers(register):
        register(PinnedScorer)


class FilterOnlyPlugin:
    @hookimpl
    def filter_candidates(candidates, context):
        return None


def test_built_in_plugins_are_registered_under_their_module_names():
    plugins.load_plugins()
    for module_name in plugins.BUILTIN_PLUGINS:
        assert plugins.pm.get_plugin(module_name) is not None, module_name


def test_a_plugin_cannot_be_registered_twice(register_rayrec_plugin):
    name = register_rayrec_plugin(PinnedPlugin, name="test-plugins-pinned-plugin")
    with pytest.raises(PluginError, match="already registered as 'test-plugins-pinned-plugin'"):
        plugins.register_plugin(PinnedPlugin, name="another-name")
    assert plugins.pm.get_plugin("another-name") is None
    assert plugins.pm.get_plugin(name) is PinnedPlugin


def test_the_registry_sees_plugins_registered_and_unregistered_at_run_time():
    assert "test-plugins-pinned" not in plugins.registry().names("scorer")
    name = plugins.register_plugin(PinnedPlugin, name="test-plugins-runtime")
    try:
        assert plugins.registry().plugin_of("scorer", "test-plugins-pinned") == name
    finally:
        plugins.unregister_plugin(name)
    assert "test-plugins-pinned" not in plugins.registry().names("scorer")


def test_the_listing_shows_components_with_options_and_hook_only_plugins(register_rayrec_plugin):
    register_rayrec_plugin(PinnedPlugin, name="test-plugins-pinned-plugin")
    register_rayrec_plugin(FilterOnlyPlugin, name="test-plugins-filter-only")
    rows = {row["name"]: row for row in plugins.plugin_listing()}

    pinned = rows["test-plugins-pinned-plugin"]
    assert pinned["distribution"] is None  # registered at run time, not installed
    assert pinned["hooks"] == ["register_scorers"]
    [component] = pinned["components"]
    assert (component["kind"], component["name"], component["description"]) == (
        "scorer", "test-plugins-pinned", "Keeps the retrieval order."
    )
    assert component["options"] == [
        {"name": "strength", "type": "float", "default": 0.5, "description": "How strongly to pin."}
    ]

    filter_only = rows["test-plugins-filter-only"]
    assert (filter_only["hooks"], filter_only["components"]) == (["filter_candidates"], [])

    names = [row["name"] for row in plugins.plugin_listing()]
    builtins = [name for name in names if name.startswith("rayrec.builtin.")]
    assert names[: len(builtins)] == builtins  # built-ins first


def test_the_fixture_takes_a_plugin_whether_or_not_it_is_already_registered(pytester):
    """An installed plugin is registered through its entry point before the test runs: the
    fixture then hands back its name and leaves it registered; one that is not is registered
    for the test only. Plugin tests need no guard of their own either way."""
    installed = plugins.register_plugin(PinnedPlugin, name="test-plugins-installed")  # as an entry point would
    try:
        pytester.makepyfile(test_inner="""
            from rayrec import plugins

            class FreshPlugin:
                pass

            def test_installed(register_rayrec_plugin):
                installed = plugins.pm.get_plugin("test-plugins-installed")
                assert register_rayrec_plugin(installed) == "test-plugins-installed"
                assert register_rayrec_plugin(installed, name="other") == "test-plugins-installed"

            def test_not_installed(register_rayrec_plugin):
                assert register_rayrec_plugin(FreshPlugin, name="test-plugins-fresh") == "test-plugins-fresh"
                assert plugins.pm.get_plugin("test-plugins-fresh") is FreshPlugin
        """)
        pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
        assert plugins.pm.get_plugin("test-plugins-installed") is PinnedPlugin  # left as it was
        assert plugins.pm.get_plugin("test-plugins-fresh") is None  # unregistered after its test
    finally:
        plugins.unregister_plugin(installed)
