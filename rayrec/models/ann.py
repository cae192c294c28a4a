"""The FAISS indexes over a model's item vectors (inner product), built once and loaded by every
scorer replica: the HNSW graph export writes for big catalogues, and compressed codes.

Building HNSW over a million items takes minutes of CPU; doing it in every replica at every
start would make start-up and scale-out that slow. The file ``item_index.faiss`` in the model
directory is read memory-mapped where FAISS allows it, so replicas on one node share its pages.
The text graph of ``POST /search`` (``text_index.faiss``) is exported and read the same way.

Compressed item vectors (``retrieval.vectors``: float16, int8, pq; see
:mod:`rayrec.serving.stages.codes`) are FAISS indexes too: flat codes scanned whole, or an HNSW
graph over codes. ``rayrec index build`` (:func:`write_compressed`) saves one into an existing
model directory as ``item_index.<name>.faiss`` (``flat-int8``, ``hnsw-pq32``) and records it in
``item_indexes.json`` with the model version it was built from; :func:`read_compressed` maps it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The file in a model directory, and the catalogue size from which export writes it (the
#: serving default of exact_search_max_items: below it search is exact and needs no index).
INDEX_FILE = "item_index.faiss"
EXPORT_MIN_ITEMS = 250_000
#: The HNSW graph over the searchable items' unit text vectors (``POST /search``), written
#: beside the item index for the same catalogue sizes; config.json records it as ``text_index``.
TEXT_INDEX_FILE = "text_index.faiss"
TEXT_INDEX_ROWS_FILE = "text_index_rows.npy"
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 256
#: HNSW breadths grow with the catalogue: fixed ones that are ample at 250k items lose recall
#: as the graph gets deeper (benchmarks/ann_scale.py measures both, README quotes it). Per
#: doubling of the catalogue beyond SCALE_FROM_ITEMS each breadth grows by its base value, up to the cap.
SCALE_FROM_ITEMS = 250_000
MAX_EF_CONSTRUCTION = 400
MAX_EF_SEARCH = 2048


@dataclass(frozen=True)
class HnswParameters:
    """The graph degree ``m`` and the build and search breadths of one HNSW index."""

    m: int
    ef_construction: int
    ef_search: int

    def as_record(self) -> dict[str, int]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}


def scaled_hnsw_parameters(rows: int) -> HnswParameters:
    """The parameters for a catalogue of ``rows`` items when none are configured: 80/256 up to
    SCALE_FROM_ITEMS, +80/+256 per doubling (rounded up) beyond, capped at 400/2048; M 32."""
    doublings = math.ceil(math.log2(rows / SCALE_FROM_ITEMS)) if rows > SCALE_FROM_ITEMS else 0
    return HnswParameters(DEFAULT_M, min(MAX_EF_CONSTRUCTION, DEFAULT_EF_CONSTRUCTION * (1 + doublings)),
                          min(MAX_EF_SEARCH, DEFAULT_EF_SEARCH * (1 + doublings)))


def hnsw_parameters(rows: int, m: int | None = None, ef_construction: int | None = None,
                    ef_search: int | None = None) -> HnswParameters:
    """Configured values (``retrieval.ann``) where given, the scaled ones for ``rows`` elsewhere."""
    scaled = scaled_hnsw_parameters(rows)
    return HnswParameters(m or scaled.m, ef_construction or scaled.ef_construction, ef_search or scaled.ef_search)


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


def search_hnsw(index: Any, query: np.ndarray, fetch: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the ``fetch`` best rows of an HNSW ``index`` for one ``query``, searched
    at least ``fetch`` broad (a graph returns no more than its breadth). The breadth goes with
    the call, so an index shared by every request holds no per-request setting."""
    import faiss

    params = faiss.SearchParametersHNSW(efSearch=max(ef_search, fetch))
    scores, ids = index.search(np.ascontiguousarray(query[None, :], dtype=np.float32), fetch, params=params)
    return scores[0], ids[0]


