"""The training loop each data-parallel worker runs, independent of how it was launched.

:mod:`rayrec.training.trainer` runs it on Ray Train workers; :mod:`rayrec.training.local`
runs it in the current process. Both hand it a :class:`WorkerContext`, which is the only
place that knows about Ray.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import ItemInputs, build_two_tower
from rayrec.training.checkpoints import CHECKPOINT_FILE, CheckpointError, load_training_state  # noqa: F401
from rayrec.training.batches import AUTO_BATCH_POSITIONS, auto_batch_size
from rayrec.training.optimizer import build_optimizer, row_wise_item_updates_apply
from rayrec.training.loop import NextItemLoss, StepProgress, next_item_metrics, train_one_epoch
from rayrec.training.prepare import MAX_VALIDATION_USERS, MIN_SEQUENCE, sequences_from_payload, validation_split


class WorkerContext(Protocol):
    rank: int
    world_size: int
    node_id: str  # the Ray node this worker runs on (hex)
    device: torch.device  # where this worker's model and batches live

    def all_reduce_sum(self, values: list[float]) -> list[float]: ...

    def prepare_model(self, module: torch.nn.Module, apart: Sequence[torch.nn.Parameter] = ()) -> torch.nn.Module:
        """``module`` ready to train data-parallel (on Ray Train: wrapped in DDP when
        ``world_size > 1``, but for the ``apart`` parameters), or itself."""
        ...

    def average_row_gradient(self, parameter: torch.nn.Parameter) -> None:
        """Average an ``apart`` parameter's sparse gradient over the workers (a collective)."""
        ...

    def restore_training_state(self, log: Callable[[str], None]) -> dict[str, Any] | None:
        """The newest readable checkpoint's state (:func:`load_training_state`), or None."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_worker(loop_config: dict[str, Any], payload: dict[str, Any], context: WorkerContext,
               log: Callable[[str], None] = print) -> None:
    """Train, validate every ``eval_every`` epochs and stop early (or at ``deadline``);
    checkpoint every ``checkpoint_every_s`` and at the end; resumable.

    ``loop_config["sequence_shards"]``: the payload's sequences are this worker's own users
    (its shard of a Ray Dataset), not every user's; the item counts and step counts are then
    agreed on with the other workers, and each validates its own users."""
    torch.set_num_threads(max(1, int(loop_config["threads"])))
    device = context.device
    seed = int(loop_config["seed"])
    model_config = ModelConfig(**loop_config["model"])
    sequences = sequences_from_payload(payload)
    sharded = bool(loop_config.get("sequence_shards"))
    train_sequences, validation_targets = validation_split(
        sequences, max_users=math.ceil(MAX_VALIDATION_USERS / context.world_size) if sharded else MAX_VALIDATION_USERS)

    torch.manual_seed(seed)
    model = build_two_tower(
        model_config,
        payload["num_items"],
        ItemInputs(payload["category_ids"], payload["num_categories"], payload["content"]),
        num_user_feature_values=payload.get("num_user_feature_values", 0),
    ).to(device)
    # User features reach the model only when it was built to use them.
    user_features = payload.get("user_features") if model.user_feature_embedding is not None else None
    loss_kind = model_config.resolved_loss(payload["num_items"])
    row_wise, why_not = row_wise_item_updates_apply(
        model, loss_kind=loss_kind, wanted=bool(loop_config.get("sparse_item_updates", True)),
        device=device, world_size=context.world_size)
    if context.rank == 0 and loss_kind == "sampled":
        log("item table: updated row by row (the rows each batch touches)" if row_wise
            else f"item table: updated densely ({why_not})")
    optimizer = build_optimizer(model, learning_rate=loop_config["learning_rate"],
                                weight_decay=loop_config["weight_decay"], item_rows_row_wise=row_wise)
    counts = np.bincount(np.concatenate(train_sequences) if train_sequences else np.zeros(0, np.int64),
                         minlength=payload["num_items"] + 1).astype(np.float64)
    if sharded:  # the popularity of the whole data, as every worker sees it unsharded
        counts = np.asarray(context.all_reduce_sum(counts.tolist()))
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1) / max(1.0, counts.sum()))).float().to(device)

    state: dict[str, Any] = {"epoch": 0, "best_ndcg": -1.0, "best_hr": None, "best_epoch": -1,
                             "evaluations_without_gain": 0, "history": [], "best_model": None}
    saved = context.restore_training_state(log if context.rank == 0 else (lambda line: None))
    if saved is not None:
        model.load_state_dict({k: v.to(device) for k, v in saved["model"].items()})
        optimizer.load_state_dict(saved["optimizer"], log=log if context.rank == 0 else (lambda line: None))
        state = saved["state"]
        if context.rank == 0:
            log(f"resumed from checkpoint after epoch {state['epoch']} (best validation NDCG@10 "
                f"{max(state['best_ndcg'], 0):.4f} at epoch {state['best_epoch']})")
    elif payload.get("initial_weights") is not None:
        # A warm start (rayrec train --init-from): the previous model's weights, its items'
        # rows mapped onto this vocabulary (rayrec.training.warm_start).
        model.load_state_dict({k: v.to(device) for k, v in payload["initial_weights"].items()})
        if context.rank == 0:
            log("warm start: weights from the previous model")
    # Several workers average the id table's sparse gradient themselves, not through DDP
    # (rayrec.training.optimizer.average_row_gradient says why).
    apart = [model.item_tower.id_embedding.weight] if row_wise and context.world_size > 1 else []
    loss_module = context.prepare_model(NextItemLoss(
        model, loss_kind=loss_kind, log_q=log_q, num_uniform_negatives=model_config.num_uniform_negatives,
        temperature=model_config.temperature), apart=apart)
    after_backward = (lambda: context.average_row_gradient(apart[0])) if apart else None

    # Users with at least one next-item example; each worker trains on its own shard.
    def shard_of(user_sequences: list[np.ndarray]) -> tuple[np.ndarray, int | None]:
        """This worker's users with at least one next-item example, and, data-parallel, the
        steps per epoch every worker takes: DDP all-reduces the gradients in every step, so
        a worker with a smaller shard repeats batches rather than leave the others waiting.
        One worker takes its own batches (None)."""
        trainable = np.array([u for u, s in enumerate(user_sequences) if len(s) >= MIN_SEQUENCE], dtype=np.int64)
        if context.world_size == 1:
            return trainable, None
        if sharded:
            return trainable, int(max(math.ceil(n / local_batch) for n in per_worker(len(trainable))))
        steps = max(1, math.ceil(len(trainable) / context.world_size / local_batch))
        return trainable[context.rank:: context.world_size], steps

    def per_worker(value: float) -> list[float]:
        """Every worker's ``value``, in rank order (a collective: all workers call it)."""
        mine = [0.0] * context.world_size
        mine[context.rank] = float(value)
        return context.all_reduce_sum(mine)

    batch_size = loop_config["batch_size"]
    if batch_size is None:
        supervised = [min(len(s) - 1, model_config.max_len) for s in train_sequences if len(s) >= MIN_SEQUENCE]
        total, count = float(sum(supervised)), float(len(supervised))
        if sharded:
            total, count = context.all_reduce_sum([total, count])
        batch_size = auto_batch_size(total / max(1.0, count))
        if context.rank == 0 and state["epoch"] == 0:
            log(f"batches of {batch_size} users (about {AUTO_BATCH_POSITIONS:,} next-item positions; "
                f"a user's history gives {total / max(1.0, count):.0f} on average)")
    state["batch_size"] = batch_size
    state["item_table_updates"] = "row_wise" if row_wise else "dense"
    local_batch = max(1, batch_size // context.world_size)
    shard, steps_per_epoch = shard_of(train_sequences)
    validation_users = np.flatnonzero(validation_targets > 0)
    if not sharded:
        validation_users = validation_users[context.rank:: context.world_size]
    epochs = int(loop_config["epochs"])
    eval_every = int(loop_config["eval_every"])
    if sharded:  # metrics.json's record of what each worker's shard held
        # A node is named by its id's first 8 hex digits (what a sum of floats carries exactly).
        state["worker_shards"] = [{"rank": rank, "node": f"{int(node):08x}", "users": int(users),
                                   "interactions": int(interactions)}
                                  for rank, (node, users, interactions) in enumerate(zip(
                                      per_worker(int(context.node_id[:8], 16)), per_worker(len(sequences)),
                                      per_worker(sum(len(s) for s in sequences))))]
    rng = np.random.default_rng(seed * 1000 + context.rank + 7919 * state["epoch"])
    run_started = time.perf_counter()
    epochs_this_run = 0

    def on_step(progress: StepProgress) -> None:
        if "first_step_at" not in state:  # when training really began (after reading and restoring)
            state["first_step_at"] = time.time()
        if context.rank == 0 and (progress.step == progress.steps_in_epoch or progress.step % 50 == 0):
            log(f"epoch {progress.epoch + 1}/{epochs} step {progress.step}/{progress.steps_in_epoch} "
                f"loss {progress.loss:.4f} {progress.samples_per_second * context.world_size:,.0f} samples/s")

    deadline = loop_config.get("deadline")  # unix time by which training must stop, or None
    checkpoint_every_s = float(loop_config.get("checkpoint_every_s", 60.0))
    last_checkpoint = time.perf_counter()
    def train_epoch(epoch: int, user_sequences: list[np.ndarray], users: np.ndarray, steps: int | None,
                    progress: Callable[[StepProgress], None] | None = on_step) -> tuple[float, int]:
        return train_one_epoch(
            model, optimizer, user_sequences, users,
            batch_size=local_batch, max_len=model_config.max_len, loss_kind=loss_kind, log_q=log_q,
            num_uniform_negatives=model_config.num_uniform_negatives, temperature=model_config.temperature,
            rng=rng, crop_probability=loop_config["crop_probability"], epoch=epoch, on_step=progress,
            num_steps=steps, device=device, user_features=user_features, loss_module=loss_module,
            after_backward=after_backward,
        )

    for epoch in range(state["epoch"], epochs):
        epoch_started = time.perf_counter()
        loss, positions = train_epoch(epoch, train_sequences, shard, steps_per_epoch)
        epoch_seconds = time.perf_counter() - epoch_started
        epochs_this_run += 1
        state["epoch"] = epoch + 1
        is_last = epoch + 1 == epochs
        validated = (epoch + 1) % eval_every == 0 or is_last
        sums = {"ndcg_sum": 0.0, "hit_sum": 0.0, "count": 0}
        if validated:
            sums = next_item_metrics(model, [train_sequences[u] for u in validation_users],
                                     validation_targets[validation_users], model_config.max_len, device=device,
                                     user_features=None if user_features is None else user_features[validation_users])
        # Time-based decisions are rank 0's, summed into everyone's view, so all workers take
        # the same branch (a report is a barrier every worker must reach).
        now = time.perf_counter()
        out_of_time = context.rank == 0 and deadline is not None and time.time() + epoch_seconds > deadline
        checkpoint_due = context.rank == 0 and now - last_checkpoint >= checkpoint_every_s
        (loss_sum, positions_sum, ndcg_sum, hit_sum, count, out_of_time_votes,
         checkpoint_votes) = context.all_reduce_sum([loss * positions, float(positions), sums["ndcg_sum"],
                                                    sums["hit_sum"], float(sums["count"]), float(out_of_time),
                                                    float(checkpoint_due)])
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1.0, positions_sum),
            "val_ndcg@10": None,
            "val_hr@10": None,
            "samples_per_second": positions_sum / max(1e-9, epoch_seconds),
            "epoch_seconds": epoch_seconds,
        }
        if validated:
            metrics["val_ndcg@10"] = ndcg_sum / max(1.0, count)
            metrics["val_hr@10"] = hit_sum / max(1.0, count)
            if metrics["val_ndcg@10"] > state["best_ndcg"]:
                state.update(best_ndcg=metrics["val_ndcg@10"], best_hr=metrics["val_hr@10"], best_epoch=epoch + 1,
                             best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        metrics["best_val_ndcg@10"] = state["best_ndcg"]
        metrics["best_epoch"] = state["best_epoch"]
        state["history"].append(metrics)
        if validated:
            update_stopping_trend(state, int(loop_config["stopping_window"]))
        early_stop = state["evaluations_without_gain"] >= int(loop_config["patience"])
        stop = early_stop or is_last or out_of_time_votes > 0
        if context.rank == 0:
            validation = (f" val NDCG@10 {metrics['val_ndcg@10']:.4f} HR@10 {metrics['val_hr@10']:.4f}"
                          f" (best {state['best_ndcg']:.4f} @ {state['best_epoch']})") if validated else ""
            eta = _eta(state, loop_config, epoch + 1, epochs, now - run_started, epochs_this_run, stop,
                       out_of_time_votes > 0)
            log(f"epoch {epoch + 1}/{epochs} loss {metrics['loss']:.4f}{validation} "
                f"{metrics['samples_per_second']:,.0f} samples/s {eta}")
            if validated:
                from rayrec.plugins import load_plugins

                load_plugins().hook.training_epoch_end(epoch=epoch + 1, metrics=dict(metrics))
        # A report is a barrier and a checkpoint a write: both only every checkpoint_every_s
        # (a failure then loses at most that much work) and at the end, not every epoch.
        if stop and state["best_model"] is not None and not state.get("final_epochs"):
            final_epochs = math.ceil(float(loop_config.get("final_fit_fraction", 0.0)) * state["best_epoch"])
            if final_epochs > 0:
                full_shard, full_steps = shard_of(sequences)
                _fit_held_out_items(model, state, final_epochs,
                                    lambda e: train_epoch(e, sequences, full_shard, full_steps, progress=None),
                                    device, log if context.rank == 0 else (lambda line: None))
        if stop or checkpoint_votes > 0:
            # Every worker's peak memory so far (a collective, as every worker takes this branch).
            state["worker_peak_rss_mb"] = per_worker(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            with tempfile.TemporaryDirectory() as directory:
                checkpoint_dir = None
                if context.rank == 0:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state},
                               Path(directory) / CHECKPOINT_FILE)
                    checkpoint_dir = directory
                context.report(metrics, checkpoint_dir)
            last_checkpoint = time.perf_counter()
        if stop:
            break


