"""What several benchmarks share: where the datasets are, how to run the ``rayrec`` command,
and which users a served model knows."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: ``$RAYREC_DATASETS``, else ``../shared/datasets`` next to the repository.
DATASETS = Path(os.environ.get("RAYREC_DATASETS", HERE.parent.parent / "shared" / "datasets"))


def rayrec_command() -> list[str]:
    """The ``rayrec`` script of this Python's environment, or ``python -m rayrec``."""
    script = Path(sys.executable).with_name("rayrec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rayrec"]


def training_users(model_dir: str | Path, count: int = 1000) -> list[str]:
    """Up to ``count`` users with a training history in ``model_dir``: their requests run the
    user tower (the tests' ToyModel keeps its histories by user id)."""
    from rayrec.models.servable import load_model_dir

    model = load_model_dir(model_dir)
    ids = model.user_vocab.ids if hasattr(model, "user_vocab") else list(model.histories)
    return [user for user in ids if len(model.training_history(user))][:count]
