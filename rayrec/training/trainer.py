"""Distributed training on Ray Train: ``TorchTrainer`` with data-parallel CPU or GPU workers."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from rayrec.training.config import TrainConfig
from rayrec.training.export import export_model_dir, loop_config_for
from rayrec.training.prepare import PreparedData
from rayrec.training.worker import CHECKPOINT_FILE, CheckpointError, load_training_state

CHECKPOINTS_DIR = ".checkpoints"
RUN_NAME = "rayrec-train"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class RayWorkerContext:
    """The :class:`~rayrec.training.worker.WorkerContext` of a Ray Train worker."""

    def __init__(self, resume_dir: str | None) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        import ray.train.torch

        # cuda:<local rank> under use_gpu, else the CPU.
        self.device = ray.train.torch.get_device()
        self._resume_dir = resume_dir

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_reduce_gradients(self, model) -> None:
        """Average gradients over workers in one flat all-reduce (cheaper than one per tensor)."""
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            count = grad.numel()
            grad.copy_(flat[offset: offset + count].view_as(grad))
            offset += count

    def latest_checkpoint_dir(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # set after a worker failure restart
        if checkpoint is not None:
            return checkpoint.as_directory()
        if self._resume_dir and (Path(self._resume_dir) / CHECKPOINT_FILE).exists():
            return contextlib.nullcontext(self._resume_dir)
        return None

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
    context = RayWorkerContext(loop_config.get("resume_dir"))
    if pid_dir:
        # Lets operators (and the fault-tolerance test) find and signal a worker process.
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"rank{context.rank}.pid").write_text(str(os.getpid()))
    payload = ray.get(loop_config["payload_ref"])
    run_worker(loop_config, payload, context, log=lambda line: print(line, flush=True))


def latest_checkpoint(checkpoint_root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The most recent *readable* checkpoint directory under ``checkpoint_root``, if any.

    A truncated or corrupt checkpoint (a crash while it was written, a bad disk) is skipped
    with a line naming it, falling back to the one before.
    """
    candidates = []
    for path in Path(checkpoint_root).glob(f"**/{CHECKPOINT_FILE}"):
        try:
            candidates.append((path.stat().st_mtime, path.parent))
        except OSError:  # removed meanwhile
            continue
    for _, directory in sorted(candidates, key=lambda pair: pair[0], reverse=True):
        try:
            load_training_state(directory)
        except CheckpointError as exc:
            log(f"skipping unusable checkpoint: {exc}")
            continue
        return directory
    return None


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
        # Logical CPUs: enough for the requested workers even on a 2-core laptop.
        ray.init(num_cpus=max(os.cpu_count() or 1, int(num_cpus_needed + 0.999) + 1),
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
                      shortlists: bool = False) -> Path:
    """Train with Ray Train workers (see :func:`worker_layout`) and write the model directory.

    ``deadline`` (unix time): stop after the last epoch that fits, keeping the best one so far.
    ``callbacks``: Ray Train callbacks, e.g. Tune's report callback inside a selection trial.
    ``shortlists``: also write the validation shortlists a selection blend is chosen on.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_root = out_dir / CHECKPOINTS_DIR
    resume_dir = latest_checkpoint(checkpoint_root, log=log) if resume else None
    if resume and resume_dir is None:
        log(f"no checkpoint under {checkpoint_root}; starting from scratch")
    elif resume_dir is not None:
        log(f"resuming from {resume_dir}")
    run_name = f"{RUN_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    ensure_ray((config.num_workers or 1) * (config.cpus_per_worker or 1))
    num_workers, cpus_per_worker = worker_layout(config, ray.cluster_resources().get("CPU", 1))
    threads = max(1, int(cpus_per_worker))
    log(f"training with {num_workers} worker(s) x {threads} thread(s)")
    loop_config = loop_config_for(config, threads)
    loop_config.update(
        payload_ref=ray.put(data.to_payload()),
        resume_dir=None if resume_dir is None else str(resume_dir),
        pid_dir=str(checkpoint_root / run_name / "worker_pids"),
        deadline=deadline,
    )
    resources = {"CPU": cpus_per_worker}
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(checkpoint_root),
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
        saved = load_training_state(directory)
    log(f"training finished in {wall_seconds:.1f}s; best validation NDCG@10 "
        f"{saved['state']['best_ndcg']:.4f} at epoch {saved['state']['best_epoch']}")
    return export_model_dir(data, config, saved, out_dir,
                            extra_metrics={"train_wall_seconds": wall_seconds, "num_workers": num_workers,
                                           "threads_per_worker": threads}, shortlists=shortlists)
