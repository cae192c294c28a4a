"""Top-K recommendations for many users at once, on Ray Data (``rayrec recommend``).

The users flow through ``Dataset.map_batches`` into a fixed pool of actors. Each actor is one
:class:`BatchRecommender`: it loads the model once and then scores batch after batch. Ray
Data's writers put the lists in a directory of JSON-lines or Parquet shards, one file per
block, written by the cluster, not the driver. For the single JSON-lines file that
``rayrec recommend`` has always written, the driver streams the lists back in input order.

Every record is ``{"user_id", "items", "scores"}``: the ``k`` best items the user has not
interacted with, best first, with their scores rounded to 6 decimals. A listed user the
model does not know gets the most popular items, scored by their popularity.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rayrec.errors import DataError

#: ``--format`` values: each writes a directory of shards.
OUTPUT_FORMATS = ("jsonl", "parquet")
#: Users scored per call of an actor at most; a call holds (batch, items) float32 scores.
USERS_PER_BATCH = 512
#: Users per output shard at most (each input block of users becomes one shard file).
USERS_PER_SHARD = 100_000
#: Logical CPUs each actor reserves. Below one on purpose: with a whole CPU each, two actors
#: on a 2-CPU Ray take both CPUs, and Ray Data's read and write tasks wait for ever.
ACTOR_CPUS = 0.5
#: Thread pools capped per actor (numpy's BLAS reads them when it is imported).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class PoolLayout:
    """How the users are spread: ``actors`` model copies with ``threads`` torch/BLAS threads
    each, over ``blocks`` blocks of users (one shard each), scored ``batch_size`` at a time."""

    actors: int
    threads: int
    blocks: int
    batch_size: int


def pool_layout(cluster_cpus: float, num_users: int, actors: int | None = None,
                users_per_shard: int = USERS_PER_SHARD) -> PoolLayout:
    """One actor per CPU Ray sees (or ``actors``), each with an equal whole share of the CPUs
    as threads (at least one): more threads than cores made a matrix-vector product 8x slower
    here. At least two blocks per actor where there are users enough, so an actor that
    finishes early takes the next block, and at most ``users_per_shard`` users per block.

    A batch never spans blocks (Ray Data would merge small blocks to fill a batch, and so
    their shards), so the batch is at most a block.
    """
    actors = max(1, actors or int(cluster_cpus))
    threads = max(1, int(cluster_cpus // actors))
    per_block = max(1, min(users_per_shard, math.ceil(num_users / (2 * actors))))
    blocks = max(1, math.ceil(num_users / per_block))
    return PoolLayout(actors=actors, threads=threads, blocks=blocks, batch_size=min(USERS_PER_BATCH, per_block))


class BatchRecommender:
    """One model copy in one actor: a batch of users -> their top-``k`` lists.

    The batch holds ``user_index`` (B,) int64 rows of the model's user vocabulary, or
    ``user_id`` (B,) str ids (unknown ones get the popular items). Returns a pyarrow table
    with ``user_id`` (string), ``items`` (list of string) and ``scores`` (list of float64),
    in the batch's order.
    """

    def __init__(self, model_dir: str, k: int, threads: int) -> None:
        import torch

        from rayrec.models.servable import load_model_dir

        torch.set_num_threads(max(1, int(threads)))
        self.model = load_model_dir(model_dir)
        self.k = k
        self.popular = np.argsort(-self.model.item_popularity, kind="stable")[:k]

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        model = self.model
        if "user_index" in batch:
            rows: list[int | None] = [int(row) for row in batch["user_index"]]
            user_ids = model.user_vocab.decode(rows)
        else:
            user_ids = [str(user_id) for user_id in batch["user_id"]]
            rows = [model.user_vocab.index_of(user_id) for user_id in user_ids]
        known = [row for row in rows if row is not None]
        top, top_scores = model.recommend_indices(known, self.k, batch_size=USERS_PER_BATCH)
        lists, scores = [], []
        position = 0
        for row in rows:
            if row is None:  # not seen in training: the most popular items, scored by popularity
                items, values = self.popular, model.item_popularity[self.popular]
            else:
                items, values = top[position], top_scores[position]
                position += 1
            lists.append(model.item_vocab.decode(items.tolist()))
            scores.append([round(float(value), 6) for value in values])
        return pa.table({
            "user_id": pa.array(user_ids, pa.string()),
            "items": pa.array(lists, pa.list_(pa.string())),
            "scores": pa.array(scores, pa.list_(pa.float64())),
        })


def json_line(record: dict[str, Any]) -> str:
    """One output record as the JSON line ``rayrec recommend`` writes."""
    return json.dumps({"user_id": record["user_id"], "items": list(record["items"]),
                       "scores": list(record["scores"])}) + "\n"


def _check_output_directory(out: Path, output_format: str) -> None:
    """A directory of shards replaces an earlier run's shards, but never other files."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--format {output_format} writes a directory of shards, but this is a file; "
                        f"give a directory, or leave out --format for one JSON-lines file", path=str(out))
    if out.is_dir():
        others = [p.name for p in out.iterdir() if p.suffix not in {f".{f}" for f in OUTPUT_FORMATS}]
        if others:
            raise DataError(f"the output directory holds files that are no recommendation shards "
                            f"({', '.join(sorted(others)[:3])}); give an empty or new directory", path=str(out))
        for shard in out.iterdir():
            shard.unlink()


