"""Training on a real local Ray cluster through the command line, as users run it."""

import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rayrec.data import SyntheticConfig, write_synthetic

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
            pid_files = list(checkpoints.glob("*/worker_pids/rank1.pid"))
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_to_an_existing_cluster(tmp_path, synthetic_csv):
    ray_bin = Path(sys.executable).parent / "ray"
    port, dashboard_port, agent_port = _free_port(), _free_port(), _free_port()
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
