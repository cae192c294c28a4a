"""``load_dataset``: one entry point that picks the right data source for a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rayrec.config import validation_problems
from rayrec.data.metadata import load_items_file, load_users_file
from rayrec.data.tables import TABLE_EXTENSIONS
from rayrec.errors import ConfigError, DataError, RayrecError
from rayrec.schema import Dataset


def _supported_formats(sources: dict) -> str:
    lines = [f"  {name}: {entry.cls.description}" for name, entry in sources.items()]
    return "\n".join(lines) or "  (no data sources are registered)"


def load_dataset(
    path: str | Path,
    items: str | Path | None = None,
    users: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Load ``path`` with the first registered data source whose ``can_load`` accepts it.

    Sources are tried in registration order (built-ins first: MovieLens 100K, MovieLens
    latest, synthetic, generic interactions file). ``items``/``users`` name metadata files
    (CSV/TSV/Parquet/JSONL) that replace whatever the source loaded. ``options`` go to the
    chosen source's ``Options`` (e.g. ``{"strict": True}``). Raises :class:`DataError`
    listing the supported formats when nothing can load ``path``.
    """
    from rayrec.plugins import registry

    sources = registry().by_kind.get("data_source", {})
    text = str(path)
    for name, entry in sources.items():
        if entry.cls().can_load(text):
            try:
                source = entry.cls(options or {})
            except ValidationError as exc:
                raise ConfigError(f"invalid options for data source {name!r}: {validation_problems(exc)}") from None
            dataset = _load_with(source, name, entry.plugin, text)
            break
    else:
        exists = Path(text).exists()
        problem = "no data source can load this path" if exists else "no such file or directory"
        raise DataError(
            f"{problem}. Supported: a file ending in {', '.join(TABLE_EXTENSIONS)} with columns "
            f"user_id,item_id,timestamp; a directory in one of the layouts below; or "
            f"'synthetic:users=N,...'. Data sources:\n{_supported_formats(sources)}",
            path=text,
        )
    if items is not None:
        dataset.items = load_items_file(items, report=dataset.report)
    if users is not None:
        dataset.users = load_users_file(users, report=dataset.report)
    return dataset


def _load_with(source, name: str, plugin: str, path: str) -> Dataset:
    """``source.load(path)``, checked: a :class:`DataError` (or any rayrec error) the source
    raises passes as it is; any other exception, and a result that is not a
    :class:`Dataset`, become a one-line :class:`DataError` naming the data source and its
    plugin (the original exception stays chained for a debugger)."""
    try:
        dataset = source.load(path)
    except RayrecError:
        raise
    except Exception as exc:
        problem = " ".join(str(exc).split()) or "(no message)"
        raise DataError(f"data source {name!r} (plugin {plugin}) failed to load it: {type(exc).__name__}: {problem}",
                        path=path) from exc
    if not isinstance(dataset, Dataset):
        raise DataError(f"data source {name!r} (plugin {plugin}) returned {type(dataset).__name__}, "
                        "not a rayrec.schema.Dataset", path=path)
    return dataset
