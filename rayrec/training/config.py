"""Training configuration, loadable from YAML (``rayrec train --config FILE.yaml``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrec.config import parse_config, read_yaml_mapping, validation_problems
from rayrec.errors import ConfigError, UnknownComponentError
from rayrec.models.config import ModelConfig


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating_threshold: float | None = Field(None, description="Keep only interactions with value >= this (implicit feedback).")
    kcore: int | None = Field(None, ge=1, description="Iteratively keep users and items with at least this many interactions.")
    ray_data: bool = Field(True, description="When every --interactions input is Parquet (or CSV/TSV of at least "
                           "ray_data_min_delimited_mb), read and preprocess it with Ray Data: each training worker "
                           "reads its own shard, and in a model search the order-free candidates read it into "
                           "their own trial, never into the driver (false: read it into the driver).")
    ray_data_min_delimited_mb: float = Field(
        32.0, ge=0, description="CSV/TSV inputs of at least this many MB together are read with Ray Data too; "
        "smaller ones are read in the driver, which starts training sooner (about 1M rows of 32 bytes: the "
        "driver then peaks near 1 GB).")


class FeatureSpec(BaseModel):
    """A registered feature extractor by name, with its options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Registered feature extractor name (see `rayrec plugins`).")
    options: dict = Field(default_factory=dict, description="Options of the feature extractor.")


class SearchConfig(BaseModel):
    """Model selection: which candidate models ``rayrec train`` tries, and for how long."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Try several models and keep the best on validation (off: --no-search).")
    budget_s: float = Field(900.0, gt=0, description="Wall-clock budget of the whole search, in seconds (--budget).")
    candidates: list[str] | None = Field(
        None, description="Candidate names to consider (sasrec, als, sasrec_text); unset: all that apply to the data.")


class TrainConfig(BaseModel):
    """Everything ``rayrec train`` needs besides the data paths."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    item_features: list[FeatureSpec] = Field(
        default_factory=list, description="Feature extractors whose item vectors feed the item tower (content).")
    epochs: int = Field(200, ge=1, description="Upper bound on epochs; early stopping usually ends sooner.")
    batch_size: int | None = Field(
        None, ge=1, description="Users per batch (global, split over workers); unset: as many as hold about "
        "3,000 next-item positions on average, between 8 and 128 users.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate (betas 0.9, 0.98).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    sparse_item_updates: bool = Field(
        True, description="Under the sampled softmax, update only the item rows each batch touches (AdamW "
        "with the steps a row missed caught up when it next takes part) instead of the whole table every step; "
        "not with several GPU workers (NCCL has no sparse all-reduce).")
    patience: int = Field(
        10, ge=1, description="Stop after this many evaluations without a better trend of validation NDCG@10 "
        "(the mean of the last stopping_window evaluations).")
    stopping_window: int = Field(
        5, ge=1, description="Validations averaged for early stopping, so one lucky epoch does not keep "
        "training going; 1 stops on the raw score. The exported model is still the best raw epoch.")
    eval_every: int = Field(1, ge=1, description="Validate every this many epochs.")
    crop_probability: float = Field(0.5, ge=0, le=1, description="Chance to train a long history on a random earlier window.")
    final_fit_fraction: float = Field(
        0.1, ge=0, le=1, description="After early stopping, train the best model this fraction of its epochs "
        "more on the whole sequences, each user's held-out validation item included.")
    seed: int = Field(0, description="Random seed.")
    num_workers: int | None = Field(
        None, ge=1, description="Ray Train data-parallel workers; unset: one per 8 CPUs Ray sees.")
    use_gpu: bool = Field(False, description="Train on GPUs (one per worker).")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs reserved per worker, also its torch thread count; unset: an equal share of all.")
    max_failures: int = Field(2, ge=0, description="Worker failures tolerated; training resumes from the last checkpoint.")
    checkpoint_every_s: float = Field(
        60.0, gt=0, description="Checkpoint (and report to Ray Train) at most this often, and at the end.")
    search: SearchConfig = Field(default_factory=SearchConfig)


def load_train_config(path: str | Path | None, **overrides) -> TrainConfig:
    """Read a YAML config (if given) and apply command-line overrides; errors name the file
    and the field (:mod:`rayrec.config`)."""
    raw = read_yaml_mapping(path) if path is not None else {}
    for key, value in overrides.items():
        if value is None:
            continue
        target = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return parse_config(TrainConfig, raw, what="training config", where=path)


def check_components(config: TrainConfig) -> None:
    """Create every component ``config`` names and build a tiny model from them.

    A misspelt tower or extractor, or a bad option, then fails here in one line naming the
    field, before any data is read or a Ray worker starts.
    """
    from rayrec.models.factory import ItemInputs, build_two_tower
    from rayrec.plugins import create_component

    model = config.model
    checks = [("model.user_encoder", "encoder", model.user_encoder, model.user_encoder_options, "user"),
              ("model.item_encoder", "encoder", model.item_encoder, model.item_encoder_options, "item")]
    checks += [(f"item_features[{i}]", "feature_extractor", spec.name, spec.options, None)
               for i, spec in enumerate(config.item_features)]
    for field, kind, name, options, tower in checks:
        try:
            component = create_component(kind, name, options)
        except UnknownComponentError as exc:
            raise ConfigError(f"{field}: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"{field} {name!r}: invalid options: {validation_problems(exc)}") from None
        if tower is not None and component.kind != tower:
            raise ConfigError(f"{field}: {name!r} is a {component.kind} tower, not a {tower} tower")
    # The tiny model gets content vectors when features are configured, as training gives it.
    content = np.zeros((3, 4), dtype=np.float32) if config.item_features else None
    try:
        build_two_tower(model, num_items=2, item_inputs=ItemInputs(content=content))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None
