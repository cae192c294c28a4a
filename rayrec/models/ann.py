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
from typing import Any, Callable

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
#: config.json's ``metric`` of an item graph: FAISS's inner-product HNSW, or a LengthenedGraph
#: (recorded with its ``max_norm``), whichever choose_item_graph measured better for the model.
INNER_PRODUCT = "inner_product"
LENGTHENED_METRIC = "l2_lengthened"
CHOICE_SAMPLE_ITEMS = 50_000
CHOICE_MARGIN = 0.01
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
    """A FAISS HNSW graph by inner product over ``vectors`` (N, D) float32 (the one serving
    builds itself; export may save a :class:`LengthenedGraph` instead)."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class LengthenedGraph:
    """An HNSW graph that ranks item vectors by inner product, built as an L2 graph over the
    vectors lengthened by one coordinate to a common norm (the reduction of maximum inner
    product search to nearest neighbours, Bachrach et al. 2014): x -> [x, sqrt(R^2 - |x|^2)],
    R the longest item's norm, and the query q -> [q, 0], so |q' - x'|^2 = |q|^2 + R^2 - 2 q.x
    orders the items exactly as q.x does. ``search`` returns the exact inner products.

    Neither this nor FAISS's inner-product graph is the better one for every model, so export
    measures both on the model's own users (:func:`choose_item_graph`). On a SASRec model of
    361,516 items the inner-product graph found 0.79 of the true top 10 and this one 0.985; on
    vectors whose lengths spread over a long tail it is the other way round (README, Big
    catalogues).
    """

    def __init__(self, index: Any, max_norm: float) -> None:
        self.index = index
        self.max_norm = float(max_norm)

    @classmethod
    def build(cls, vectors: np.ndarray, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION
              ) -> "LengthenedGraph":
        import faiss

        vectors = np.asarray(vectors, dtype=np.float32)
        graph = cls(faiss.IndexHNSWFlat(vectors.shape[1] + 1, m, faiss.METRIC_L2),
                    float(np.linalg.norm(vectors, axis=1).max()) if len(vectors) else 0.0)
        graph.index.hnsw.efConstruction = ef_construction
        for start in range(0, len(vectors), 100_000):  # the lengthened copy a block at a time
            graph.index.add(graph._lengthened(vectors[start: start + 100_000]))
        return graph

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def _lengthened(self, vectors: np.ndarray) -> np.ndarray:
        extra = np.sqrt(np.maximum(self.max_norm ** 2 - np.einsum("ij,ij->i", vectors, vectors), 0.0))
        return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)

    def add(self, vectors: np.ndarray) -> None:
        # Serving never grows an exported graph (it is memory-mapped); say so rather than place
        # rows longer than R wrongly.
        raise TypeError("an exported item graph does not take new rows: they are scored exactly beside it")

    def search(self, query: np.ndarray, fetch: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        padded = np.zeros((1, self.index.d), dtype=np.float32)
        padded[0, :-1] = query
        _, ids = self.index.search(padded, fetch, params=faiss.SearchParametersHNSW(efSearch=max(ef_search, fetch)))
        ids = ids[0]
        scores = np.full(len(ids), -np.inf, dtype=np.float32)
        found = ids >= 0
        if found.any():
            scores[found] = self.index.reconstruct_batch(ids[found])[:, :-1] @ np.asarray(query, dtype=np.float32)
        return scores, ids


def choose_item_graph(vectors: np.ndarray, queries: np.ndarray, parameters: HnswParameters,
                      seed: int = 0) -> dict[str, Any]:
    """Which graph kind finds more of the exact top 10 for these user vectors (``queries``,
    (Q, D)): both built with ``parameters`` over a sample of CHOICE_SAMPLE_ITEMS items (on a
    SASRec model the sample's recalls, 0.85 and 0.99, matched the full catalogue's, 0.79 and
    0.985), in seconds. The lengthened graph must win by ``CHOICE_MARGIN``; inner product
    otherwise, as exports before the choice had."""
    rng = np.random.default_rng(seed)
    vectors = np.asarray(vectors, dtype=np.float32)
    rows = np.sort(rng.choice(len(vectors), size=min(len(vectors), CHOICE_SAMPLE_ITEMS), replace=False))
    sample, queries = np.ascontiguousarray(vectors[rows]), np.asarray(queries, dtype=np.float32)
    k = min(10, len(sample))
    exact = np.argpartition(-(queries @ sample.T), k - 1, axis=1)[:, :k]
    recalls = {}
    for metric, graph in ((INNER_PRODUCT, build_hnsw(sample, parameters.m, parameters.ef_construction)),
                          (LENGTHENED_METRIC, LengthenedGraph.build(sample, parameters.m, parameters.ef_construction))):
        hits = sum(len(set(search_hnsw(graph, query, k, parameters.ef_search)[1].tolist()) & set(top.tolist()))
                   for query, top in zip(queries, exact))
        recalls[metric] = round(hits / (k * len(queries)), 4)
    chosen = LENGTHENED_METRIC if recalls[LENGTHENED_METRIC] >= recalls[INNER_PRODUCT] + CHOICE_MARGIN else INNER_PRODUCT
    return {"metric": chosen, "sample_recall_at_10": recalls, "sample_items": len(sample), "queries": len(queries)}


def search_hnsw(index: Any, query: np.ndarray, fetch: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the ``fetch`` best rows of an HNSW ``index`` (a FAISS inner-product
    graph or a :class:`LengthenedGraph`) for one ``query``, searched at least ``fetch`` broad
    (a graph returns no more than its breadth). The breadth goes with the call, so an index
    shared by every request holds no per-request setting."""
    if isinstance(index, LengthenedGraph):
        return index.search(query, fetch, ef_search)
    import faiss

    params = faiss.SearchParametersHNSW(efSearch=max(ef_search, fetch))
    scores, ids = index.search(np.ascontiguousarray(query[None, :], dtype=np.float32), fetch, params=params)
    return scores[0], ids[0]


