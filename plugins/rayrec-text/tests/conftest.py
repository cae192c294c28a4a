"""Fixtures shared by the rayrec-text tests."""

from __future__ import annotations

import pytest

import rayrec_text
from rayrec import plugins


@pytest.fixture
def text_plugin(register_rayrec_plugin) -> str:
    """The plugin's name in rayrec's plugin manager, registering it for this test if needed
    (when the package is importable but its entry point is not installed)."""
    plugins.load_plugins()
    if plugins.pm.is_registered(rayrec_text):
        return plugins.pm.get_name(rayrec_text)
    return register_rayrec_plugin(rayrec_text)
