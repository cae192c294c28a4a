"""App arguments, deploy/serve.yaml and the CLI's checks that need no Ray cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from rayrec.errors import ConfigError, ModelError
from rayrec.serving.app import _absolute_state_url, resolve_args
from rayrec.serving.config import AppArgs, Topology
from rayrec.serving.graph.builder import deployment_options
from rayrec.testing import write_toy_model

REPO = Path(__file__).resolve().parents[2]


def test_deploy_yaml_is_a_valid_serve_config_with_valid_app_args():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema(**config)
    [app] = schema.applications
    assert app.import_path == "rayrec.serving.app:build_app"
    args = AppArgs(**app.args)
    assert args.stages.scorer.autoscaling["max_replicas"] >= 1
    assert schema.logging_config.enable_access_log is False


def test_stage_options_become_deployment_options():
    args = AppArgs(model_dir="m", stages={"scorer": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}, "num_cpus": 0.5}})
    scorer = deployment_options("scorer", args)
    assert scorer["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3} and "num_replicas" not in scorer
    assert scorer["ray_actor_options"]["num_cpus"] == 0.5
    assert scorer["ray_actor_options"]["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert scorer["logging_config"] == {"enable_access_log": False}
    two = AppArgs(model_dir="m", stages={"preprocessor": {"num_replicas": 2}})
    assert deployment_options("preprocessor", two)["num_replicas"] == 2


MB = 2**20


@pytest.mark.parametrize("topology", ["split", "fused", "ingress"])
def test_every_deployment_reserves_memory_for_the_model_it_loads(tmp_path, topology):
    """What a replica reads into its own memory, twice (a reload holds two generations); not the
    files it maps (shared by the node's replicas), nor a run's checkpoints in the directory."""
    from rayrec.serving.graph.builder import MAPPED_FILES

    model = write_toy_model(tmp_path / "model", num_items=2000, dim=32)
    (model / ".checkpoints").mkdir()
    (model / ".checkpoints" / "training_state.pt").write_bytes(b"0" * 4 * MB)
    objects = {"item_vocab.json": 12, "user_vocab.json": 12}  # read as a list and dict of the ids
    model_mb = sum(objects.get(f.name, 1) * f.stat().st_size for f in model.iterdir()
                   if f.is_file() and f.name not in MAPPED_FILES) / MB
    assert model_mb > 0.1 and (model / "item_embeddings.npy").stat().st_size > 0.1 * MB  # mapped: not counted
    args = AppArgs(model_dir=str(model), topology=topology)
    loads_model = {"preprocessor", "user_encoder", "scorer", "pipeline"} | ({"ingress"} if topology == "ingress" else set())
    for name in args.deployed_stages():
        memory = deployment_options(name, args)["ray_actor_options"]["memory"]
        expected = 300 + 2 * model_mb if name in loads_model else 300
        assert expected * MB <= memory < (expected + 1) * MB, (name, memory / MB)


def test_a_configured_memory_wins_over_the_estimate(tmp_path):
    model = write_toy_model(tmp_path / "model", num_items=2000, dim=32)
    args = AppArgs(model_dir=str(model), topology="split", stages={"scorer": {"memory_mb": 4096}, "feedback": {"memory_mb": 64}})
    assert deployment_options("scorer", args)["ray_actor_options"]["memory"] == 4096 * MB
    assert deployment_options("feedback", args)["ray_actor_options"]["memory"] == 64 * MB
    assert deployment_options("user_encoder", args)["ray_actor_options"]["memory"] > 300 * MB  # still estimated
    with pytest.raises(ValidationError, match="stages.scorer.memory_mb"):
        AppArgs(model_dir="m", stages={"scorer": {"memory_mb": 0}})


@pytest.mark.parametrize(
    "topology, stages",
    [
        ("split", {"ingress", "feedback", "preprocessor", "user_encoder", "scorer"}),
        ("fused", {"ingress", "feedback", "pipeline"}),
        ("ingress", {"ingress", "feedback"}),  # the ingress replicas run the read pipeline
    ],
)
def test_each_topology_deploys_its_stages(topology, stages):
    assert set(AppArgs(model_dir="m", topology=topology).deployed_stages()) == stages


def test_the_topology_is_a_named_type_that_reads_as_its_config_value():
    args = AppArgs(model_dir="m", topology="fused")
    assert args.topology is Topology.FUSED and args.topology == "fused" and f"{args.topology}" == "fused"
    assert AppArgs(model_dir="m").topology is Topology.AUTO
    assert args.model_dump(mode="json")["topology"] == "fused"
    with pytest.raises(ValidationError, match="topology"):
        AppArgs(model_dir="m", topology="fussed")


@pytest.mark.parametrize("topology, read_path", [("split", "SplitStages"), ("fused", "FusedPipeline"),
                                                 ("ingress", "IngressPipeline")])
def test_the_ingress_gets_the_read_path_of_its_topology(topology, read_path):
    from rayrec.serving.graph.builder import bind_stages

    reads, feedback = bind_stages(AppArgs(model_dir="m", topology=topology))
    assert type(reads).__name__ == read_path and reads.topology == topology
    with pytest.raises(ValueError, match="auto"):
        bind_stages(AppArgs(model_dir="m"))


def test_app_args_errors_name_the_field():
    with pytest.raises(ValidationError, match="stages.scorer.num_cpus"):
        AppArgs(model_dir="m", stages={"scorer": {"num_cpus": 0}})
    with pytest.raises(ValidationError, match="exact_search_max_itemz"):
        AppArgs(model_dir="m", exact_search_max_itemz=3)


def test_resolve_args_makes_paths_absolute_and_checks_model_and_components(tmp_path, monkeypatch):
    model = write_toy_model(tmp_path / "model", num_items=50, dim=8)
    monkeypatch.chdir(tmp_path)
    args = resolve_args({"model_dir": "model", "state": "sqlite:///state.db?synchronous=normal"})
    assert args.model_dir == str(model.resolve())
    assert args.state == f"sqlite:///{tmp_path / 'state.db'}?synchronous=normal"
    assert _absolute_state_url("redis://host:6379/0") == "redis://host:6379/0"
    with pytest.raises(ModelError, match="does not exist"):
        resolve_args({"model_dir": "missing"})
    with pytest.raises(ConfigError, match=r"^scorers\[0\]: unknown scorer 'nope'; available: .*category_diversity"):
        resolve_args({"model_dir": "model", "scorers": [{"name": "nope"}]})


def test_the_user_encoder_batches_as_app_args_say(tmp_path):
    import asyncio

    from rayrec.serving.graph.deployments import HistoryEncoder
    from rayrec.state import open_state_store

    model = write_toy_model(tmp_path / "model", num_items=50, dim=8)
    args = AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/state.db",
                   batching={"max_size": 7, "wait_timeout_s": 0.25})
    store = open_state_store(args.state)
    store.ensure_model(args.model_dir)
    store.close()

    async def batching():
        encoder = HistoryEncoder.func_or_class(args)  # the replica's class, outside Ray
        return encoder.encode_batch._get_max_batch_size(), encoder.encode_batch._get_batch_wait_timeout_s()

    assert asyncio.run(batching()) == (7, 0.25)


def test_max_k_is_the_limit_up_to_the_schema_ceiling():
    from rayrec.serving.schemas import MAX_K, RecommendRequest, SearchRequest

    assert AppArgs(model_dir="m").limits.max_k == 1000
    assert AppArgs(model_dir="m", limits={"max_k": MAX_K}).limits.max_k == MAX_K
    with pytest.raises(ValidationError, match="limits.max_k"):
        AppArgs(model_dir="m", limits={"max_k": MAX_K + 1})
    # The request schema lets a configured max_k through (the ingress then applies max_k itself).
    assert RecommendRequest(k=MAX_K).k == SearchRequest(query="x", k=MAX_K).k == MAX_K
    with pytest.raises(ValidationError, match="k"):
        RecommendRequest(k=MAX_K + 1)


def run_serve(model, config_text: str, tmp_path):
    import subprocess
    import sys
    import time

    config = tmp_path / "bad.yaml"
    config.write_text(config_text)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "rayrec", "serve", "--model", str(model), "--state", str(tmp_path / "s.db"),
         "--config", str(config)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return result, time.monotonic() - started, config


@pytest.mark.parametrize("config_text, expected", [
    ("scorers:\n  - name: category_diversity\n    options: {penalti: 0.2}\n",
     "scorers[0]: invalid options for scorer 'category_diversity': penalti: Extra inputs are not permitted"),
    ("args:\n  scorers: [{name: category_diversity, options: {penalty: -1}}]\n",
     "scorers[0]: invalid options for scorer 'category_diversity': penalty: Input should be greater than or equal to 0"),
    ("feedback_handlers: [{name: no_such_handler}]\n", "feedback_handlers[0]: unknown feedback handler 'no_such_handler'; available: (none)"),
    ("max_kk: 5\n", "invalid serve config: max_kk: Extra inputs are not permitted"),
    ("limits:\n  max_kk: 5\n", "invalid serve config: limits.max_kk: Extra inputs are not permitted"),
    ("max_k: 5\nlimits: {max_k: 6}\n",
     "invalid serve config: `max_k` and `limits.max_k` are the same setting: keep only `limits.max_k`"),
], ids=["misspelt-option", "bad-value-in-args-block", "unknown-component", "misspelt-app-arg", "misspelt-key-in-a-group",
        "flat-and-grouped"])
def test_a_config_error_is_one_line_naming_file_component_and_field(tmp_path, config_text, expected):
    model = write_toy_model(tmp_path / "model", num_items=50, dim=8)
    result, _, config = run_serve(model, config_text, tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1:] == [f"Error: {config}: {expected}"], result.stderr
    assert all("is now" in line for line in lines[:-1]), result.stderr  # at most deprecation notes before it
    assert "starting Ray" not in result.stderr  # it failed before Ray started


def test_cli_reports_a_bad_model_directory_without_starting_ray(tmp_path):
    from rayrec.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "nope")], standalone_mode=False)
    assert isinstance(result.exception, ModelError)
    assert "nope" in str(result.exception)


def test_cli_help_lists_the_options():
    from rayrec.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ["--model", "--host", "--port", "--state", "--config", "--topology", "--direct-ingress"]:
        assert option in result.output


# -- AppArgs grouped by concern, the first flat form still accepted --------------------------
FLAT = {"model_dir": "m", "max_k": 50, "batch_max_size": 4, "batch_wait_timeout_s": 0.01, "rerank_pool": 40,
        "exact_search_max_items": 10, "ann": {"m": 16}, "filter_seen": False, "api_keys_file": "keys.txt",
        "model_roots": ["/models"], "threads_per_replica": 2, "replica_env": {"X": "1"}, "access_log": True,
        "request_log": "-", "ann_recall_probe_interval_s": 0, "max_feedback_batch": 10, "max_body_bytes": 4096,
        "retry_after_s": 2.0, "api_keys_env": "KEYS"}
GROUPED = {"model_dir": "m", "limits": {"max_k": 50, "max_feedback_batch": 10, "max_body_bytes": 4096, "retry_after_s": 2.0},
           "batching": {"max_size": 4, "wait_timeout_s": 0.01},
           "retrieval": {"rerank_pool": 40, "exact_search_max_items": 10, "ann": {"m": 16}, "filter_seen": False},
           "security": {"api_keys_file": "keys.txt", "model_roots": ["/models"], "api_keys_env": "KEYS"},
           "replica": {"threads": 2, "env": {"X": "1"}},
           "observability": {"access_log": True, "request_log": "-", "ann_recall_probe_interval_s": 0}}


@pytest.fixture
def fresh_flat_warnings(monkeypatch):
    """Each flat key warns once per process: start this test with none warned yet."""
    from rayrec.serving import config

    monkeypatch.setattr(config, "_warned_flat_keys", set())


def test_the_flat_form_still_works_and_warns_once_per_key_with_the_new_spelling(fresh_flat_warnings):
    from rayrec.serving.config import FLAT_KEYS

    assert set(FLAT) - {"model_dir"} == set(FLAT_KEYS)  # every flat key of the first form is covered
    with pytest.warns(DeprecationWarning) as caught:
        flat = AppArgs(**FLAT)
    assert flat == AppArgs(**GROUPED)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == len(FLAT_KEYS)
    assert "serve config: `max_k` is now `limits.max_k`; the flat form will be removed" in messages
    assert "serve config: `threads_per_replica` is now `replica.threads`; the flat form will be removed" in messages
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AppArgs(model_dir="m", max_k=20)  # once per key: no second warning
        AppArgs(**GROUPED)  # the grouped form never warns


def test_a_flat_key_and_its_group_mix_and_the_group_wins_nothing_silently(fresh_flat_warnings):
    args = AppArgs(model_dir="m", max_k=50, limits={"retry_after_s": 3.0})
    assert (args.limits.max_k, args.limits.retry_after_s) == (50, 3.0)
    with pytest.raises(ValidationError, match="`max_k` and `limits.max_k` are the same setting"):
        AppArgs(model_dir="m", max_k=50, limits={"max_k": 60})


def test_every_deploy_file_uses_the_grouped_form():
    import warnings

    from rayrec.serving import config

    for name in ("serve.yaml", "serve-cluster.yaml"):
        document = yaml.safe_load((REPO / "deploy" / name).read_text())
        [app] = document["applications"]
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            assert not set(app["args"]) & set(config.FLAT_KEYS), name
            AppArgs(**app["args"])


def test_rayrec_serve_shows_the_flat_form_note_and_merges_flags_into_the_groups(tmp_path, monkeypatch,
                                                                                 fresh_flat_warnings):
    from rayrec import cli
    from rayrec.errors import RayrecError
    from rayrec.serving import app

    seen = {}

    def stop_before_ray(args):
        seen["args"] = args
        raise RayrecError("stopped before Ray")

    monkeypatch.setattr(app, "resolve_args", stop_before_ray)
    config = tmp_path / "serve.yaml"
    config.write_text("max_k: 50\nobservability: {access_log: true}\nsecurity: {api_keys_env: KEYS}\n")
    result = CliRunner().invoke(cli.cli, ["serve", "--model", str(tmp_path), "--config", str(config),
                                          "--request-log", "-", "--api-keys-file", "keys.txt"])
    assert f"{config}: serve config: `max_k` is now `limits.max_k`; the flat form will be removed" in result.output
    args = seen["args"]
    assert args.limits.max_k == 50
    assert (args.observability.access_log, args.observability.request_log) == (True, "-")
    assert (args.security.api_keys_env, args.security.api_keys_file) == ("KEYS", "keys.txt")