def recommend_all(model_dir: str | Path, k: int, out: str | Path, *, output_format: str | None = None,
                  user_ids: Sequence[str] | None = None, actors: int | None = None,
                  users_per_shard: int = USERS_PER_SHARD) -> dict[str, int]:
    """Write the top-``k`` lists of every training user (or of ``user_ids``, in their order).

    ``output_format`` None writes one JSON-lines file at ``out``, in the users' order;
    ``"jsonl"`` or ``"parquet"`` a directory of shards at ``out``, of at most
    ``users_per_shard`` users each. ``actors``: the pool size (default: :func:`pool_layout`).
    Joins the Ray cluster in ``RAY_ADDRESS`` or starts a local one (and stops what it
    started). The model is loaded here first, so a broken model directory fails with its
    one-line :class:`rayrec.errors.ModelError` before any actor starts. Returns
    ``{"users", "unknown", "actors", "shards"}``.
    """
    import ray

    from rayrec.models.servable import load_model_dir
    from rayrec.training.trainer import ensure_ray, ray_log_level

    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    model_dir, out = str(Path(model_dir).resolve()), Path(out)
    vocabulary = load_model_dir(model_dir).user_vocab  # the actors hold the copies that score
    unknown = 0 if user_ids is None else sum(1 for user_id in user_ids if user_id not in vocabulary)
    if output_format is not None:
        _check_output_directory(out, output_format)
    elif out.is_dir():
        raise DataError("--out is a directory; give a file name (recs.jsonl), or --format jsonl|parquet "
                        "to write shards into the directory", path=str(out))

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", ray_log_level())  # read when ray.data is imported
    started_here = not ray.is_initialized()
    ensure_ray(0)
    try:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = output_format is None
        layout, dataset = _users(user_ids, len(vocabulary), ray.cluster_resources().get("CPU", 1.0), actors,
                                 users_per_shard)
        lists = dataset.map_batches(
            BatchRecommender,
            fn_constructor_kwargs={"model_dir": model_dir, "k": k, "threads": layout.threads},
            batch_size=layout.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=layout.actors),
            num_cpus=ACTOR_CPUS,
            runtime_env={"env_vars": {name: str(layout.threads) for name in THREAD_VARIABLES}},
        )
        shards = _write(lists, out, output_format)
    finally:
        if started_here:
            ray.shutdown()
    return {"users": len(user_ids) if user_ids is not None else len(vocabulary), "unknown": unknown,
            "actors": layout.actors, "shards": shards}


def _users(user_ids: Sequence[str] | None, training_users: int, cluster_cpus: float, actors: int | None,
           users_per_shard: int):
    """(layout, dataset of ``user_index`` or ``user_id`` in :func:`pool_layout`'s blocks)."""
    import pyarrow as pa
    import ray.data

    if user_ids is None:
        layout = pool_layout(cluster_cpus, training_users, actors, users_per_shard)
        dataset = ray.data.range(training_users, override_num_blocks=layout.blocks)
        return layout, dataset.rename_columns({"id": "user_index"})
    layout = pool_layout(cluster_cpus, len(user_ids), actors, users_per_shard)
    table = pa.table({"user_id": pa.array([str(user_id) for user_id in user_ids], pa.string())})
    step = max(1, math.ceil(len(user_ids) / layout.blocks))
    return layout, ray.data.from_arrow([table.slice(start, step) for start in range(0, max(1, len(table)), step)])


def _write(lists, out: Path, output_format: str | None) -> int:
    """Write the lists at ``out`` (see :func:`recommend_all`); returns the number of files."""
    if output_format is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as handle:
            for batch in lists.iter_batches(batch_size=None, batch_format="pyarrow"):
                handle.writelines(json_line(record) for record in batch.to_pylist())
        return 1
    from ray.data.datasource import FilenameProvider

    out.mkdir(parents=True, exist_ok=True)
    writer = lists.write_json if output_format == "jsonl" else lists.write_parquet
    writer(str(out), filename_provider=FilenameProvider(file_format=output_format))
    return sum(1 for _ in out.glob(f"*.{output_format}"))
