"""Shared test helpers: locating the read-only public datasets in ``../shared/datasets``.

The datasets' licences forbid copying them into the repository, so tests read them where
they are and skip (with a message saying where they looked) when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ray processes started by any test inherit this: a slow Serve proxy start under CI load must
# not be taken for a dead proxy.
from rayrec.serving.graph.proxy import relax_proxy_health_checks  # noqa: E402

relax_proxy_health_checks()
#: Where the datasets may live, first match wins: $RAYREC_DATASETS, ../shared/datasets
#: next to the repository (the usual layout), shared/datasets inside it (device copies).
DATASET_DIRS = [
    *([Path(os.environ["RAYREC_DATASETS"])] if os.environ.get("RAYREC_DATASETS") else []),
    REPO_ROOT.parent / "shared" / "datasets",
    REPO_ROOT / "shared" / "datasets",
]


def shared_dataset(name: str) -> Path:
    """The directory of shared dataset ``name`` (e.g. ``"ml-100k"``), or skip the test."""
    for base in DATASET_DIRS:
        candidate = base / name
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(base / name) for base in DATASET_DIRS)
    pytest.skip(f"shared dataset {name!r} not found (looked in {looked}); set RAYREC_DATASETS to its parent folder")


@pytest.fixture(name="shared_dataset")
def shared_dataset_fixture():
    """``shared_dataset("ml-100k")`` inside a test: the dataset's path, or a clean skip."""
    return shared_dataset


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    return shared_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml_latest_small_path() -> Path:
    return shared_dataset("ml-latest-small")
