"""The plugin documentation and the hook tests keep up with rayrec.hookspecs.

Adding a hook without documenting it in README.md (a ``### hook_name(args)`` heading under
"Writing a plugin") or without a ``test_hook_<hook_name>`` test in tests/unit/test_hooks.py
fails here (datasette's tests/test_docs.py idea).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from rayrec import hookspecs

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
HOOK_TESTS = Path(__file__).with_name("test_hooks.py")


def hook_specs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(function)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "rayrec_spec")
    }


HOOKS = sorted(hook_specs())


def readme_headings() -> dict[str, str]:
    """``### name(args)`` headings in README.md: hook name -> the text between the parentheses."""
    return dict(re.findall(r"^### `?(\w+)\(([^)]*)\)`?\s*$", README.read_text(), flags=re.MULTILINE))


def test_the_hook_list_is_not_empty():
    # Guards the tests below against passing vacuously if hookspecs stopped being found.
    assert {"register_scorers", "filter_candidates", "training_epoch_end"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_the_readme_with_its_arguments(hook):
    headings = readme_headings()
    assert hook in headings, f"README.md has no '### {hook}(...)' heading"
    documented = [arg.strip() for arg in headings[hook].split(",") if arg.strip()]
    assert documented == list(hook_specs()[hook].parameters), (
        f"README.md documents {hook}({headings[hook]}), but the hookspec is {hook}{hook_specs()[hook]}"
    )


def test_the_readme_documents_no_hook_that_does_not_exist():
    stale = sorted(set(readme_headings()) - set(HOOKS))
    assert stale == [], f"README.md has hook headings for hooks that do not exist: {stale}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test_of_its_own(hook):
    tree = ast.parse(HOOK_TESTS.read_text())
    tests = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert f"test_hook_{hook}" in tests, f"tests/unit/test_hooks.py has no test_hook_{hook}"


def test_the_readme_scorer_example_works_as_written(register_rayrec_plugin):
    import types

    from rayrec import plugins
    from rayrec.components import Candidate, ScoringContext

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    [example] = [block for block in blocks if "class BoostFresh(Scorer)" in block]
    module = types.ModuleType("readme_boost_fresh")
    exec(compile(example, "README.md (BoostFresh)", "exec"), module.__dict__)
    register_rayrec_plugin(module, name="readme-boost-fresh")
    scorer = plugins.create_component("scorer", "boost_fresh", {"bonus": 0.5})
    context = ScoringContext(item_timestamps={"fresh": 1_000_000.0 - 3600}, now=1_000_000.0)
    ranked = scorer.rerank([Candidate(item_id="old", score=1.0), Candidate(item_id="fresh", score=0.8)], context)
    assert [(c.item_id, c.score, c.explanation) for c in ranked] == [("fresh", 1.3, ["fresh"]), ("old", 1.0, [])]
