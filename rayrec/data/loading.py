"""``load_dataset``: one entry point that picks the right data source for a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rayrec.config import validation_problems
from rayrec.data.metadata import load_items_file, load_users_file
from rayrec.data.tables import TABLE_EXTENSIONS
from rayrec.errors import ConfigError, DataError
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
            dataset = source.load(text)
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


