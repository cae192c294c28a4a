"""Model arrays in serving: torch views of memory-mapped ones (shared by a node's replicas), their
pages, single rows read from the file, and append-only growth."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing ``array``'s memory, read-only arrays included. torch warns that
    it cannot protect such memory from writes; model arrays are only ever read, so the warning
    says nothing here, and a copy would cost every replica the array's size."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def release_pages(array: np.ndarray) -> bool:
    """Hand back the pages of ``array``'s memory-mapped file that this process has read, where
    it is one (``np.load(..., mmap_mode="r")``); True if it was. The file and the page cache are
    untouched: a later read of a row faults it back in from the cache. For a replica that read a
    whole model file once (to build compressed codes of it) and from then on reads only a few
    rows, this keeps its resident memory to those rows. No-op for arrays in ordinary memory."""
    import mmap

    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) or getattr(base, "base", None)
    if base is None or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    try:
        base.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        return False
    return True


class FileRows:
    """Rows of a memory-mapped 2-D array read from its file with ``pread``, not through the map.

    Touching a few random rows of a mapped file maps far more than those rows: the kernel maps
    the pages around each fault too (fault-around, 64 KB), so a few thousand scattered reads
    leave a whole item matrix resident in the process. ``pread`` copies just the rows; the
    page cache keeps what was read (shared by the node's processes, reclaimable), and the
    process's resident memory stays what it allocated. :meth:`of` returns None for arrays
    that are not a C-ordered view of a memory-mapped file (read those by indexing).
    """

    def __init__(self, path: str, offset: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        import os
        import weakref

        self.shape, self.dtype = shape, np.dtype(dtype)
        self.offset, self.row_bytes = offset, shape[1] * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    @classmethod
    def of(cls, array: np.ndarray) -> "FileRows | None":
        import os

        if array.ndim != 2 or not array.flags.c_contiguous or not hasattr(os, "preadv"):
            return None
        import mmap

        base = array  # down to the array the mapping was made for (its views share its offset)
        while isinstance(base, np.ndarray) and not isinstance(base.base, mmap.mmap):
            base = base.base
        if not isinstance(base, np.memmap) or not getattr(base, "filename", None) or not base.flags.c_contiguous:
            return None
        start = array.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        if start < 0 or start + array.nbytes > base.nbytes:
            return None
        return cls(base.filename, int(base.offset) + start, array.shape, array.dtype)

    def __getitem__(self, rows) -> np.ndarray:
        """(M,) row numbers -> (M, D) copies of those rows."""
        import os

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        if len(rows) and (rows.min() < -self.shape[0] or rows.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.shape[0]} rows")
        for position, row in enumerate(np.where(rows < 0, rows + self.shape[0], rows).tolist()):
            os.preadv(self._fd, [out[position]], self.offset + row * self.row_bytes)
        return out


def appended(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``array`` with ``values`` (rows) after it, as a view of a buffer with room to spare:
    appends cost their own size, amortised, not a copy of every row (the buffer doubles when
    full). Used for items added to a served catalogue: their vectors and per-row bookkeeping."""
    used, extra = len(array), len(values)
    buffer = array.base if isinstance(array.base, np.ndarray) and array.base.ndim == array.ndim else array
    is_prefix = buffer.ctypes.data == array.ctypes.data and buffer.dtype == array.dtype
    if not is_prefix or len(buffer) < used + extra:
        grown = np.empty((max(2 * used, used + extra, 16), *array.shape[1:]), dtype=array.dtype)
        grown[:used] = array
        buffer = grown
    buffer[used: used + extra] = values
    return buffer[: used + extra]
