"""Writing the self-contained model directory from the final training state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrec.errors import UnknownComponentError
from rayrec.models import ann
from rayrec.models.factory import build_two_tower
from rayrec.models.order_free import CATEGORY_VECTORS_FILE, category_mean_vectors
from rayrec.plugins import get_component
from rayrec.schema import ITEM_ID, is_searchable
from rayrec.training.config import TrainConfig
from rayrec.training.model_dir import write_model_dir
from rayrec.training.prepare import PreparedData

#: 2: SASRec's block layout became an option (``block_style``), the paper's by default.
MODEL_FORMAT = 2


def loop_config_for(config: TrainConfig, threads: int) -> dict[str, Any]:
    """The plain-dict config every worker receives."""
    return {
        "model": config.model.model_dump(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "sparse_item_updates": config.sparse_item_updates,
        "patience": config.patience,
        "stopping_window": config.stopping_window,
        "eval_every": config.eval_every,
        "crop_probability": config.crop_probability,
        "seed": config.seed,
        "threads": threads,
        "checkpoint_every_s": config.checkpoint_every_s,
        "final_fit_fraction": config.final_fit_fraction,
    }


def _training_curve(history: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no {path.name}: pip install 'rayrec[plot]' to draw the training curve", flush=True)
        return

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
                     extra_metrics: dict[str, Any] | None = None, shortlists: bool = False) -> Path:
    """Write the best weights and everything serving needs into ``out_dir``; returns it.
    ``shortlists``: also the validation shortlists of the model validation chose (a
    selection candidate's, :mod:`rayrec.training.shortlists`)."""
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
    inputs = data.item_inputs
    arrays = {k: v for k, v in {"category_ids": inputs.category_ids, "content": inputs.content}.items() if v is not None}
    if arrays:
        np.savez_compressed(out_dir / "item_features.npz", **arrays)
    if data.user_features is not None:
        np.save(out_dir / "user_features.npy", data.user_features)
    # Where the item tower does not read categories (the default), serving places a new item
    # that has categories but no text among its kind with these, as the order-free models do.
    table = category_mean_vectors(item_embeddings, inputs.category_ids, inputs.num_categories)
    if table is not None:
        np.save(out_dir / CATEGORY_VECTORS_FILE, table)
    text_index = _write_search_index(out_dir, config, data, model)
    history = state.get("history", [])
    write_model_dir(
        out_dir, data, model_kind="two_tower", model_format=MODEL_FORMAT, item_embeddings=item_embeddings,
        config={
            "train_config": config.model_dump(),
            "category_vocab": data.category_vocab,
            "num_categories": inputs.num_categories,
            "user_feature_vocab": data.user_feature_vocab,
            "content_dim": None if inputs.content is None else int(inputs.content.shape[1]),
            **({"text_index": text_index} if text_index else {}),
        },
        metrics={
            "best_epoch": state.get("best_epoch"),
            "best_val_ndcg@10": state.get("best_ndcg"),
            "best_val_hr@10": state.get("best_hr"),
            "epochs_trained": state.get("epoch"),
            "batch_size": state.get("batch_size"),
            "item_table_updates": state.get("item_table_updates"),
            "final_epochs_with_validation_items": state.get("final_epochs", 0),
            "history": history,
            **(extra_metrics or {}),
        },
    )
    if history:
        _training_curve(history, out_dir / "training_curve.png")
    if shortlists:
        if state.get("validation_model") is not None:  # the final fit moved on from it
            model.load_state_dict(state["validation_model"])
        _write_validation_shortlists(data, config, model, out_dir)
    return out_dir


def _write_search_index(out_dir: Path, config: TrainConfig, data: PreparedData,
                        model: torch.nn.Module) -> dict[str, Any] | None:
    """The text graph of ``POST /search`` for big catalogues (``ann.write_text_index``), over the
    tower's content vectors: serving searches those when the model's only item feature
    encodes queries, so the graph is built here once instead of in every scorer replica."""
    content = getattr(model.item_tower, "content", None)
    if content is None or len(config.item_features) != 1 or len(data.item_vocab) < ann.EXPORT_MIN_ITEMS:
        return None
    try:
        extractor = get_component("feature_extractor", config.item_features[0].name)
    except UnknownComponentError:  # not installed here: serving cannot search with it either
        return None
    if not extractor.supports_queries:
        return None
    records = {record[ITEM_ID]: record for record in data.items.records()} if data.items is not None else {}
    searchable = np.array([is_searchable(records.get(item_id, {})) for item_id in data.item_vocab.ids], dtype=bool)
    return ann.write_text_index(out_dir, content[1:].numpy(), searchable)


def _write_validation_shortlists(data: PreparedData, config: TrainConfig, model: torch.nn.Module,
                                 out_dir: Path) -> None:
    """``model``'s (in eval mode, with the weights validation chose) shortlists."""
    from rayrec.training.loop import score_histories
    from rayrec.training.prepare import validation_split
    from rayrec.training.shortlists import write_shortlists

    with torch.no_grad():
        table = model.item_table()
    features = data.user_features if model.user_feature_embedding is not None else None
    # The same validation users as the order-free candidates' shortlists: all of them, read
    # into this process even where training read its shards through Ray Data.
    train, targets = validation_split(data.in_memory().sequences, zero_based=True)
    write_shortlists(out_dir, lambda rows, histories: score_histories(
        model, [h + 1 for h in histories], config.model.max_len, table,
        user_features=None if features is None else features[rows]), train, targets)


def worker_metrics(state: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's record of the workers: what each one's shard held (Ray Data input only),
    its peak resident memory (MB, by rank) and when the first training step ran (unix time)."""
    shards = state.get("worker_shards")
    recorded = {} if not shards else {"input": "ray_data", "worker_shards": shards}
    for key in ("worker_peak_rss_mb", "first_step_at"):
        if state.get(key) is not None:
            recorded[key] = state[key]
    return recorded