def write_index(model_dir: Path, vectors: np.ndarray) -> dict[str, Any] | None:
    """Build and save the index (with :func:`scaled_hnsw_parameters`) when the catalogue needs one
    and FAISS is installed; returns what ``config.json`` records about it, the parameters
    included, so serving searches with the ef_search it was built for (None: no index written)."""
    return _write_graph(model_dir, INDEX_FILE, vectors, len(vectors))


def write_text_index(model_dir: Path, text_vectors: np.ndarray, searchable: np.ndarray) -> dict[str, Any] | None:
    """The graph of ``POST /search`` over the ``searchable`` rows of ``text_vectors`` (one row
    per item, normalised here), as :func:`write_index` for a catalogue of that many items; graph
    id i is item row ``TEXT_INDEX_ROWS_FILE[i]``."""
    graph_rows = np.flatnonzero(np.asarray(searchable, dtype=bool)).astype(np.int64)
    vectors = np.asarray(text_vectors, dtype=np.float32)[graph_rows]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    record = _write_graph(model_dir, TEXT_INDEX_FILE, vectors, len(text_vectors))
    if record is None:
        return None
    np.save(Path(model_dir) / TEXT_INDEX_ROWS_FILE, graph_rows)
    return {**record, "rows_file": TEXT_INDEX_ROWS_FILE}


def read_text_index(model_dir: Path, config: dict[str, Any], rows: int, m: int,
                    ef_construction: int | None = None) -> tuple[Any, np.ndarray] | None:
    """The exported text graph and its graph id -> item row map, when it matches as
    :func:`read_index` decides, else None."""
    index = read_index(model_dir, config, rows, m, ef_construction, key="text_index")
    if index is None:
        return None
    rows_file = Path(model_dir) / config["text_index"].get("rows_file", TEXT_INDEX_ROWS_FILE)
    return (index, np.load(rows_file)) if rows_file.is_file() else None


def _write_graph(model_dir: Path, file: str, vectors: np.ndarray, catalogue_rows: int) -> dict[str, Any] | None:
    """An HNSW graph over ``vectors`` saved as ``file`` when a catalogue of ``catalogue_rows``
    items needs one (serving's default exact_search_max_items) and FAISS is installed."""
    if catalogue_rows < EXPORT_MIN_ITEMS:
        return None
    if not faiss_available():
        logger.warning("%d items: no ANN index written (pip install faiss-cpu); serving builds one at start",
                       catalogue_rows)
        return None
    import faiss

    parameters = scaled_hnsw_parameters(catalogue_rows)
    faiss.write_index(build_hnsw(vectors, parameters.m, parameters.ef_construction), str(Path(model_dir) / file))
    return {"file": file, "kind": "hnsw", "metric": "inner_product", **parameters.as_record(),
            "rows": int(catalogue_rows)}


def read_index(model_dir: Path, config: dict[str, Any], rows: int, m: int,
               ef_construction: int | None = None, key: str = "item_index") -> Any | None:
    """The exported index config.json records under ``key`` (``item_index``, ``text_index``)
    when it matches (same rows, same graph degree, and the build breadth when one is
    configured), else None."""
    recorded = config.get(key)
    if not recorded or recorded.get("rows") != rows or recorded.get("m") != m or not faiss_available():
        return None
    if ef_construction is not None and recorded.get("ef_construction") != ef_construction:
        return None
    path = Path(model_dir) / recorded["file"]
    if not path.exists():
        return None
    import faiss

    # IO_FLAG_MMAP_IFC maps an HNSW graph's links and its vectors from the file (FAISS >= 1.11;
    # IO_FLAG_MMAP maps only inverted lists): the replicas of a node share one copy in the page
    # cache. A mapped graph cannot grow (FAISS aborts the process on add), so serving scores
    # items added after export exactly beside it.
    return _read_index_file(path, faiss.IO_FLAG_MMAP_IFC)


