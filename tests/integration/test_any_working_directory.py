"""rayrec runs from any folder, including the one that holds a clone named ``rayrec/``.

Such a clone (no ``__init__.py`` at its top, a ``plugins/`` folder inside) used to be imported
as a namespace package ``rayrec`` ahead of an editable install: in ``python -m rayrec`` and in
every Ray worker, which get the driver's working directory first on their path. Then
``from rayrec.plugins import create_component`` failed with "unknown location".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rayrec.testing import free_port, write_toy_model

pytestmark = pytest.mark.integration

RAYREC_SCRIPT = str(Path(sys.executable).parent / "rayrec")


@pytest.fixture
def folder_holding_a_clone(tmp_path) -> Path:
    """A folder whose ``rayrec/`` looks like a clone: the package and the plugins inside, no ``__init__.py``."""
    clone = tmp_path / "rayrec"
    for inside in ("rayrec/cli", "plugins/rayrec-text", "tests", "deploy"):
        (clone / inside).mkdir(parents=True)
    (clone / "README.md").write_text("a clone\n")
    return tmp_path


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)
    return env


def test_python_dash_m_rayrec_imports_the_installed_package(folder_holding_a_clone):
    listed = subprocess.run([sys.executable, "-m", "rayrec", "plugins"], cwd=folder_holding_a_clone,
                            capture_output=True, text=True, timeout=300, env=environment())
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "category_diversity" in listed.stdout


def test_rayrec_train_on_ray_workers(folder_holding_a_clone, tmp_path):
    out = tmp_path / "model"
    trained = subprocess.run(
        [RAYREC_SCRIPT, "train", "--interactions", "synthetic:users=200,items=50,events=10", "--out", str(out),
         "--epochs", "1", "--no-search"],
        cwd=folder_holding_a_clone, capture_output=True, text=True, timeout=600, env=environment())
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    assert "unknown location" not in trained.stderr
    assert (out / "metrics.json").exists()


@pytest.mark.slow
def test_rayrec_serve_replicas(folder_holding_a_clone, tmp_path):
    model = write_toy_model(tmp_path / "served", num_items=100, dim=8)
    port = free_port()
    server = subprocess.Popen(
        [RAYREC_SCRIPT, "serve", "--model", str(model), "--port", str(port), "--state", str(tmp_path / "state.db"),
         "--num-cpus", "2"],
        cwd=folder_holding_a_clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(),
        start_new_session=True)
    try:
        deadline = time.time() + 240
        healthy = False
        while not healthy and time.time() < deadline and server.poll() is None:
            try:  # the proxy answers 404 until the application is deployed
                healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert healthy, "rayrec serve did not become healthy"
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3, answer.text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            output, _ = server.communicate()
    assert "unknown location" not in output, output[-3000:]
