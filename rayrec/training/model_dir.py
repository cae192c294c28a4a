"""Writing the files every model directory has, whatever its kind (layout in :mod:`rayrec.models.bundle`).

Each kind's exporter (:mod:`rayrec.training.export` for the two-tower model,
:mod:`rayrec.training.export_als`, :mod:`rayrec.training.export_ease`) writes the files only
it has, then calls :func:`write_model_dir` for the rest, so every kind stores the
vocabularies, histories, popularity, item metadata, version and metrics the same way.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

import rayrec
from rayrec.models.ann import write_index
from rayrec.models.histories import ITEMS_FILE, OFFSETS_FILE
from rayrec.models.item_records import write_item_records
from rayrec.models.vocabulary_files import write_vocabulary
from rayrec.training.prepare import PreparedData

#: An order-free model reads at most this many recent events per request, or the longest
#: training history if that is longer.
MIN_MAX_HISTORY = 500

logger = logging.getLogger(__name__)


def new_model_version() -> str:
    """A model version: when it was written, and a random suffix that tells two apart."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def max_history_for(data: PreparedData) -> int:
    """config.json's ``max_history`` for an order-free model of ``data``: ``MIN_MAX_HISTORY``,
    or the longest training history if that is longer (so a user's whole history counts)."""
    return int(max(MIN_MAX_HISTORY, max((len(s) for s in data.sequences), default=0)))


def write_histories(out_dir: Path, data: PreparedData) -> np.ndarray:
    """Every user's history into ``out_dir`` (uncompressed, so serving maps them instead of
    loading every user's history into each replica), written a chunk of users at a time
    (:meth:`PreparedData.sequence_chunks`); returns the (N,) item counts.

    Sequences in a Ray Dataset are written by a task on this node, not by the driver: the
    blocks it reads are mapped from Ray's object store, and pages read through a map count in
    the reader's resident memory (at 50M interactions the driver went from 639 MB in training
    to 1,364 MB while it wrote them)."""
    dataset = getattr(data, "sequence_dataset", None)
    node = _this_ray_node()
    if dataset is None or node is None:
        return _write_history_chunks(out_dir, data.sequence_chunks(), len(data.user_vocab), data.num_items,
                                     data.num_interactions)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # No CPU asked: the node may offer none to tasks (a head node kept for drivers), and the
    # training that used them is over.
    writer = ray.remote(_write_dataset_histories).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    return ray.get(writer.remote(str(out_dir), dataset, len(data.user_vocab), data.num_items,
                                 data.num_interactions))


def _this_ray_node() -> str | None:
    """The Ray node this process runs on, where it is one (not a Ray Client)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # a client connection, or no node id to be had
        return None


def _write_dataset_histories(out_dir: str, dataset, num_users: int, num_items: int,
                             num_interactions: int) -> np.ndarray:
    from rayrec.training.prepare import user_ordered_chunks

    return _write_history_chunks(Path(out_dir), user_ordered_chunks(dataset), num_users, num_items, num_interactions)


def _write_history_chunks(out_dir: Path, chunks, num_users: int, num_items: int, num_interactions: int) -> np.ndarray:
    """The items are appended to the file rather than written through a memory map: a mapped
    file's written pages count in the writer's resident memory, 8 bytes per interaction."""
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    popularity = np.zeros(num_items, dtype=np.int64)
    user = position = 0
    with open(out_dir / ITEMS_FILE, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": np.lib.format.dtype_to_descr(np.dtype("<i8")), "fortran_order": False,
                     "shape": (num_interactions,)})
        for chunk in chunks:
            if not len(chunk):
                continue
            flat = (np.concatenate(chunk) - 1).astype("<i8", copy=False)
            flat.tofile(handle)
            offsets[user + 1: user + len(chunk) + 1] = position + np.cumsum([len(s) for s in chunk])
            popularity += np.bincount(flat, minlength=num_items)
            user, position = user + len(chunk), position + len(flat)
    if (user, position) != (num_users, num_interactions):
        raise AssertionError(f"wrote {user} users' {position} items for {num_users} users' {num_interactions}")
    np.save(out_dir / OFFSETS_FILE, offsets)
    return popularity


def write_model_dir(out_dir: str | Path, data: PreparedData, *, model_kind: str, model_format: int,
                    item_embeddings: np.ndarray, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Write the files every model directory has into ``out_dir``; returns the model version.

    ``model_format``: the kind's layout version (config.json's ``format``, which its loader
    reads). ``item_embeddings: (N, D)``: the item vectors serving scores user vectors against.
    ``data``: the training data (1-based sequences; every user's history is stored for
    serving, and the item popularity counted from it). ``config``: the kind's own keys of
    config.json, written after the shared ones (format, model_kind, versions, data summary,
    dim). ``metrics``: the kind's metrics.json keys, after model_version and model_kind;
    ``best_val_ndcg@10`` and ``best_val_hr@10`` are None unless given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    item_embeddings = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    np.save(out_dir / "item_embeddings.npy", item_embeddings)
    popularity = write_histories(out_dir, data)
    np.save(out_dir / "item_popularity.npy", popularity.astype(np.float32))
    # The users also as arrays that serving maps, shared by a node's replicas (vocabulary_files says why).
    write_vocabulary(data.user_vocab, out_dir, "user_vocab")
    data.item_vocab.save(out_dir / "item_vocab.json")
    if data.items is not None:  # with the offsets that let serving map them (item_records says why)
        write_item_records(out_dir, (data.items.record(i) for i in range(len(data.items))), data.item_vocab.ids)
    version = new_model_version()
    shared = {
        "format": int(model_format),
        "model_kind": model_kind,
        "rayrec_version": rayrec.__version__,
        "model_version": version,
        "num_items": data.num_items,
        "num_users": len(data.user_vocab),
        "num_interactions": data.num_interactions,
        "dim": int(item_embeddings.shape[1]),
        "dataset": data.name,
    }
    (out_dir / "config.json").write_text(json.dumps({**shared, **config}, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps({
        "model_version": version,
        "model_kind": model_kind,
        "best_val_ndcg@10": None,
        "best_val_hr@10": None,
        **metrics,
    }, indent=2))
    # Big catalogues: the ANN graph is built here once, not in every scorer replica at start,
    # of the kind that finds more of the true top 10 for this model's own users (ann says why).
    item_index = write_index(out_dir, item_embeddings, lambda: sample_user_vectors(out_dir)) \
        if model_kind != "ease" else None
    if item_index:
        (out_dir / "config.json").write_text(json.dumps({**shared, "item_index": item_index, **config}, indent=2))
    return version


def sample_user_vectors(model_dir: Path, count: int = 200) -> np.ndarray | None:
    """The user vectors of up to ``count`` training users spread over the vocabulary, from the
    model directory as serving loads it (any kind); None, with a log line, where it cannot."""
    from rayrec.models.servable import load_model_dir

    try:
        model = load_model_dir(model_dir)
        users = [u for u in np.linspace(0, len(model.user_vocab) - 1, num=min(count, len(model.user_vocab)),
                                        dtype=np.int64).tolist() if len(model.training_history_indices(u))]
        if not users:
            return None
        return np.asarray(model.user_vectors([model.training_history_indices(u) for u in users], users),
                          dtype=np.float32)
    except Exception:
        logger.exception("%s: no user vectors to choose the item graph with; it is the inner-product one", model_dir)
        return None