def write_index(model_dir: Path, vectors: np.ndarray,
                user_vectors: Callable[[], np.ndarray | None] | None = None) -> dict[str, Any] | None:
    """Build and save the index (with :func:`scaled_hnsw_parameters`) when the catalogue needs one
    and FAISS is installed; returns what ``config.json`` records about it, the parameters
    included, so serving searches with the ef_search it was built for (None: no index written).
    ``user_vectors``: called only when a graph is written, some of the model's user vectors
    (Q, D), on which :func:`choose_item_graph` picks the graph kind; None (or None returned):
    the inner-product graph."""
    return _write_graph(model_dir, INDEX_FILE, vectors, len(vectors), user_vectors)


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


def _write_graph(model_dir: Path, file: str, vectors: np.ndarray, catalogue_rows: int,
                 user_vectors: Callable[[], np.ndarray | None] | None = None) -> dict[str, Any] | None:
    """An HNSW graph over ``vectors`` saved as ``file`` when a catalogue of ``catalogue_rows``
    items needs one (serving's default exact_search_max_items) and FAISS is installed; its
    kind chosen on ``user_vectors`` (:func:`write_index`), else inner product (text search's
    unit vectors, of one length, where the two kinds rank alike)."""
    if catalogue_rows < EXPORT_MIN_ITEMS:
        return None
    if not faiss_available():
        logger.warning("%d items: no ANN index written (pip install faiss-cpu); serving builds one at start",
                       catalogue_rows)
        return None
    import faiss

    parameters = scaled_hnsw_parameters(catalogue_rows)
    queries = user_vectors() if user_vectors is not None else None
    choice = choose_item_graph(vectors, queries, parameters) if queries is not None and len(queries) else None
    if choice is not None:
        logger.info("item graph: %s (recall@10 on %d sampled items for %d users: %s)", choice["metric"],
                    choice["sample_items"], choice["queries"], choice["sample_recall_at_10"])
    record: dict[str, Any] = {"file": file, "kind": "hnsw", "metric": INNER_PRODUCT}
    if choice is not None and choice["metric"] == LENGTHENED_METRIC:
        graph = LengthenedGraph.build(vectors, parameters.m, parameters.ef_construction)
        faiss.write_index(graph.index, str(Path(model_dir) / file))
        record.update(metric=LENGTHENED_METRIC, max_norm=graph.max_norm)
    else:
        faiss.write_index(build_hnsw(vectors, parameters.m, parameters.ef_construction), str(Path(model_dir) / file))
    return {**record, **parameters.as_record(), "rows": int(catalogue_rows),
            **({"chosen_by": {key: choice[key] for key in ("sample_recall_at_10", "sample_items", "queries")}}
               if choice is not None else {})}


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
    index = _read_index_file(path, faiss.IO_FLAG_MMAP_IFC)
    if recorded.get("metric") == LENGTHENED_METRIC:
        return LengthenedGraph(index, recorded["max_norm"])
    return index


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