def _read_index_file(path: Path, mmap_flag: int) -> Any:
    """``path`` read memory-mapped with ``mmap_flag`` (read-only), or into memory where FAISS
    cannot map that index type."""
    import faiss

    try:
        return faiss.read_index(str(path), mmap_flag | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:  # an index type FAISS cannot map: read it into memory
        return faiss.read_index(str(path))


# -- compressed item vectors -------------------------------------------------------------------
#: How serving may hold the trained item vectors (``retrieval.vectors``): float32 (the model
#: file itself, memory-mapped), float16 (FAISS QT_fp16, 2x smaller), int8 (FAISS QT_8bit: per
#: dimension, 255 steps between that dimension's min and max, 4x smaller) and pq (FAISS product
#: quantisation, ``code_bytes`` bytes per item; dim/4 by default, 16x smaller).
VECTOR_KINDS = ("float32", "float16", "int8", "pq")
#: Flat: every row scanned (search up to exact_search_max_items); hnsw: a graph over the codes.
STRUCTURES = ("flat", "hnsw")
#: The compressed indexes a model directory holds: name -> what ``rayrec index build`` recorded.
MANIFEST_FILE = "item_indexes.json"
#: Fewest items PQ codebooks are trained on (256 centroids per sub-quantiser).
PQ_MIN_ITEMS = 256


def default_pq_bytes(dim: int) -> int:
    """PQ code size when none is configured: one byte per four dimensions, 16x less than float32."""
    return max(1, dim // 4)


def index_name(structure: str, vectors: str, code_bytes: int | None = None) -> str:
    """The manifest key (and file name part) of one compressed index: ``flat-int8``, ``hnsw-pq32``."""
    return f"{structure}-{vectors}{code_bytes if vectors == 'pq' else ''}"


def build_codes(vectors: np.ndarray, kind: str, code_bytes: int | None = None) -> Any:
    """A flat FAISS index (inner product) holding ``vectors`` (N, D) as ``kind`` codes, every row
    scanned by search: IndexScalarQuantizer (float16, int8) or IndexPQ (pq, 8-bit sub-quantisers,
    ``code_bytes`` of them; it must divide D)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "pq":
        code_bytes = code_bytes or default_pq_bytes(dim)
        _check_pq(len(vectors), dim, code_bytes)
        index = faiss.IndexPQ(dim, code_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexScalarQuantizer(dim, _scalar_type(kind), faiss.METRIC_INNER_PRODUCT)
    _train_and_add(index, vectors)
    return index


def build_hnsw_codes(vectors: np.ndarray, kind: str, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                     code_bytes: int | None = None) -> Any:
    """An HNSW graph (inner product) whose vectors are stored as ``kind`` codes (float32: the
    plain :func:`build_hnsw`). The graph's own links cost about 2 * m * 4 bytes per item."""
    import faiss

    if kind == "float32":
        return build_hnsw(vectors, m, ef_construction)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "pq":
        code_bytes = code_bytes or default_pq_bytes(dim)
        _check_pq(len(vectors), dim, code_bytes)
        index = faiss.IndexHNSWPQ(dim, code_bytes, m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWSQ(dim, _scalar_type(kind), m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    _train_and_add(index, vectors)
    return index


def _scalar_type(kind: str) -> int:
    import faiss

    types = {"float16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}
    if kind not in types:
        raise ValueError(f"unknown vector kind {kind!r}; known: {', '.join(VECTOR_KINDS)}")
    return types[kind]


def _check_pq(rows: int, dim: int, code_bytes: int) -> None:
    if dim % code_bytes:
        raise ValueError(f"pq code_bytes={code_bytes} must divide the model's dimension {dim}")
    if rows < PQ_MIN_ITEMS:
        raise ValueError(f"pq needs at least {PQ_MIN_ITEMS} items to train its codebooks, the model has {rows}")


def _train_and_add(index: Any, vectors: np.ndarray, sample: int = 200_000) -> None:
    """Train on (a sample of) the rows, then add them all in blocks (no second full copy)."""
    if not index.is_trained:
        rows = len(vectors)
        picked = np.sort(np.random.default_rng(0).choice(rows, sample, replace=False)) if rows > sample else slice(None)
        index.train(np.ascontiguousarray(vectors[picked], dtype=np.float32))
    for start in range(0, len(vectors), 65_536):
        index.add(np.ascontiguousarray(vectors[start: start + 65_536], dtype=np.float32))


def write_compressed(model_dir: Path, vectors: np.ndarray, kind: str, structure: str = "flat", *,
                     m: int = DEFAULT_M, ef_construction: int | None = None,
                     code_bytes: int | None = None) -> dict[str, Any]:
    """Build one compressed index over ``vectors`` (the model's item_embeddings.npy) and save it in
    ``model_dir`` with its record in ``item_indexes.json`` (rows, dim, parameters and the model
    version it was built from, so a retrained directory never serves a stale one); returns the record.
    ``ef_construction`` None: :func:`scaled_hnsw_parameters` for the catalogue."""
    import faiss

    ef_construction = ef_construction or scaled_hnsw_parameters(len(vectors)).ef_construction

    model_dir = Path(model_dir)
    if kind not in VECTOR_KINDS or kind == "float32" and structure == "flat":
        raise ValueError(f"vectors must be one of {', '.join(VECTOR_KINDS[1:])} for a flat index "
                         f"(float32 needs none), got {kind!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    if kind == "pq":
        code_bytes = code_bytes or default_pq_bytes(vectors.shape[1])
    index = build_codes(vectors, kind, code_bytes) if structure == "flat" else build_hnsw_codes(
        vectors, kind, m, ef_construction, code_bytes)
    name = index_name(structure, kind, code_bytes)
    file = f"item_index.{name}.faiss"
    faiss.write_index(index, str(model_dir / (file + ".tmp")))
    (model_dir / (file + ".tmp")).replace(model_dir / file)
    config = json.loads((model_dir / "config.json").read_text())
    record = {"file": file, "structure": structure, "vectors": kind, "metric": "inner_product",
              "rows": int(len(vectors)), "dim": int(vectors.shape[1]), "model_version": config.get("model_version"),
              "bytes": (model_dir / file).stat().st_size,
              **({"code_bytes": int(code_bytes)} if kind == "pq" else {}),
              **({"m": int(m), "ef_construction": int(ef_construction)} if structure == "hnsw" else {})}
    manifest = read_manifest(model_dir)
    manifest[name] = record
    (model_dir / (MANIFEST_FILE + ".tmp")).write_text(json.dumps(manifest, indent=2))
    (model_dir / (MANIFEST_FILE + ".tmp")).replace(model_dir / MANIFEST_FILE)
    return record


def read_manifest(model_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((Path(model_dir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def read_compressed(model_dir: Path, config: dict[str, Any], rows: int, kind: str, structure: str, *,
                    m: int = DEFAULT_M, code_bytes: int | None = None) -> Any | None:
    """The saved index of this kind and structure when it matches the model (same version, rows,
    dim, graph degree, code size), memory-mapped where FAISS allows; else None (build one)."""
    if not faiss_available():
        return None
    if kind == "pq":
        code_bytes = code_bytes or default_pq_bytes(int(config.get("dim", 0)) or 4)
    recorded = read_manifest(model_dir).get(index_name(structure, kind, code_bytes))
    if not recorded or recorded.get("rows") != rows or recorded.get("model_version") != config.get("model_version"):
        return None
    if recorded.get("dim") != config.get("dim") or structure == "hnsw" and recorded.get("m") != m:
        return None
    path = Path(model_dir) / recorded["file"]
    if not path.exists():
        return None
    import faiss

    # IO_FLAG_MMAP_IFC maps the codes of flat-code indexes (IndexScalarQuantizer, IndexPQ, an
    # HNSW graph's storage) from the file: a node's replicas share one copy in the page cache.
    # Mapped codes cannot grow (FAISS aborts the process on add): serving never adds to them.
    return _read_index_file(path, faiss.IO_FLAG_MMAP_IFC)
