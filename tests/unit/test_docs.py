"""The plugin documentation and the hook tests keep up with rayrec.hookspecs.

Adding a hook without documenting it in README.md (a ``### hook_name(args)`` heading under
"Writing a plugin") or without a ``test_hook_<hook_name>`` test in tests/unit/test_hooks.py
fails here (datasette's tests/test_docs.py idea).
"""

from __future__ import annotations

import ast
import inspect
import json
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


# -- what a plugin author reads in "Writing a plugin", held to the code ----------------------------
def readme_text() -> str:
    return README.read_text()


def python_block(marker: str) -> str:
    """The README's one ```python block containing ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", readme_text(), flags=re.DOTALL)
    [block] = [block for block in blocks if marker in block]
    return block


def paragraph(start: str) -> str:
    """The README paragraph starting with ``start`` (up to the next blank line), on one line."""
    text = readme_text()
    at = text.index(start)
    return " ".join(text[at:text.index("\n\n", at)].split())


def readme_module(marker: str, name: str):
    import types

    module = types.ModuleType(name)
    exec(compile(python_block(marker), f"README.md ({name})", "exec"), module.__dict__)
    return module


def test_the_readme_data_source_example_loads_trains_and_reports_bad_lines(tmp_path, capsys, register_rayrec_plugin):
    from rayrec.cli import main
    from rayrec.data import load_dataset
    from rayrec.errors import DataError
    from rayrec.schema import Dataset
    from rayrec.training.prepare import prepare

    register_rayrec_plugin(readme_module("class JsonLinesEvents(DataSource)", "readme_jsonl"), name="rayrec-jsonl")
    events = tmp_path / "events.jsonl"
    lines = [f'{{"user": "u{u}", "item": "i{(u + t) % 7}", "ts": {1000 + 10 * t}}}' for u in range(12) for t in range(4)]
    events.write_text("\n".join(reversed(lines)) + "\n")  # newest first: rayrec orders by ts
    dataset = load_dataset(events)
    assert isinstance(dataset, Dataset) and dataset.name == "events" and len(dataset.interactions) == 48
    assert dataset.report.rows_read == 48
    prepared = prepare(dataset)
    u0 = prepared.user_vocab.index_of("u0")
    assert prepared.item_vocab.decode(prepared.sequences[u0] - 1) == ["i0", "i1", "i2", "i3"]  # by timestamp

    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text('{"uid": "u1", "item": "i1", "ts": 5}\n')
    assert load_dataset(renamed, options={"user_key": "uid"}).interactions.user_id.tolist() == ["u1"]

    model = tmp_path / "model"
    main(["train", "--interactions", str(events), "--out", str(model), "--in-process", "--epochs", "1"])
    assert (model / "config.json").exists()

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user": "u1", "item": "i1", "ts": 5}\n{"user": "u2", "ts": 6}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not an event: 'item'"):
        load_dataset(broken)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--interactions", str(broken), "--out", str(tmp_path / "other"), "--in-process"])
    assert capsys.readouterr().err.strip().splitlines() == [f"Error: {broken}:2: not an event: 'item'"]


def test_the_readme_describes_the_dataset_as_it_is():
    """Every class, field and default the README names exists, and no required field is left out."""
    import dataclasses

    from rayrec import schema

    text = readme_text()
    text = " ".join(text[text.index("**The `Dataset`.**"):text.index("**After `load`.**")].split())
    signatures = re.findall(r"`(Dataset|Items|Users)\((.*?)\)`", text)
    interactions = re.search(r"`interactions`: an `Interactions` of .*?: (.*?)\.", text).group(1)
    columns = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", interactions))  # not the types in parentheses
    signatures.append(("Interactions", ", ".join(columns)))
    assert [name for name, _ in signatures] == ["Dataset", "Items", "Users", "Interactions"]
    for name, arguments in signatures:
        fields = {f.name: f for f in dataclasses.fields(getattr(schema, name))}
        documented = dict(re.match(r"(\w+)(?:=(.*))?", argument.strip()).groups() for argument in arguments.split(","))
        assert set(documented) <= set(fields), f"README names {set(documented) - set(fields)} of {name}"
        required = {n for n, f in fields.items() if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        assert required <= set(documented), f"README leaves out {required - set(documented)} of {name}"
        if name == "Dataset":
            assert documented["items"] == documented["users"] == "None" and fields["items"].default is None
            # The optional fields beyond the signature each have a line of their own.
            assert {f for f in fields if f"`{f}`" in text} == set(fields), "a Dataset field is undocumented"
    report = text[text.index("`report`: a `LoadReport`"):]
    for attribute in re.findall(r"`(\w+)`", report.split("and `rayrec train` prints them")[0]):
        assert attribute in ("report", "LoadReport") or hasattr(schema.LoadReport(), attribute), attribute


def test_the_readme_order_of_data_sources_is_the_registry_order(tmp_path, register_rayrec_plugin):
    import types

    from rayrec import plugins
    from rayrec.components import DataSource
    from rayrec.data import load_dataset
    from rayrec.hookspecs import hookimpl

    documented = re.findall(r"`([\w-]+)`", paragraph("**Which source loads a path.**").split("the built-ins ")[1]
                            .split(", then")[0])
    sources = plugins.registry().by_kind["data_source"]
    order = list(sources)
    built_ins = [name for name in order if sources[name].plugin == "rayrec.builtin.data_sources"]
    assert order[:len(built_ins)] == built_ins  # the built-ins first
    assert documented == built_ins  # every built-in, in the order they are tried

    class Everything(DataSource):
        name = "takes-everything"

        def can_load(self, path: str) -> bool:
            return True

        def load(self, path: str):
            raise AssertionError("a plugin took over a built-in format")

    module = types.ModuleType("takes_everything")
    module.register_data_sources = hookimpl(lambda register: register(Everything))
    register_rayrec_plugin(module, name="takes-everything")
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    assert len(load_dataset(csv).interactions) == 1  # still the built-in interactions-file


def test_the_readme_feedback_handler_example_counts_new_clicks_once_per_replica(tmp_path, register_rayrec_plugin):
    import logging

    from rayrec import plugins
    from rayrec.components import FeedbackEvent
    from rayrec.serving.config import AppArgs
    from rayrec.serving.graph.deployments import FeedbackIngestor

    register_rayrec_plugin(readme_module("class CountClicks(FeedbackHandler)", "readme_count_clicks"),
                           name="readme-count-clicks")
    handler = plugins.create_component("feedback_handler", "count_clicks", {"every": 2})
    events = [FeedbackEvent(user_id="u", item_id="a", new=True), FeedbackEvent(user_id="u", item_id="a", new=False),
              FeedbackEvent(user_id="u", item_id="b", event_type="view", new=True),
              FeedbackEvent(user_id="u", item_id="c", new=True)]
    serve_log = logging.getLogger("ray.serve")  # Ray sets it not to propagate: listen to it directly
    records: list[logging.LogRecord] = []
    listener = logging.Handler(logging.INFO)
    listener.emit = records.append
    serve_log.addHandler(listener)
    level, serve_log.level = serve_log.level, logging.INFO
    try:
        handler.handle(events)
    finally:
        serve_log.removeHandler(listener)
        serve_log.setLevel(level)
    assert handler.clicks == 2  # the retry and the view do not count
    assert [r.getMessage() for r in records] == ["count_clicks: 2 new clicks"]

    # One instance per feedback-ingestor replica, made when the replica starts.
    args = AppArgs(model_dir="m", state=f"sqlite:///{tmp_path}/state.db",
                   feedback_handlers=[{"name": "count_clicks", "options": {"every": 5}}])
    replicas = [FeedbackIngestor.func_or_class(args) for _ in range(2)]
    [first], [second] = (replica.logic.handlers for replica in replicas)
    assert first is not second and first.options.every == second.options.every == 5
    for replica in replicas:
        replica.store.close()


def test_the_readme_serve_config_example_parses_and_states_the_defaults(register_rayrec_plugin):
    import yaml

    from rayrec.config import parse_config
    from rayrec.serving.config import AppArgs, check_components

    register_rayrec_plugin(readme_module("class BoostFresh(Scorer)", "readme_boost_fresh"), name="readme-boost-fresh")
    register_rayrec_plugin(readme_module("class CountClicks(FeedbackHandler)", "readme_count_clicks"),
                           name="readme-count-clicks")
    text = readme_text()
    start = text.index("**Configuring components.**")
    block = re.search(r"```yaml\n(.*?)```", text[start:], flags=re.DOTALL).group(1)
    args = parse_config(AppArgs, {**yaml.safe_load(block), "model_dir": "m"}, what="serve config", where="README.md")
    check_components(args, where="README.md")  # every name and option exists
    assert [s.name for s in args.scorers] == ["category_diversity", "boost_fresh"]
    defaults = dict(re.findall(r"^(\w+):\s+# default: (.*?)(?: \(.*)?$", block, flags=re.MULTILINE))
    assert set(defaults) == {"scorers", "feedback_handlers", "candidate_sources"}
    plain = AppArgs(model_dir="m")
    for key, value in defaults.items():
        stated = AppArgs(model_dir="m", **{key: yaml.safe_load(value)})
        assert getattr(stated, key) == getattr(plain, key), f"README says {key} defaults to {value}"


def test_the_readme_category_diversity_options_and_request_scorer_options_hold():
    from pydantic import ValidationError

    from rayrec.builtin.scorers import CategoryDiversity
    from rayrec.serving.schemas import RecommendRequest
    from rayrec.serving.stages.scoring import MAX_REQUEST_SCORERS

    built_in = paragraph("**Built-in `category_diversity`.**")
    option, default = re.search(r"Its only option is `(\w+)` \(default `([\d.]+)`, at least 0", built_in).groups()
    assert list(CategoryDiversity.Options.model_fields) == [option]
    assert CategoryDiversity.Options().penalty == float(default)
    with pytest.raises(ValidationError):
        CategoryDiversity.Options(penalty=-0.01)

    per_request = paragraph("A request can change a configured scorer's options")
    bodies = [json.loads(body) for body in re.findall(r"`(\{\"user_id\".*?\})`", per_request)]
    bodies += [json.loads(body) for body in re.findall(r"-d '(\{[^']*scorer_options[^']*\})'", readme_text())]
    assert len(bodies) == 2
    for body in bodies:
        request = RecommendRequest(**body)
        for name, options in request.scorer_options.items():
            assert name == CategoryDiversity.name and set(options) <= set(CategoryDiversity.Options.model_fields)
    assert f"up to {MAX_REQUEST_SCORERS} of them" in per_request


def test_the_readme_names_install_extras_that_exist():
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    install = paragraph("**What to install.**")
    named = set(re.findall(r"rayrec\[(\w+)\]", install)) | set(re.findall(r"the `(\w+)` extra", install))
    assert named == {"test", "redis"}
    assert named <= set(extras)
    test_extra = {re.split(r"[<>=\[]", requirement)[0] for requirement in extras["test"]}
    assert {"pytest", "httpx"} <= test_extra
    template = tomllib.loads((REPO_ROOT / "plugins" / "rayrec-popularity-blend" / "pyproject.toml").read_text())
    assert template["project"]["dependencies"] == ["rayrec"]  # what the README says a plugin depends on
