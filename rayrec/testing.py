"""Pytest helpers for plugin authors, installed as the ``rayrec`` pytest plugin.

Use the ``register_rayrec_plugin`` fixture to register a plugin for one test only::

    def test_my_scorer(register_rayrec_plugin):
        register_rayrec_plugin(my_plugin_module)
        assert "my-scorer" in rayrec.plugins.registry().names("scorer")

Whatever the test does, the plugin is unregistered afterwards.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest


@pytest.fixture
def register_rayrec_plugin() -> Iterator[Callable[..., str]]:
    """Register plugins for the duration of one test; always unregisters them."""
    from rayrec import plugins

    registered: list[str] = []

    def register(plugin: Any, name: str | None = None) -> str:
        plugins.load_plugins()
        if plugins.pm.is_registered(plugin):
            # Already loaded through its entry point: use it, and leave it registered afterwards.
            return plugins.pm.get_name(plugin)
        plugin_name = plugins.register_plugin(plugin, name=name)
        registered.append(plugin_name)
        return plugin_name

    try:
        yield register
    finally:
        for plugin_name in reversed(registered):
            if plugins.pm.get_plugin(plugin_name) is not None:
                plugins.unregister_plugin(plugin_name)
