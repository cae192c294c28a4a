"""A corrupt or partial training checkpoint is named in a clear error, and resuming a run falls
back to the newest checkpoint of that run that still reads."""

from __future__ import annotations

import os

import pytest
import torch
from ray.train import Checkpoint

from rayrec.training.checkpoints import (CHECKPOINT_FILE, CheckpointError, delete_run, load_training_state,
                                         restore_training_state, run_exists, run_name_for)


def write_checkpoint(directory, epoch: int) -> None:
    directory.mkdir(parents=True)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": {"epoch": epoch}},
               directory / CHECKPOINT_FILE)


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def checkpoints(tmp_path):
    """Three checkpoints of one run, oldest to newest, named as Ray Train names them."""
    run = tmp_path / "storage" / "rayrec-train-model-0123abcd"
    dirs = [run / f"checkpoint_2025-01-0{i + 1}_10-00-00.000000" for i in range(3)]
    for epoch, directory in enumerate(dirs, start=1):
        write_checkpoint(directory, epoch)
    return run, dirs


#: How the workers get the checkpoint: a local directory, or a URI on a pyarrow filesystem.
ADDRESSES = [pytest.param(lambda d: Checkpoint.from_directory(str(d)), id="path"),
             pytest.param(lambda d: Checkpoint(f"file://{d}"), id="file-uri")]


@pytest.mark.parametrize("address", ADDRESSES)
def test_the_latest_readable_checkpoint_is_restored(checkpoints, address):
    _, dirs = checkpoints
    lines: list[str] = []
    assert restore_training_state(address(dirs[-1]), log=lines.append)["state"]["epoch"] == 3
    assert lines == []
    assert restore_training_state(None, log=lines.append) is None


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mapped (export)"])
def test_a_truncated_checkpoint_is_an_error_naming_the_file(checkpoints, mmap):
    _, dirs = checkpoints
    assert load_training_state(dirs[-1], mmap=mmap)["state"]["epoch"] == 3
    truncate(dirs[-1] / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint_2025-01-03_10-00-00.000000/training_state.pt "
                                              r"is corrupt or truncated"):
        load_training_state(dirs[-1], mmap=mmap)


@pytest.mark.parametrize("address", ADDRESSES)
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
def test_resume_skips_a_damaged_checkpoint_and_falls_back_to_the_previous_one(checkpoints, damage, address):
    _, dirs = checkpoints
    damage(dirs[-1] / CHECKPOINT_FILE)
    lines: list[str] = []
    assert restore_training_state(address(dirs[-1]), log=lines.append)["state"]["epoch"] == 2
    assert len(lines) == 1 and "checkpoint_2025-01-03" in lines[0] and "skipping" in lines[0]


def test_no_readable_checkpoint_means_starting_from_scratch(checkpoints):
    _, dirs = checkpoints
    for directory in dirs:
        truncate(directory / CHECKPOINT_FILE, keep=0.3)
    lines: list[str] = []
    assert restore_training_state(Checkpoint.from_directory(str(dirs[-1])), log=lines.append) is None
    assert sum("skipping" in line for line in lines) == 3 and "starting from scratch" in lines[-1]


def test_a_newer_checkpoint_is_never_a_fallback(checkpoints):
    """Only checkpoints written before the one Ray Train hands over count: a newer folder is
    one Ray Train never registered (a write cut short)."""
    _, dirs = checkpoints
    truncate(dirs[1] / CHECKPOINT_FILE)
    assert restore_training_state(Checkpoint.from_directory(str(dirs[1])), log=lambda line: None)["state"]["epoch"] == 1


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_runs_are_named_after_the_model_directory_and_can_be_replaced(tmp_path, checkpoints, uri):
    run, _ = checkpoints
    storage = f"file://{run.parent}" if uri else str(run.parent)
    assert run_exists(storage, run.name) and not run_exists(storage, "another-run")
    delete_run(storage, run.name)
    assert not run.exists() and not run_exists(storage, run.name)
    assert run_name_for(tmp_path / "model") == run_name_for(tmp_path / "model")
    assert run_name_for(tmp_path / "model").startswith("rayrec-train-model-")
    assert run_name_for(tmp_path / "a" / "model") != run_name_for(tmp_path / "b" / "model")
