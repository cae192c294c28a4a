"""Writing the self-contained model directory from the final training state."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rayrec
from rayrec.models.factory import build_two_tower
from rayrec.training.config import TrainConfig
from rayrec.training.prepare import PreparedData

MODEL_FORMAT = 1


def loop_config_for(config: TrainConfig, threads: int) -> dict[str, Any]:
    """The plain-dict config every worker receives."""
    return {
        "model": config.model.model_dump(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "patience": config.patience,
        "eval_every": config.eval_every,
        "crop_probability": config.crop_probability,
        "seed": config.seed,
        "threads": threads,
        "checkpoint_every_s": config.checkpoint_every_s,
    }


def _training_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    validated = [h for h in history if h.get("val_ndcg@10") is not None]
    figure, (loss_axis, ndcg_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [h["loss"] for h in history], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ndcg_axis.plot([h["epoch"] for h in validated], [h["val_ndcg@10"] for h in validated], marker="o",
                   color="tab:green")
    ndcg_axis.set(xlabel="epoch", ylabel="validation NDCG@10", title="Validation NDCG@10")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def export_model_dir(data: PreparedData, config: TrainConfig, saved: dict[str, Any], out_dir: Path,
                     extra_metrics: dict[str, Any] | None = None) -> Path:
    """Write the best weights and everything serving needs into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = saved["state"]
    weights = state["best_model"] if state.get("best_model") is not None else saved["model"]
    model = build_two_tower(config.model, data.num_items, data.item_inputs,
                            num_user_feature_values=len(data.user_feature_vocab))
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        item_embeddings = model.item_table()[1:].numpy().astype(np.float32)
    torch.save(weights, out_dir / "weights.pt")
    np.save(out_dir / "item_embeddings.npy", item_embeddings)
    popularity = np.bincount(np.concatenate(data.sequences) - 1, minlength=data.num_items).astype(np.float32)
    np.save(out_dir / "item_popularity.npy", popularity)
    data.user_vocab.save(out_dir / "user_vocab.json")
    data.item_vocab.save(out_dir / "item_vocab.json")
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    np.savez_compressed(out_dir / "histories.npz", lengths=lengths,
                        items=np.concatenate(data.sequences) - 1 if data.sequences else np.zeros(0, np.int64))
    inputs = data.item_inputs
    arrays = {k: v for k, v in {"category_ids": inputs.category_ids, "content": inputs.content}.items() if v is not None}
    if arrays:
        np.savez_compressed(out_dir / "item_features.npz", **arrays)
    if data.user_features is not None:
        np.save(out_dir / "user_features.npy", data.user_features)
    if data.items is not None:
        with open(out_dir / "items.jsonl", "w") as handle:
            for record in data.items.records():
                handle.write(json.dumps(record) + "\n")
    version = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    (out_dir / "config.json").write_text(json.dumps({
        "format": MODEL_FORMAT,
        "rayrec_version": rayrec.__version__,
        "model_version": version,
        "train_config": config.model_dump(),
        "num_items": data.num_items,
        "num_users": len(data.user_vocab),
        "num_interactions": data.num_interactions,
        "dim": int(item_embeddings.shape[1]),
        "category_vocab": data.category_vocab,
        "num_categories": inputs.num_categories,
        "user_feature_vocab": data.user_feature_vocab,
        "content_dim": None if inputs.content is None else int(inputs.content.shape[1]),
        "dataset": data.name,
    }, indent=2))
    history = state.get("history", [])
    metrics = {
        "model_version": version,
        "best_epoch": state.get("best_epoch"),
        "model_kind": "two_tower",
        "best_val_ndcg@10": state.get("best_ndcg"),
        "best_val_hr@10": state.get("best_hr"),
        "epochs_trained": state.get("epoch"),
        "history": history,
        **(extra_metrics or {}),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if history:
        _training_curve(history, out_dir / "training_curve.png")
    return out_dir
