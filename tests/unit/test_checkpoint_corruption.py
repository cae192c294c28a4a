"""A corrupt or partial training checkpoint is named in a clear error, and ``--resume`` falls
back to the newest checkpoint that still reads."""

from __future__ import annotations

import os
import time

import pytest
import torch

from rayrec.training.trainer import latest_checkpoint
from rayrec.training.worker import CHECKPOINT_FILE, CheckpointError, load_training_state


def write_checkpoint(directory, epoch: int, mtime: float) -> None:
    directory.mkdir(parents=True)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": {"epoch": epoch}},
               directory / CHECKPOINT_FILE)
    os.utime(directory / CHECKPOINT_FILE, (mtime, mtime))


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def checkpoints(tmp_path):
    """Three checkpoints, oldest to newest, like Ray Train leaves under OUT/.checkpoints."""
    root = tmp_path / ".checkpoints"
    now = time.time()
    dirs = [root / "rayrec-train-1" / f"checkpoint_00000{i}" for i in range(3)]
    for epoch, directory in enumerate(dirs, start=1):
        write_checkpoint(directory, epoch, now - 100 + 10 * epoch)
    return root, dirs


def test_a_readable_checkpoint_loads_and_is_the_newest(checkpoints):
    root, dirs = checkpoints
    assert latest_checkpoint(root, log=lambda line: None) == dirs[-1]
    assert load_training_state(dirs[-1])["state"]["epoch"] == 3


def test_a_truncated_checkpoint_is_an_error_naming_the_file(checkpoints):
    _, dirs = checkpoints
    truncate(dirs[-1] / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint_000002/training_state.pt is corrupt or truncated"):
        load_training_state(dirs[-1])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda path: truncate(path), id="truncated"),
        pytest.param(lambda path: path.write_bytes(b""), id="empty"),
        pytest.param(lambda path: path.write_bytes(os.urandom(4096)), id="garbage"),
        pytest.param(lambda path: torch.save({"model": {}}, path), id="incomplete"),
        pytest.param(lambda path: path.unlink(), id="missing"),
    ],
)
def test_resume_skips_damaged_checkpoints_and_falls_back_to_the_previous_one(checkpoints, damage):
    root, dirs = checkpoints
    damage(dirs[-1] / CHECKPOINT_FILE)
    lines: list[str] = []
    assert latest_checkpoint(root, log=lines.append) == dirs[-2]
    if (dirs[-1] / CHECKPOINT_FILE).exists():  # a skipped file is reported; a missing one is never a candidate
        assert len(lines) == 1 and "checkpoint_000002" in lines[0] and "skipping" in lines[0]


def test_no_readable_checkpoint_means_starting_from_scratch(checkpoints):
    root, dirs = checkpoints
    for directory in dirs:
        truncate(directory / CHECKPOINT_FILE, keep=0.3)
    lines: list[str] = []
    assert latest_checkpoint(root, log=lines.append) is None
    assert len(lines) == 3
    assert latest_checkpoint(root / "nothing-here", log=lines.append) is None
