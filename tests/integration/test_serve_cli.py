"""``rayrec serve`` and ``serve run deploy/serve.yaml`` start the same graph (each its own Ray)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rayrec.serving.toy_model import write_toy_model
from rayrec.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the server exited early"
        try:
            response = httpx.get(url + "/healthz", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the server did not become healthy")


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 120) -> str:
    proc.send_signal(sig)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError("the server did not stop on Ctrl-C:\n" + output[-3000:])
    return output


def env():
    environment = dict(os.environ)
    environment.pop("RAY_ADDRESS", None)
    return environment


def test_rayrec_serve_prints_the_url_serves_and_stops_on_ctrl_c(tmp_path):
    model = write_toy_model(tmp_path / "model", num_items=300, dim=16)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayrec", "serve", "--model", str(model), "--port", str(port),
         "--state", str(tmp_path / "state.db"), "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while not any(f"{url}/" in line for line in lines):  # "prints the URL when ready"
            assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        assert wait_healthy(url, proc)["model_version"] == "toy-1"
        response = httpx.post(url + "/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output[-3000:]
    assert "stopped" in output
    assert (tmp_path / "state.db").exists()


def test_rayrec_serve_direct_ingress_prints_the_replica_url_which_answers(tmp_path):
    model = write_toy_model(tmp_path / "model", num_items=300, dim=16)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayrec", "serve", "--model", str(model), "--port", str(port), "--topology", "ingress",
         "--direct-ingress", "--state", str(tmp_path / "state.db"), "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while not any("direct to an ingress replica" in line for line in lines):
            assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        [line] = [line for line in lines if "direct to an ingress replica" in line]
        direct_url = line.split()[-1].rstrip("/")
        assert direct_url != f"http://127.0.0.1:{port}"
        response = httpx.post(direct_url + "/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        proxied = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert proxied.json() == response.json()  # --port still answers, through the proxy
    finally:
        output = stop(proc)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)[-3000:] + output


@pytest.mark.skipif(shutil.which("serve", path=str(Path(sys.executable).parent)) is None, reason="no serve CLI")
def test_serve_run_deploy_yaml(tmp_path):
    model = write_toy_model(tmp_path / "model", num_items=300, dim=16)
    port = free_port()
    config = yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args["model_dir"] = str(model)
    args["state"] = f"sqlite:///{tmp_path / 'state.db'}"
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).parent / "serve")
    proc = subprocess.Popen(
        [serve_cli, "run", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=tmp_path, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        response = httpx.post(url + "/recommend", json={"user_id": "user2", "k": 2}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 2
    finally:
        stop(proc)
