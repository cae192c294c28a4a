"""Distributed training on Ray Train: ``TorchTrainer`` with data-parallel CPU or GPU workers."""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from rayrec.training.checkpoints import (delete_run, load_training_state, restore_training_state, run_exists,
                                         run_name_for, storage_path_for_ray)
from rayrec.training.config import TrainConfig
from rayrec.training.export import export_model_dir, loop_config_for, worker_metrics
from rayrec.training.prepare import DatasetBackedData, PreparedData

#: The Ray Train dataset of per-user sequences (rayrec.data.ray_data), one row per user.
SEQUENCES_DATASET = "sequences"
#: Where a run keeps its checkpoints unless ``storage`` says otherwise: OUT/.checkpoints.
CHECKPOINTS_DIR = ".checkpoints"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class RayWorkerContext:
    """The :class:`~rayrec.training.worker.WorkerContext` of a Ray Train worker."""

    def __init__(self) -> None:
        import ray
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        # Ray's node id, not Train's node rank: that one groups workers by IP address, so the
        # raylets of one machine all count as node 0.
        self.node_id = ray.get_runtime_context().get_node_id()
        # cuda:<local rank> under use_gpu, else the CPU.
        self.device = ray.train.torch.get_device()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def prepare_model(self, module, apart: Sequence[Any] = ()):
        """DDP through Ray Train for several workers; one worker trains the bare module.
        ``apart``: parameters DDP leaves alone, whose gradients :meth:`average_row_gradient`
        averages instead (rank 0's values are broadcast to the others once, as DDP does)."""
        # DDP replaced a hand-written flat all-reduce of the gradients after backward. Both
        # give the same losses and validation NDCG; measured on ml-100k, 2 workers x 1 thread,
        # 3 epochs (`rayrec train --no-search --num-workers 2 --epochs 3`, 2 shared cores
        # under a load average of 7-17): median epoch 7,735 positions/s by hand (9 epochs,
        # 5,586-14,505), 8,713 with DDP (6 epochs, 7,308-11,515), within the noise.
        import ray.train.torch

        if self.world_size == 1:
            return module.to(self.device)
        # The buffers (item categories, content vectors) are the same data on every worker;
        # DDP's default would broadcast them from rank 0 before every forward pass.
        from torch.nn.parallel import DistributedDataParallel

        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers"
                          in inspect.signature(DistributedDataParallel.__init__).parameters else "broadcast_buffers")
        if apart:
            import torch.distributed as dist

            module = module.to(self.device)
            names = [name for name, parameter in module.named_parameters() if any(parameter is p for p in apart)]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
            for parameter in apart:
                dist.broadcast(parameter.data, src=0)
        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={no_buffer_sync: False})

    def average_row_gradient(self, parameter) -> None:
        """Replace ``parameter``'s sparse gradient by its mean over the workers
        (:func:`rayrec.training.optimizer.average_row_gradient` says why not DDP's)."""
        from rayrec.training.optimizer import average_row_gradient

        parameter.grad = average_row_gradient(parameter.grad, parameter.shape, self.world_size)

    def restore_training_state(self, log: Callable[[str], None]) -> dict[str, Any] | None:
        import ray.train

        # The newest checkpoint of this named run: after a worker failure, or from the run a
        # killed driver left when ``rayrec train --resume`` starts it again.
        return restore_training_state(ray.train.get_checkpoint(), log=log)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import logging

    import ray

    # Train logs every report at INFO on a logger named after its source file (outside
    # "ray.train", so RunConfig's logging level misses it); our progress lines say it better.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray version: its lines show, nothing else changes
        pass
    from rayrec.training.worker import run_worker

    pid_dir = loop_config.get("pid_dir")
    context = RayWorkerContext()
    if pid_dir:
        # Lets operators (and the fault-tolerance test) find and signal a worker process.
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"rank{context.rank}.pid").write_text(str(os.getpid()))
    payload = ray.get(loop_config["payload_ref"])
    if loop_config.get("sequence_shards"):
        payload.update(read_sequence_shard(ray.train.get_dataset_shard(SEQUENCES_DATASET), payload))
    run_worker(loop_config, payload, context, log=lambda line: print(line, flush=True))


def read_sequence_shard(shard, payload: dict[str, Any]) -> dict[str, Any]:
    """This worker's users, read from its shard of the sequence dataset, as the payload's
    ``lengths``/``flat`` (and its rows of the user features).

    The shard is read once and kept: every epoch shuffles and length-buckets it, and DDP
    needs the step count of every worker before the first step. A worker's memory grows with
    its shard, not with the data."""
    import numpy as np

    from rayrec.data.ray_data import configure_ray_data, sequence_columns

    configure_ray_data()
    users, lengths, flats = [], [], []
    for batch in shard.iter_batches(batch_size=65_536, batch_format="pyarrow"):
        batch_users, batch_lengths, flat = sequence_columns(batch)
        users.append(batch_users)
        lengths.append(batch_lengths)
        flats.append(flat)
    users_here = np.concatenate(users) if users else np.zeros(0, np.int64)
    features = payload.get("user_features")
    return {"lengths": np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
            "flat": np.concatenate(flats) if flats else np.zeros(0, np.int64),
            "user_features": None if features is None else features[users_here]}


