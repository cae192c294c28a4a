"""``rayrec plugins``: lists every loaded plugin with its components, as text or JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rayrec.cli import cli

#: (plugin, kind, component name) that rayrec itself always registers.
BUILT_INS = [
    ("rayrec.builtin.encoders", "encoder", "sasrec"),
    ("rayrec.builtin.encoders", "encoder", "gru"),
    ("rayrec.builtin.encoders", "encoder", "mean"),
    ("rayrec.builtin.encoders", "encoder", "item_tower"),
    ("rayrec.builtin.data_sources", "data_source", "movielens-100k"),
    ("rayrec.builtin.data_sources", "data_source", "movielens-latest"),
    ("rayrec.builtin.data_sources", "data_source", "synthetic"),
    ("rayrec.builtin.data_sources", "data_source", "interactions-file"),
    ("rayrec.builtin.scorers", "scorer", "category_diversity"),
    ("rayrec.builtin.state_stores", "state_store", "sqlite"),
]
EXAMPLE_PLUGIN = "popularity_blend"  # entry point of plugins/rayrec-popularity-blend


def example_plugin_installed() -> bool:
    return any(ep.name == EXAMPLE_PLUGIN for ep in importlib.metadata.entry_points(group="rayrec"))


def components_by_plugin(listing: list[dict]) -> set[tuple[str, str, str]]:
    return {(row["name"], c["kind"], c["name"]) for row in listing for c in row["components"]}


def run_rayrec(*args: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "rayrec", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_plugins_json_lists_the_built_in_components_with_their_plugins():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert set(BUILT_INS) <= components_by_plugin(listing)
    # Built-ins come first; every row says where it came from and which hooks it implements.
    assert listing[0]["name"].startswith("rayrec.builtin.")
    encoders = next(row for row in listing if row["name"] == "rayrec.builtin.encoders")
    assert encoders["distribution"] is None
    assert encoders["hooks"] == ["register_encoders"]
    sasrec = next(c for c in encoders["components"] if c["name"] == "sasrec")
    assert sasrec["description"]
    num_heads = next(o for o in sasrec["options"] if o["name"] == "num_heads")
    assert (num_heads["type"], num_heads["default"]) == ("int", 1)


def test_plugins_text_lists_each_component_under_its_plugin():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for plugin, kind, name in BUILT_INS:
        header = lines.index(plugin)
        block = []
        for line in lines[header + 1 :]:
            if not line.startswith("  "):
                break
            block.append(line.split())
        assert [kind, name] in [words[:2] for words in block], f"{kind} {name} not listed under {plugin}"


def test_plugins_json_in_a_real_process_lists_the_installed_example_plugin():
    if not example_plugin_installed():
        pytest.skip("plugins/rayrec-popularity-blend is not installed (bash scripts/test.sh installs it)")
    result = run_rayrec("plugins", "--json", RAYREC_LOAD_PLUGINS=None)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    found = components_by_plugin(listing)
    assert set(BUILT_INS) <= found
    assert (EXAMPLE_PLUGIN, "scorer", "popularity_blend") in found
    row = next(row for row in listing if row["name"] == EXAMPLE_PLUGIN)
    assert row["distribution"].startswith("rayrec-popularity-blend ")


def test_an_empty_rayrec_load_plugins_hides_installed_plugins_but_keeps_the_built_ins():
    result = run_rayrec("plugins", "--json", RAYREC_LOAD_PLUGINS="")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [row["name"] for row in listing if not row["name"].startswith("rayrec.builtin.")] == []
    assert set(BUILT_INS) <= components_by_plugin(listing)


def test_rayrec_load_plugins_can_name_the_plugins_to_load():
    if not example_plugin_installed():
        pytest.skip("plugins/rayrec-popularity-blend is not installed (bash scripts/test.sh installs it)")
    result = run_rayrec("plugins", RAYREC_LOAD_PLUGINS=f" {EXAMPLE_PLUGIN} ,not-installed")
    assert result.returncode == 0, result.stderr
    assert f"{EXAMPLE_PLUGIN} (rayrec-popularity-blend " in result.stdout
    assert "rayrec.builtin.scorers" in result.stdout
