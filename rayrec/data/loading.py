"""``load_dataset``: one entry point that picks the right data source for a path, and
``load_datasets``: several of them (files, a state store's event log) as one dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pydantic import ValidationError

from rayrec.config import validation_problems
from rayrec.data.metadata import load_items_file, load_users_file
from rayrec.data.tables import TABLE_EXTENSIONS
from rayrec.errors import ConfigError, DataError, RayrecError
from rayrec.schema import Dataset, Interactions, LoadReport


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


def load_datasets(
    paths: Sequence[str | Path],
    items: str | Path | None = None,
    users: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Load each of ``paths`` with :func:`load_dataset` and combine them into one dataset.

    The interactions are concatenated in the order given (exact duplicates, such as an event
    both exported to a file and still in the event log, are dropped later by
    :func:`rayrec.data.preprocess`); the metadata is the first input's that has any, unless
    ``items``/``users`` name files; the reports add up. Then the rows of every user any input
    erased (:attr:`rayrec.schema.Dataset.erased_users`), and of every (user, item) pair any
    input disliked, are dropped from all of them, so the erasure reaches the next model.
    """
    if not paths:
        raise DataError("no interactions given; name at least one file, directory or state store URL")
    parts = [load_dataset(path, options=options) for path in paths]
    if len(parts) == 1:
        dataset = parts[0]
    else:
        report = LoadReport()
        for part in parts:
            report.add(part.report)
        dataset = Dataset(
            name="+".join(part.name for part in parts),
            interactions=Interactions.concat([part.interactions for part in parts]),
            items=next((part.items for part in parts if part.items is not None), None),
            users=next((part.users for part in parts if part.users is not None), None),
            report=report,
            erased_users=frozenset().union(*(part.erased_users for part in parts)),
            disliked=frozenset().union(*(part.disliked for part in parts)),
        )
    dataset = without_erased_and_disliked(dataset)
    if items is not None:
        dataset.items = load_items_file(items, report=dataset.report)
    if users is not None:
        dataset.users = load_users_file(users, report=dataset.report)
    return dataset


def without_erased_and_disliked(dataset: Dataset) -> Dataset:
    """``dataset`` without the rows of its erased users and of its disliked (user, item)
    pairs, counted into its report; the same object when there are none."""
    interactions = dataset.interactions
    if not (dataset.erased_users or dataset.disliked) or len(interactions) == 0:
        return dataset
    erased, disliked = dataset.erased_users, dataset.disliked
    users, items = interactions.user_id.tolist(), interactions.item_id.tolist()
    of_erased = np.fromiter((user in erased for user in users), dtype=bool, count=len(users))
    of_disliked = np.fromiter(((user, item) in disliked for user, item in zip(users, items)), dtype=bool,
                              count=len(users)) & ~of_erased
    report = dataclasses.replace(dataset.report, malformed_examples=list(dataset.report.malformed_examples))
    report.erased_dropped += int(of_erased.sum())
    report.disliked_dropped += int(of_disliked.sum())
    return dataclasses.replace(dataset, interactions=interactions.take(~(of_erased | of_disliked)), report=report)