def ray_log_level() -> str:
    """Ray's own INFO and WARNING lines (every report, the placement-group cleaner polling a
    state API that needs the dashboard) drown the epoch lines, so rayrec shows Ray's errors
    only; ``RAYREC_RAY_LOG_LEVEL=INFO`` shows the rest."""
    return os.environ.get("RAYREC_RAY_LOG_LEVEL", "ERROR")


def ensure_ray(num_cpus_needed: float) -> None:
    """Join the cluster in RAY_ADDRESS (``ray job submit`` sets it) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    logging_config = ray.LoggingConfig(log_level=ray_log_level())
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, logging_config=logging_config)
    else:
        # Logical CPUs: enough for the requested workers even on a 2-core laptop. "local": a
        # new instance even where `ray start` (or a test's cluster) left one running here,
        # which ray.init would otherwise join and then refuse num_cpus for.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(num_cpus_needed + 0.999) + 1),
                 include_dashboard=False, log_to_driver=True, logging_config=logging_config)


def worker_layout(config: TrainConfig, cluster_cpus: float) -> tuple[int, float]:
    """(workers, CPUs per worker) for ``config`` on a cluster with ``cluster_cpus`` CPUs.

    Unset, the run takes every CPU Ray sees: one worker per 8 CPUs (a worker's torch threads
    scale well up to about 8 on this model; past that data parallelism pays for its gradient
    all-reduce), each with an equal share. Torch threads per worker = its whole CPUs.
    """
    cluster_cpus = max(1.0, float(cluster_cpus))
    workers = config.num_workers or max(1, int(cluster_cpus // 8))
    cpus = config.cpus_per_worker or max(1.0, float(int(cluster_cpus // workers)))
    return workers, cpus


def train_distributed(data: PreparedData, out_dir: str | Path, config: TrainConfig, *,
                      resume: bool = False, log: Callable[[str], None] = print,
                      deadline: float | None = None, callbacks: list | None = None,
                      shortlists: bool = False, storage: str | None = None,
                      initial_weights: dict[str, Any] | None = None) -> Path:
    """Train with Ray Train workers (see :func:`worker_layout`) and write the model directory.

    The run is a named Ray Train run (:func:`rayrec.training.checkpoints.run_name_for`
    ``out_dir``) whose checkpoints go to ``storage`` (a local path or a pyarrow filesystem
    URI; default ``out_dir/.checkpoints``). ``resume``: continue that run from its latest
    checkpoint, as Ray Train restores a run of the same name and storage path; otherwise an
    earlier run of that name is removed and training starts afresh.
    ``deadline`` (unix time): stop after the last epoch that fits, keeping the best one so far.
    ``callbacks``: Ray Train callbacks, e.g. Tune's report callback inside a selection trial.
    ``shortlists``: also write the validation shortlists a selection blend is chosen on.
    ``initial_weights``: a warm start's weights (:mod:`rayrec.training.warm_start`), used
    unless a checkpoint is resumed.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path = storage_path_for_ray(storage if storage is not None else out_dir / CHECKPOINTS_DIR)
    run_name = run_name_for(out_dir)
    if run_exists(storage_path, run_name):
        if resume:
            log(f"resuming run {run_name} from its latest checkpoint in {storage_path}")
        else:
            log(f"starting run {run_name} afresh in {storage_path} (--resume continues an earlier one)")
            delete_run(storage_path, run_name)
    elif resume:
        log(f"no run {run_name} in {storage_path} to resume; starting from scratch")
    ensure_ray((config.num_workers or 1) * (config.cpus_per_worker or 1))
    num_workers, cpus_per_worker = worker_layout(config, ray.cluster_resources().get("CPU", 1))
    threads = max(1, int(cpus_per_worker))
    log(f"training with {num_workers} worker(s) x {threads} thread(s)")
    loop_config = loop_config_for(config, threads)
    payload = data.to_payload()
    payload["initial_weights"] = initial_weights
    loop_config.update(
        payload_ref=ray.put(payload),
        # Local to the driver's machine, wherever the checkpoints go.
        pid_dir=str(out_dir / CHECKPOINTS_DIR / "worker_pids"),
        deadline=deadline,
    )
    resources = {"CPU": cpus_per_worker}
    datasets = {}
    if isinstance(data, DatasetBackedData):
        # Each worker reads its own shard of the users (read_sequence_shard).
        datasets = {"datasets": {SEQUENCES_DATASET: data.sequence_dataset.split_evenly(num_workers)}}
        loop_config["sequence_shards"] = True
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        **datasets,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            # Train's own lines (resources requested, worker group started, each report).
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level()),
            worker_runtime_env={"env_vars": {
                **{name: str(threads) for name in THREAD_VARIABLES},
                # Train's print patch would log every progress line a second time.
                "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
            }},
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    wall_seconds = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as directory:
        saved = load_training_state(directory, mmap=True)  # a mapping outlives a downloaded copy's removal
    log(f"training finished in {wall_seconds:.1f}s; best validation NDCG@10 "
        f"{saved['state']['best_ndcg']:.4f} at epoch {saved['state']['best_epoch']}")
    return export_model_dir(data, config, saved, out_dir,
                            extra_metrics={"train_wall_seconds": wall_seconds, "num_workers": num_workers,
                                           "threads_per_worker": threads,
                                           **worker_metrics(saved["state"])}, shortlists=shortlists)
