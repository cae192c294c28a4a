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
