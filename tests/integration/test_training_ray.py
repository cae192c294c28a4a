"""Training on a real local Ray cluster through the command line, as users run it."""

import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rayrec.data import SyntheticConfig, write_synthetic
from rayrec.testing import free_port

pytestmark = pytest.mark.integration

RAYREC = [sys.executable, "-m", "rayrec"]


@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    write_synthetic(out, SyntheticConfig(num_users=300, num_items=150, num_clusters=6, mean_events_per_user=20, seed=5))
    return out / "interactions.csv"


def run(args, **kwargs):
    return subprocess.run(RAYREC + args, capture_output=True, text=True, timeout=600, **kwargs)


def test_train_on_two_workers_then_recommend(tmp_path, synthetic_csv):
    model_dir = tmp_path / "model"
    trained = run(["train", "--interactions", str(synthetic_csv), "--out", str(model_dir),
                   "--epochs", "4", "--num-workers", "2", "--no-search"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "val NDCG@10" in trained.stdout + trained.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["num_workers"] == 2 and metrics["epochs_trained"] == 4

    recs_path = tmp_path / "recs.jsonl"
    recommended = run(["recommend", "--model", str(model_dir), "-k", "7", "--out", str(recs_path)])
    assert recommended.returncode == 0, recommended.stderr
    lines = [json.loads(line) for line in recs_path.read_text().splitlines()]
    assert len(lines) == 300
    import csv

    history: dict[str, set[str]] = {}
    with open(synthetic_csv) as handle:
        for row in csv.DictReader(handle):
            history.setdefault(row["user_id"], set()).add(row["item_id"])
    for line in lines:
        assert len(line["items"]) == 7 and len(line["scores"]) == 7
        assert not set(line["items"]) & history[line["user_id"]]
        assert line["scores"] == sorted(line["scores"], reverse=True)


def test_recommend_for_listed_users_and_unknown_ones(tmp_path, synthetic_csv):
    model_dir = tmp_path / "model"
    assert run(["train", "--interactions", str(synthetic_csv), "--out", str(model_dir), "--epochs", "2",
                "--in-process"]).returncode == 0
    users_file = tmp_path / "users.txt"
    users_file.write_text("u1\nnobody\n")
    result = run(["recommend", "--model", str(model_dir), "-k", "3", "--out", str(tmp_path / "r.jsonl"),
                  "--users", str(users_file)])
    assert result.returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [line["user_id"] for line in lines] == ["u1", "nobody"]
    assert "not seen in training" in result.stderr


def test_killed_worker_resumes_from_last_checkpoint(tmp_path, synthetic_csv):
    model_dir = tmp_path / "model"
    config = tmp_path / "config.yaml"
    # Validate and checkpoint every epoch; no early stopping.
    config.write_text("eval_every: 1\npatience: 1000\ncheckpoint_every_s: 0.001\n")
    process = subprocess.Popen(
        RAYREC + ["train", "--interactions", str(synthetic_csv), "--out", str(model_dir), "--config", str(config),
                  "--epochs", "30", "--num-workers", "2", "--no-search"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        checkpoints = model_dir / ".checkpoints"
        deadline = time.time() + 300
        victim = None
        while time.time() < deadline:
            pid_files = list(checkpoints.glob("worker_pids/rank1.pid"))
            done = list(checkpoints.glob("*/checkpoint_*/training_state.pt"))
            if pid_files and len(done) >= 2:
                victim = int(pid_files[0].read_text())
                break
            time.sleep(0.5)
        assert victim is not None, "training never wrote a checkpoint"
        time.sleep(2)  # let the controller register the checkpoint it was just handed
        os.kill(victim, signal.SIGKILL)
        output, _ = process.communicate(timeout=500)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-4000:]
    assert "resumed from checkpoint after epoch" in output
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 30
    epochs = [h["epoch"] for h in metrics["history"]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 30  # no epoch trained twice in the record


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_two_workers_on_two_cpus_learn_the_known_structure(tmp_path, synthetic_csv, loss):
    """DDP over 2 workers x 1 CPU on a 2-CPU local Ray reaches a validation NDCG far above
    popularity's on the same split (the synthetic users walk their cluster in order). Under
    the sampled softmax DDP all-reduces the item table's sparse gradients (rows updated row by
    row)."""
    import ray

    from rayrec.evaluation.baselines import PopularityBaseline
    from rayrec.evaluation.protocol import evaluate_ranking
    from rayrec.training.config import TrainConfig
    from rayrec.training.prepare import load_training_data, validation_split
    from rayrec.training.trainer import train_distributed

    config = TrainConfig(epochs=12, eval_every=4, patience=100, learning_rate=3e-3, num_workers=2,
                         cpus_per_worker=1, model={"dim": 32, "max_len": 50, "loss": loss,
                                                   "num_uniform_negatives": 50})
    data = load_training_data(str(synthetic_csv), None, None, config, echo=lambda line: None)
    train, targets = validation_split(data.sequences, zero_based=True)
    popularity = PopularityBaseline().fit(train, data.num_items)
    popularity_ndcg = evaluate_ranking(lambda users: popularity.score_histories([train[u] for u in users]),
                                       train, targets, data.num_items)["NDCG@10"]
    lines: list[str] = []
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        train_distributed(data, tmp_path / "model", config, log=lines.append)
    finally:
        ray.shutdown()
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["num_workers"] == 2 and metrics["threads_per_worker"] == 1
    assert metrics["best_val_ndcg@10"] > 3 * popularity_ndcg, (metrics["best_val_ndcg@10"], popularity_ndcg)
    assert metrics["item_table_updates"] == ("row_wise" if loss == "sampled" else "dense")


def test_a_killed_driver_resumes_from_its_named_run(tmp_path, synthetic_csv):
    """Kill `rayrec train` itself once its run has a checkpoint; the same command with
    --resume continues that run (checkpoints on a file:// storage URI) where it stopped."""
    model_dir, storage = tmp_path / "model", tmp_path / "storage"
    config = tmp_path / "config.yaml"
    config.write_text("eval_every: 1\npatience: 1000\ncheckpoint_every_s: 0.001\n")
    arguments = ["train", "--interactions", str(synthetic_csv), "--out", str(model_dir), "--config", str(config),
                 "--epochs", "12", "--num-workers", "2", "--no-search", "--storage", f"file://{storage}"]
    # Its own session, so that what it started can be cleaned up with it.
    first = subprocess.Popen(RAYREC + arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            # Ray Train's record of the run's checkpoints, written after each one it registers.
            if list(storage.glob("*/checkpoint_manager_snapshot.json")) and list(storage.glob("*/checkpoint_*/")):
                break
            time.sleep(0.2)
        assert first.poll() is None, "training ended before it could be killed: " + first.communicate()[0][-3000:]
        assert list(storage.glob("*/checkpoint_*/training_state.pt")), "training never wrote a checkpoint"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # the local Ray the killed driver had started
        except ProcessLookupError:
            pass
    assert not (model_dir / "metrics.json").exists()
    resumed = run(arguments + ["--resume"])
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    (run_dir,) = storage.glob("rayrec-train-model-*")
    assert f"resuming run {run_dir.name} from its latest checkpoint" in output
    assert "resumed from checkpoint after epoch" in output
    epoch = int(output.split("resumed from checkpoint after epoch ")[1].split()[0])
    assert 1 <= epoch < 12
    assert f"epoch {epoch + 1}/12 " in output and "epoch 1/12 " not in output  # it continued, not restarted
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 13))


@pytest.mark.slow
def test_ray_job_submit_to_an_existing_cluster(tmp_path, synthetic_csv):
    ray_bin = Path(sys.executable).parent / "ray"
    port, dashboard_port, agent_port = free_port(), free_port(), free_port()
    # Token auth is switched on by a ~/.ray/auth_token left on the machine; this throwaway
    # loopback cluster runs without it, on both ends.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    # Ray's unix sockets live under the temp dir, and pytest's tmp_path is too long for them.
    short_temp = tempfile.mkdtemp(prefix="rr-", dir="/tmp")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", f"--temp-dir={short_temp}",
         # The job agent's fixed default port (52365) is taken by any other Ray on the machine,
         # and without its agent the cluster refuses every job ("No available agent").
         f"--dashboard-agent-listen-port={agent_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        model_dir = tmp_path / "model"
        deadline = time.time() + 240  # the dashboard and its job agent take a while to come up
        while True:
            submitted = subprocess.run(
                [str(ray_bin), "job", "submit", f"--address={address}", "--",
                 sys.executable, "-m", "rayrec", "train", "--interactions", str(synthetic_csv),
                 "--out", str(model_dir), "--epochs", "2", "--num-workers", "2", "--no-search"],
                capture_output=True, text=True, timeout=600, env=env)
            if submitted.returncode == 0 or time.time() > deadline:
                break
            time.sleep(3)  # the dashboard may still be starting
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert (model_dir / "weights.pt").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(short_temp, ignore_errors=True)
