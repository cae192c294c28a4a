"""A wrong component name or option in ``rayrec train`` fails at once, in one line, before Ray."""

import os
import subprocess
import sys

import pytest

RAYREC = [sys.executable, "-m", "rayrec"]


def run_train(tmp_path, *extra):
    # An unreachable cluster address: had anything tried to start or join Ray, the error would
    # be about connecting, not about the component.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    return subprocess.run(
        RAYREC + ["train", "--interactions", "synthetic:users=30", "--out", str(tmp_path / "model"), *extra],
        capture_output=True, text=True, timeout=120, env=env)


def test_unknown_user_encoder_is_one_line_naming_the_choices(tmp_path):
    result = run_train(tmp_path, "--user-encoder", "transformer")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "model.user_encoder" in lines[0] and "'transformer'" in lines[0] and "sasrec" in lines[0]
    assert not (tmp_path / "model").exists()  # no model directory and no .checkpoints left behind


@pytest.mark.parametrize("config_text, expected", [
    ("model:\n  user_encoder_options: {num_blocks: 0}\n", "num_blocks"),
    ("model:\n  user_encoder_options: {dropout: 0.5, heads: 2}\n", "heads"),
    ("model:\n  user_encoder: item_tower\n", "not a user tower"),
    ("item_features:\n  - name: no_such_extractor\n", "item_features[0]"),
    ("model:\n  dim: 30\n  user_encoder_options: {num_heads: 4}\n", "divisible"),
])
def test_bad_component_options_fail_before_training(tmp_path, config_text, expected):
    config = tmp_path / "train.yaml"
    config.write_text(config_text)
    result = run_train(tmp_path, "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "model").exists()