def _fit_held_out_items(model: torch.nn.Module, state: dict[str, Any], final_epochs: int,
                        train_epoch: Callable[[int], tuple[float, int]], device, log: Callable[[str], None]) -> None:
    """Continue the best model for ``final_epochs`` epochs on the whole sequences, the
    validation items included, and make it the model that is exported.

    Validation chose the epoch; its held-out items are each user's most recent interaction,
    the nearest in time to what the model will be asked next, so the final model learns them
    too instead of never seeing them as targets.
    """
    model.load_state_dict({k: v.to(device) for k, v in state["best_model"].items()})
    state["validation_model"] = state["best_model"]  # what validation saw (a blend is chosen on it)
    for offset in range(final_epochs):
        loss, _ = train_epoch(state["epoch"] + offset)
        log(f"final epoch {offset + 1}/{final_epochs} with the validation items: loss {loss:.4f}")
    state["best_model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state["final_epochs"] = final_epochs


def validation_trend(history: list[dict[str, Any]], window: int) -> float:
    """The mean validation NDCG@10 of the last ``window`` evaluations."""
    scores = [m["val_ndcg@10"] for m in history if m.get("val_ndcg@10") is not None][-window:]
    return sum(scores) / max(1, len(scores))


def update_stopping_trend(state: dict[str, Any], window: int) -> None:
    """Count evaluations since the trend of validation NDCG@10 last rose. On a plateau the raw
    score is noise around a level, so a single lucky epoch would restart a raw patience count;
    the trend stops a plateau sooner and rides out a lucky spike. The best raw epoch is still
    the one kept (``state["best_model"]``)."""
    trend = validation_trend(state["history"], window)
    if trend > state.get("best_trend", -1.0):
        state["best_trend"] = trend
        state["evaluations_without_gain"] = 0
    else:
        state["evaluations_without_gain"] += 1


def _eta(state: dict[str, Any], loop_config: dict[str, Any], epoch: int, epochs: int, elapsed: float,
         epochs_this_run: int, stop: bool, out_of_time: bool) -> str:
    """Time left, counting early stopping: without a better validation trend, training ends
    ``patience`` evaluations after its best, which usually comes long before ``epochs``."""
    if stop:
        return "stopping (time budget)" if out_of_time else ("done" if epoch == epochs else "early stop")
    evaluations_left = int(loop_config["patience"]) - state["evaluations_without_gain"]
    epochs_left = min(epochs - epoch, evaluations_left * int(loop_config["eval_every"]))
    return f"ETA {_format_duration(elapsed / max(1, epochs_this_run) * epochs_left)} (if no better epoch)"
