"""The approximate-nearest-neighbour index over a model's item vectors (FAISS HNSW, inner
product), built once when the model is exported and loaded by every scorer replica.

Building HNSW over a million items takes minutes of CPU; doing it in every replica at every
start would make start-up and scale-out that slow. The file ``item_index.faiss`` in the model
directory is read memory-mapped where FAISS allows it, so replicas on one node share its pages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The file in a model directory, and the catalogue size from which export writes it (the
#: serving default of exact_search_max_items: below it search is exact and needs no index).
INDEX_FILE = "item_index.faiss"
EXPORT_MIN_ITEMS = 250_000
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 80


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_hnsw(vectors: np.ndarray, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION) -> Any:
    """An HNSW graph (inner product) over ``vectors`` (N, D) float32."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def write_index(model_dir: Path, vectors: np.ndarray) -> dict[str, Any] | None:
    """Build and save the index when the catalogue needs one and FAISS is installed; returns
    what ``config.json`` records about it (None: no index written)."""
    if len(vectors) < EXPORT_MIN_ITEMS:
        return None
    if not faiss_available():
        logger.warning("%d items: no ANN index written (pip install faiss-cpu); serving builds one at start",
                       len(vectors))
        return None
    import faiss

    faiss.write_index(build_hnsw(vectors), str(model_dir / INDEX_FILE))
    return {"file": INDEX_FILE, "kind": "hnsw", "metric": "inner_product", "m": DEFAULT_M,
            "ef_construction": DEFAULT_EF_CONSTRUCTION, "rows": int(len(vectors))}


def read_index(model_dir: Path, config: dict[str, Any], rows: int, m: int) -> Any | None:
    """The exported index when it matches (same rows, same graph degree), else None."""
    recorded = config.get("item_index")
    if not recorded or recorded.get("rows") != rows or recorded.get("m") != m or not faiss_available():
        return None
    path = Path(model_dir) / recorded["file"]
    if not path.exists():
        return None
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:  # an index type FAISS cannot map: read it into memory
        return faiss.read_index(str(path))
