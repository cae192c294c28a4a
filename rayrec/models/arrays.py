"""Torch views of model arrays that are memory-mapped read-only (shared by a node's replicas)."""

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
