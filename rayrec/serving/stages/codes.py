"""The trained item vectors held as FAISS codes (float16, int8 or PQ) instead of float32.

A scorer replica holds ``code_size`` bytes per item instead of ``4 * D``: the codes of a
flat FAISS index (IndexScalarQuantizer, IndexPQ) or of an HNSW graph's storage, memory-mapped
from the model directory where the index was saved there. Two ways to read them:

- top-K: FAISS's own scan (SIMD decode-and-multiply, nothing materialised), through
  ``index.search``;
- every row's inner product or norm (``/similar-items``, the complete fallback of a very
  restrictive filter, recall probes): numpy over blocks of rows, so no (N, D) float32 copy
  exists at any time, only one (block, D) buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Rows decoded at once for whole-catalogue products: a (BLOCK, D) float32 buffer stays in cache.
BLOCK = 4096


class CompressedRows:
    """``index``'s codes as rows: (N, code_size) uint8, with what decodes them.

    ``index``: a flat FAISS index with codes (IndexScalarQuantizer QT_fp16 / QT_8bit, IndexPQ);
    for an HNSW graph over codes, its ``storage``. The FAISS object is kept alive here: the
    numpy view of its codes points into its memory (or its memory-mapped file).
    """

    def __init__(self, index: Any) -> None:
        import faiss

        # A downcast wrapper does not own the C++ index: keep the object given, which may.
        self._owner = index
        self.index = index if isinstance(index, (faiss.IndexPQ, faiss.IndexScalarQuantizer)) else faiss.downcast_index(index)
        self.rows, self.dim = int(self.index.ntotal), int(self.index.d)
        size = int(self.index.code_size)
        if self.rows:
            flat = faiss.rev_swig_ptr(self.index.codes.data(), self.rows * size)
            self.codes = np.frombuffer(flat, dtype=np.uint8).reshape(self.rows, size)
        else:
            self.codes = np.zeros((0, size), dtype=np.uint8)
        if isinstance(self.index, faiss.IndexPQ):
            self.kind = "pq"
            pq = self.index.pq
            self.subspaces, self.subdim = int(pq.M), int(pq.dsub)
            if int(pq.nbits) != 8:
                raise ValueError(f"PQ with {pq.nbits}-bit codes is not supported (8 bits per sub-quantiser)")
            # (M, 256, D/M): sub-vector m of a row is centroids[m, code[m]]; rows' norms add up per sub-space.
            self.centroids = faiss.vector_to_array(pq.centroids).reshape(self.subspaces, int(pq.ksub), self.subdim)
            self._centroid_norms = (self.centroids.astype(np.float64) ** 2).sum(axis=2).astype(np.float32)
            self._offsets = (np.arange(self.subspaces) * int(pq.ksub)).astype(np.intp)
        elif isinstance(self.index, faiss.IndexScalarQuantizer):
            qtype = int(self.index.sq.qtype)
            if qtype == faiss.ScalarQuantizer.QT_fp16:
                self.kind = "float16"
            elif qtype == faiss.ScalarQuantizer.QT_8bit:
                self.kind = "int8"
                # QT_8bit: x = vmin + (code + 0.5) / 255 * vdiff per dimension (FAISS's trained ranges).
                trained = faiss.vector_to_array(self.index.sq.trained).astype(np.float32)
                vmin, vdiff = trained[: self.dim], trained[self.dim:]
                self.scale = (vdiff / 255.0).astype(np.float32)
                self.offset = (vmin + 0.5 * self.scale).astype(np.float32)
            else:
                raise ValueError(f"scalar quantiser type {qtype} is not supported (float16 or int8)")
        else:
            raise ValueError(f"{type(self.index).__name__} holds no supported codes (IndexScalarQuantizer, IndexPQ)")

    @property
    def nbytes(self) -> int:
        """Bytes the codes take (the PQ codebooks and quantiser ranges are a few KB on top)."""
        return int(self.codes.nbytes)

    # -- top-K through FAISS -------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows with the largest decoded inner products, best first: (D,) -> ((<=k,), (<=k,))."""
        k = min(k, self.rows)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores, rows = self.index.search(np.ascontiguousarray(query, dtype=np.float32)[None, :], k)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    # -- whole-catalogue products, block by block -------------------------------------------------
    def products(self, queries: np.ndarray) -> np.ndarray:
        """Decoded inner products of every row with each query: (B, D) -> (B, N) float32."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        out = np.empty((len(queries), self.rows), dtype=np.float32)
        if self.kind == "pq":
            # The product with a row is the sum of its sub-vectors' products: one table per query.
            tables = np.einsum("mcd,bmd->bmc", self.centroids, queries.reshape(len(queries), self.subspaces, self.subdim))
            for b, table in enumerate(tables):
                flat = table.ravel()
                for start, block in self._blocks():
                    out[b, start: start + len(block)] = flat[block.astype(np.intp) + self._offsets].sum(axis=1)
            return out
        if self.kind == "int8":
            # Folded into the queries: (c * scale + offset) . q = c . (scale * q) + offset . q
            folded = np.ascontiguousarray((queries * self.scale).T)
            constant = queries @ self.offset
        else:
            folded, constant = np.ascontiguousarray(queries.T), None
        buffer = np.empty((BLOCK, self.dim), dtype=np.float32)
        for start, block in self._blocks():
            rows = buffer[: len(block)]
            self._raw(block, rows)
            out[:, start: start + len(block)] = (rows @ folded).T
        if constant is not None:
            out += constant[:, None]
        return out

    def norms(self) -> np.ndarray:
        """Every row's decoded length: (N,) float32."""
        out = np.empty(self.rows, dtype=np.float32)
        if self.kind == "pq":
            flat = self._centroid_norms.ravel()
            for start, block in self._blocks():
                out[start: start + len(block)] = np.sqrt(flat[block.astype(np.intp) + self._offsets].sum(axis=1))
            return out
        buffer = np.empty((BLOCK, self.dim), dtype=np.float32)
        for start, block in self._blocks():
            rows = self.decode(block, buffer[: len(block)])
            out[start: start + len(block)] = np.sqrt(np.einsum("nd,nd->n", rows, rows))
        return out

    def decode(self, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows' vectors from their codes: (M, code_size) -> (M, D) float32."""
        if self.kind == "pq":
            return self.centroids[np.arange(self.subspaces), codes.astype(np.intp)].reshape(len(codes), self.dim)
        out = np.empty((len(codes), self.dim), dtype=np.float32) if out is None else out
        self._raw(codes, out)
        if self.kind == "int8":
            out *= self.scale
            out += self.offset
        return out

    def _raw(self, codes: np.ndarray, out: np.ndarray) -> None:
        """int8: the codes as floats (before scale and offset); float16: the values."""
        if self.kind == "float16":
            np.copyto(out, codes.view(np.float16), casting="same_kind")
        else:
            np.copyto(out, codes, casting="unsafe")

    def _blocks(self):
        for start in range(0, self.rows, BLOCK):
            yield start, self.codes[start: start + BLOCK]
