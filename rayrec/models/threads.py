"""Capping the compute threads of a fit for a while (a selection trial owns only its CPUs)."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def compute_threads(threads: int | None) -> Iterator[None]:
    """Torch's threads and, through threadpoolctl where installed, numpy's BLAS threads at
    ``threads`` inside the block; None leaves both as they are (Ray sets OMP_NUM_THREADS,
    which both follow, to a worker's CPUs)."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        with contextlib.ExitStack() as stack:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                pass
            else:
                stack.enter_context(threadpool_limits(max(1, int(threads))))
            yield
    finally:
        torch.set_num_threads(previous)
