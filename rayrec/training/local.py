"""In-process training with the same worker loop, for tests, notebooks and one-core laptops."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from rayrec.schema import Dataset
from rayrec.training.config import TrainConfig
from rayrec.training.export import export_model_dir, loop_config_for, worker_metrics
from rayrec.training.prepare import PreparedData, prepare
from rayrec.training.checkpoints import CHECKPOINT_FILE, load_training_state
from rayrec.training.worker import run_worker


class LocalContext:
    """A single-worker context keeping the latest checkpoint in a directory."""

    rank = 0
    world_size = 1
    node_id = "0" * 8  # no Ray node
    device = torch.device("cpu")

    def __init__(self, checkpoint_root: Path) -> None:
        self.checkpoint_root = checkpoint_root
        self.reports: list[dict[str, Any]] = []

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return list(values)

    def prepare_model(self, module: torch.nn.Module, apart=()) -> torch.nn.Module:  # one worker: no DDP
        return module.to(self.device)

    def average_row_gradient(self, parameter: torch.nn.Parameter) -> None:  # one worker: its own
        return None

    def restore_training_state(self, log: Callable[[str], None]) -> dict[str, Any] | None:
        latest = self.checkpoint_root / "latest"
        return load_training_state(latest) if (latest / CHECKPOINT_FILE).exists() else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is not None:
            staging = self.checkpoint_root / "staging"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint_dir, staging)
            latest = self.checkpoint_root / "latest"
            shutil.rmtree(latest, ignore_errors=True)
            staging.rename(latest)


def train_prepared_in_process(data: PreparedData, out_dir: str | Path, config: TrainConfig,
                              log: Callable[[str], None] = print, shortlists: bool = False,
                              initial_weights: dict[str, Any] | None = None) -> Path:
    """Train on already-prepared data in this process and write the model directory
    (``shortlists``: with the validation shortlists, :mod:`rayrec.training.shortlists`;
    ``initial_weights``: a warm start's, :mod:`rayrec.training.warm_start`)."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="rayrec-checkpoints-") as checkpoints:
        context = LocalContext(Path(checkpoints))
        loop_config = loop_config_for(config, threads=max(1, torch.get_num_threads()))
        run_worker(loop_config, {**data.to_payload(), "initial_weights": initial_weights}, context, log=log)
        saved = context.restore_training_state(log)
    return export_model_dir(data, config, saved, out_dir, shortlists=shortlists,
                            extra_metrics=worker_metrics(saved["state"]))


def train_in_process(dataset: Dataset, out_dir: str | Path, config: TrainConfig | None = None,
                     log: Callable[[str], None] = print) -> Path:
    """Prepare ``dataset``, train a model in this process (no Ray) and write it to ``out_dir``."""
    config = config or TrainConfig()
    data = prepare(dataset, rating_threshold=config.data.rating_threshold, kcore=config.data.kcore,
                   item_feature_extractors=[f.model_dump() for f in config.item_features])
    return train_prepared_in_process(data, out_dir, config, log=log)
