"""Training configuration, loadable from YAML (``rayrec train --config FILE.yaml``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrec.errors import ConfigError
from rayrec.models.config import ModelConfig


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating_threshold: float | None = Field(None, description="Keep only interactions with value >= this (implicit feedback).")
    kcore: int | None = Field(None, ge=1, description="Iteratively keep users and items with at least this many interactions.")


class FeatureSpec(BaseModel):
    """A registered feature extractor by name, with its options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Registered feature extractor name (see `rayrec plugins`).")
    options: dict = Field(default_factory=dict, description="Options of the feature extractor.")


class TrainConfig(BaseModel):
    """Everything ``rayrec train`` needs besides the data paths."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    item_features: list[FeatureSpec] = Field(
        default_factory=list, description="Feature extractors whose item vectors feed the item tower (content).")
    epochs: int = Field(200, ge=1, description="Upper bound on epochs; early stopping usually ends sooner.")
    batch_size: int = Field(128, ge=1, description="Users per batch (global, split over workers).")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    patience: int = Field(10, ge=1, description="Stop after this many evaluations without a better validation NDCG@10.")
    eval_every: int = Field(2, ge=1, description="Validate (and checkpoint) every this many epochs.")
    crop_probability: float = Field(0.5, ge=0, le=1, description="Chance to train a long history on a random earlier window.")
    seed: int = Field(0, description="Random seed.")
    num_workers: int = Field(1, ge=1, description="Ray Train data-parallel workers.")
    use_gpu: bool = Field(False, description="Train on GPUs (one per worker).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker; also its torch thread count.")
    max_failures: int = Field(2, ge=0, description="Worker failures tolerated; training resumes from the last checkpoint.")


def load_train_config(path: str | Path | None, **overrides) -> TrainConfig:
    """Read a YAML config (if given) and apply command-line overrides; errors name the field."""
    import yaml

    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of options at the top level")
    for key, value in overrides.items():
        if value is None:
            continue
        target = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    try:
        return TrainConfig(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}invalid training config: {problems}") from None
