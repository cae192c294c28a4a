"""Training checkpoints: what one holds, the check that it is whole, and where a run keeps them.

A two-tower run is a *named* Ray Train run (``RunConfig(name=run_name_for(out_dir),
storage_path=...)``). Ray Train records every checkpoint it is handed in the run's folder
under the storage path, and a later run with the same name and storage path starts its
workers from the newest one (``ray.train.get_checkpoint()``): that is how ``rayrec train
--resume`` continues after a killed driver, and how the workers of one run continue after a
worker failure. This module adds what Ray does not check: that the checkpoint file is whole
(:func:`load_training_state`), falling back to the run's checkpoint before it when it is not
(:func:`restore_training_state`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable

import torch

from rayrec.errors import RayrecError

CHECKPOINT_FILE = "training_state.pt"
#: What a complete checkpoint holds; anything less is a partial write.
CHECKPOINT_KEYS = ("model", "optimizer", "state")
#: The prefix of the folders Ray Train names its checkpoints (``checkpoint_<date and time>``,
#: so that their names sort in the order they were written).
RAY_CHECKPOINT_PREFIX = "checkpoint_"
RUN_PREFIX = "rayrec-train"


class CheckpointError(RayrecError):
    """A training checkpoint is missing, truncated, corrupt or incomplete; names its path."""


def load_training_state(directory: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The saved training state in checkpoint ``directory``, checked to be complete.

    ``mmap``: map the tensors from the file instead of reading them, so that only those read
    take memory (export reads the kept weights, never the optimizer's moments: at a million
    items those are twice the item table, about 1 GB at dim 128). The file's structure is still
    checked (a truncated file does not open), not its tensors' bytes.

    Raises :class:`CheckpointError` naming the file when it is missing, cannot be unpickled
    (truncated or corrupt) or lacks the model, optimizer or loop state.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file missing (an incomplete checkpoint directory)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "unusable"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "delete it to resume from an earlier checkpoint"
        ) from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return saved


def _earlier_checkpoints(checkpoint) -> list:
    """The run's other checkpoints written before ``checkpoint`` (a ``ray.train.Checkpoint``),
    newest first, on whatever filesystem the run is stored."""
    import pyarrow.fs
    from ray.train import Checkpoint

    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1) if "/" in checkpoint.path else ("", checkpoint.path)
    try:
        entries = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent or ".", allow_not_found=True))
    except OSError:
        return []
    earlier = sorted((entry.base_name for entry in entries if entry.type == pyarrow.fs.FileType.Directory
                      and entry.base_name.startswith(RAY_CHECKPOINT_PREFIX) and entry.base_name < name),
                     reverse=True)
    return [Checkpoint(path=f"{parent}/{base}", filesystem=checkpoint.filesystem) for base in earlier]


def restore_training_state(checkpoint, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The training state in ``checkpoint`` (a ``ray.train.Checkpoint``, the newest of its run),
    or, where that one is damaged, in the newest earlier checkpoint of the same run that
    reads; None when none does (training then starts from scratch).

    A damaged checkpoint (a crash while it was written, a bad disk) is skipped with a line
    naming its file.
    """
    if checkpoint is None:
        return None
    for candidate in [checkpoint, *_earlier_checkpoints(checkpoint)]:
        try:
            with candidate.as_directory() as directory:
                return load_training_state(directory)
        except CheckpointError as exc:
            log(f"skipping unusable checkpoint: {exc}")
        except OSError as exc:  # removed meanwhile, unreadable storage
            log(f"skipping unusable checkpoint {candidate.path}: {exc}")
    log("no usable checkpoint in this run; starting from scratch")
    return None


def run_name_for(out_dir: str | Path) -> str:
    """The Ray Train run name of a training into ``out_dir``: the same for every
    ``rayrec train`` into that directory, so ``--resume`` finds the run a killed driver left,
    and different for two directories that share a name and a storage path."""
    resolved = str(Path(out_dir).resolve())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(resolved).name).strip("-") or "model"
    return f"{RUN_PREFIX}-{slug}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


def storage_location(storage: str | Path):
    """``(pyarrow filesystem, path on it)`` of a storage path: a local path (made absolute)
    or any URI pyarrow's filesystems understand (``file://``, ``s3://``, ``gs://``, ...)."""
    import pyarrow.fs

    storage = str(storage)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return pyarrow.fs.FileSystem.from_uri(storage)


def storage_path_for_ray(storage: str | Path) -> str:
    """``storage`` as ``RunConfig(storage_path=...)`` takes it: URIs as given, local paths absolute."""
    storage = str(storage)
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def run_exists(storage: str | Path, run_name: str) -> bool:
    """Whether ``storage`` holds a run folder named ``run_name``."""
    import pyarrow.fs

    filesystem, root = storage_location(storage)
    return filesystem.get_file_info(f"{root.rstrip('/')}/{run_name}").type != pyarrow.fs.FileType.NotFound


def delete_run(storage: str | Path, run_name: str) -> None:
    """Remove run ``run_name`` from ``storage``, so a run of that name starts from scratch."""
    filesystem, root = storage_location(storage)
    if run_exists(storage, run_name):
        filesystem.delete_dir(f"{root.rstrip('/')}/{run_name}")
