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

from rayrec.testing import write_toy_model
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


class RayrecServe:
    """``rayrec serve`` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        model = write_toy_model(tmp_path / "model", num_items=300, dim=16)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rayrec", "serve", "--model", str(model), "--port", str(self.port),
             "--state", str(tmp_path / "state.db"), "--num-cpus", "2", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None and time.time() < deadline, self.output[-3000:]
            time.sleep(0.5)
        return next(line for line in self.lines if text in line)

    def ctrl_c(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        finally:
            self.reader.join(timeout=10)
        return self.proc.returncode


def test_rayrec_serve_prints_the_url_serves_and_stops_on_ctrl_c(tmp_path):
    server = RayrecServe(tmp_path)
    try:
        server.wait_for_line(f"{server.url}/")  # "prints the URL when ready"
        assert wait_healthy(server.url, server.proc)["model_version"] == "toy-1"
        response = httpx.post(server.url + "/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
    finally:
        returncode = server.ctrl_c()
    assert returncode == 0, server.output[-3000:]
    assert "stopped" in server.output
    assert (tmp_path / "state.db").exists()


def test_rayrec_serve_direct_ingress_prints_the_replica_url_which_answers(tmp_path):
    server = RayrecServe(tmp_path, "--topology", "ingress", "--direct-ingress")
    try:
        direct_url = server.wait_for_line("direct to an ingress replica").split()[-1].rstrip("/")
        assert direct_url != server.url
        response = httpx.post(direct_url + "/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        proxied = httpx.post(server.url + "/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert proxied.json() == response.json()  # --port still answers, through the proxy
    finally:
        returncode = server.ctrl_c()
    assert returncode == 0, server.output[-3000:]


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
