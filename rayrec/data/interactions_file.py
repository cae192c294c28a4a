"""The generic interactions loader: one CSV/TSV/Parquet file, a directory of Parquet shards,
a glob pattern of files, or a directory holding one of these.

The file needs a header with at least ``user_id``, ``item_id`` and ``timestamp`` (any case);
``event_type`` and ``value`` are optional, other columns are ignored. Ids are opaque strings.
Timestamps are unix seconds (integers or floats) or ISO-8601 datetimes (UTC when no zone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import DataSource
from rayrec.data.columns import parse_ids, parse_labels, parse_timestamps, parse_values
from rayrec.data.malformed import DEFAULT_MAX_MALFORMED_FRACTION, MalformedRows
from rayrec.data.tables import (
    PARQUET_EXTENSIONS,
    TABLE_EXTENSIONS,
    METADATA_EXTENSIONS,
    RawTable,
    file_kind,
    find_column,
    read_parquet,
    read_table,
    require_file,
    table_header,
)
from rayrec.errors import DataError
from rayrec.schema import (
    EVENT_TYPE,
    INTERACTION_OPTIONAL,
    INTERACTION_REQUIRED,
    ITEM_ID,
    TIMESTAMP,
    USER_ID,
    VALUE,
    Dataset,
    Interactions,
    LoadReport,
)

#: File stems looked for when the path is a directory (e.g. the output of ``rayrec synthetic``).
INTERACTIONS_STEM = "interactions"
ITEMS_STEM = "items"
USERS_STEM = "users"

_EXPECTED_HEADER = f"columns {', '.join(INTERACTION_REQUIRED)} (optional: {', '.join(INTERACTION_OPTIONAL)})"


class FileSourceOptions(BaseModel):
    """Options shared by the file-based data sources."""

    model_config = ConfigDict(extra="forbid")

    strict: bool = Field(False, description="Fail on the first malformed row instead of skipping it.")
    max_malformed_fraction: float = Field(
        DEFAULT_MAX_MALFORMED_FRACTION,
        ge=0,
        le=1,
        description="Fail when more than this fraction of rows is malformed (default 10%).",
    )


def interactions_from_table(
    table: RawTable,
    columns: dict[str, str],
    malformed: MalformedRows,
    *,
    default_event_type: str | None = None,
) -> Interactions | None:
    """Convert a raw table to :class:`Interactions`, skipping and reporting bad rows.

    ``columns`` maps schema names (``user_id``, ``item_id``, ``timestamp``, optionally
    ``event_type`` and ``value``) to the table's column names. Returns None when a bad row was
    found but the table has no line numbers (fast read): re-read exactly and call again.
    """
    n = len(table)
    user_ids, bad_user = parse_ids(table.columns[columns[USER_ID]])
    item_ids, bad_item = parse_ids(table.columns[columns[ITEM_ID]])
    timestamps, bad_time = parse_timestamps(table.columns[columns[TIMESTAMP]])
    values, bad_value = None, np.zeros(n, dtype=bool)
    if VALUE in columns:
        values, bad_value = parse_values(table.columns[columns[VALUE]])
    if EVENT_TYPE in columns:
        event_types = parse_labels(table.columns[columns[EVENT_TYPE]])
    elif default_event_type is not None:
        event_types = np.full(n, default_event_type, dtype=object)
    else:
        event_types = None

    bad = bad_user | bad_item | bad_time | bad_value
    if bad.any():
        if not table.exact_lines:
            return None
        raw_time = table.columns[columns[TIMESTAMP]]
        raw_value = table.columns[columns[VALUE]] if VALUE in columns else None
        for row in np.flatnonzero(bad):
            if bad_user[row]:
                reason = f"empty {USER_ID}"
            elif bad_item[row]:
                reason = f"empty {ITEM_ID}"
            elif bad_time[row]:
                reason = (
                    f"{TIMESTAMP} {raw_time[row]!r} is neither unix seconds nor an ISO-8601 datetime"
                )
            else:
                reason = f"{VALUE} {raw_value[row]!r} is not a number"
            malformed.add(int(table.line_numbers[row]), reason)
    interactions = Interactions(user_ids, item_ids, timestamps, event_types, values)
    return interactions.take(~bad) if bad.any() else interactions


def load_interaction_table(
    path: str | Path,
    read: Callable[[bool, MalformedRows], RawTable],
    columns: dict[str, str],
    report: LoadReport,
    *,
    strict: bool = False,
    max_malformed_fraction: float = DEFAULT_MAX_MALFORMED_FRACTION,
    default_event_type: str | None = None,
) -> Interactions:
    """Read (fast, then exactly if any row is bad), convert, check the malformed share, report.

    ``read(exact, malformed)`` returns the raw table. Raises :class:`DataError` when there are
    no data rows, or when malformed rows exceed the allowed share (or any, with ``strict``).
    """
    malformed = MalformedRows(path, strict=strict, max_fraction=max_malformed_fraction)
    table = read(False, malformed)
    interactions = interactions_from_table(table, columns, malformed, default_event_type=default_event_type)
    if interactions is None:
        malformed = MalformedRows(path, strict=strict, max_fraction=max_malformed_fraction)
        table = read(True, malformed)
        interactions = interactions_from_table(table, columns, malformed, default_event_type=default_event_type)
        assert interactions is not None  # exact tables always convert
    if table.rows_read == 0:
        raise DataError("no interactions: the file has a header but no data rows", path=str(path))
    malformed.check(table.rows_read)
    malformed.record_into(report)
    report.rows_read += table.rows_read
    return interactions


def resolve_columns(header: list[str], path: str | Path, header_line: int | None) -> dict[str, str]:
    """Map schema column names to header names (case-insensitive); DataError if any is missing."""
    columns: dict[str, str] = {}
    for name in INTERACTION_REQUIRED + INTERACTION_OPTIONAL:
        found = find_column(header, name)
        if found is not None:
            columns[name] = found
    missing = [name for name in INTERACTION_REQUIRED if name not in columns]
    if missing:
        raise DataError(
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"the header has {_shown(header)}, but an interactions file needs {_EXPECTED_HEADER}",
            path=str(path),
            line=header_line,
            column=missing[0],
        )
    return columns


def load_interactions_file(
    path: str | Path,
    *,
    strict: bool = False,
    max_malformed_fraction: float = DEFAULT_MAX_MALFORMED_FRACTION,
    report: LoadReport | None = None,
) -> Interactions:
    """Interactions from one CSV/TSV/TXT/Parquet file (see the module docstring for the format).

    Malformed rows are skipped and counted into ``report``; more than
    ``max_malformed_fraction`` of them (or any, with ``strict``) raise :class:`DataError`.
    """
    path = require_file(path, f"a CSV, TSV or Parquet file with {_EXPECTED_HEADER}")
    if file_kind(path) not in ("delimited", "parquet"):
        raise DataError(
            f"unsupported file type {path.suffix!r}; interactions files must end in "
            f"{', '.join(TABLE_EXTENSIONS)}",
            path=str(path),
        )
    report = report if report is not None else LoadReport()
    if file_kind(path) == "parquet":
        table = read_parquet(path)  # the header comes with the (typed) table; lines are row numbers
        columns = resolve_columns(table.header, path, None)

        def read(exact: bool, malformed: MalformedRows) -> RawTable:
            return table

    else:
        # Validate the header before reading what may be millions of rows.
        header, header_line = table_header(path, INTERACTION_REQUIRED, expected=_EXPECTED_HEADER)
        columns = resolve_columns(header, path, header_line)

        def read(exact: bool, malformed: MalformedRows) -> RawTable:
            return read_table(
                path, malformed=malformed, wanted_columns=INTERACTION_REQUIRED, exact=exact,
                expected=_EXPECTED_HEADER, integer_hint=(columns[TIMESTAMP],),
            )

    return load_interaction_table(
        path, read, columns, report, strict=strict, max_malformed_fraction=max_malformed_fraction
    )


def find_in_directory(directory: Path, stem: str, extensions) -> Path | None:
    """``directory/<stem><extension>`` for the first of ``extensions`` that exists, or None."""
    for extension in extensions:
        candidate = directory / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None


#: Characters that make an ``--interactions`` path a glob pattern.
GLOB_CHARACTERS = "*?["


def is_glob(path: str) -> bool:
    return any(char in path for char in GLOB_CHARACTERS)


def parquet_shards(directory: Path) -> list[Path]:
    """The ``*.parquet`` (``*.pq``) files directly in ``directory``, in name order: a sharded
    table as Spark, Ray Data or ``rayrec synthetic --format parquet`` write it."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PARQUET_EXTENSIONS)


def glob_files(pattern: str) -> list[Path]:
    """The interaction files ``pattern`` matches, in name order; a DataError when none does,
    or when one is no CSV/TSV/Parquet file."""
    import glob

    files = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if Path(match).is_file())
    if not files:
        raise DataError("the pattern matches no file", path=pattern)
    wrong = [f for f in files if file_kind(f) not in ("delimited", "parquet")]
    if wrong:
        raise DataError(f"the pattern matches {wrong[0].name}, which is no interactions file (they end in "
                        f"{', '.join(TABLE_EXTENSIONS)})", path=pattern)
    return files


def interaction_files(location: Path) -> list[Path] | None:
    """The interaction files of a directory: ``interactions.<ext>``, the shards of an
    ``interactions/`` folder, or the directory's own Parquet shards; None when it has none."""
    single = find_in_directory(location, INTERACTIONS_STEM, TABLE_EXTENSIONS)
    if single is not None:
        return [single]
    folder = location / INTERACTIONS_STEM
    if folder.is_dir() and parquet_shards(folder):
        return parquet_shards(folder)
    return parquet_shards(location) or None


class InteractionsFileSource(DataSource):
    """A generic interactions file, a directory of Parquet shards or a glob pattern of files,
    or a directory with ``interactions.*`` or an ``interactions/`` folder of shards (+ items/users)."""

    name = "interactions-file"
    description = (
        "CSV/TSV/Parquet with user_id,item_id,timestamp[,event_type,value]; a directory of Parquet shards or a "
        "glob ('data/*.parquet'); or a directory with interactions.<ext> (or interactions/ shards) and optional "
        "items.<ext>, users.<ext>."
    )
    Options = FileSourceOptions

    def can_load(self, path: str) -> bool:
        if is_glob(path) and not Path(path).exists():
            return True  # load() names the pattern when it matches nothing
        candidate = Path(path)
        if candidate.is_dir():
            return interaction_files(candidate) is not None
        return candidate.is_file() and file_kind(candidate) in ("delimited", "parquet")

    def load(self, path: str) -> Dataset:
        from rayrec.data.metadata import load_items_file, load_users_file

        location = Path(path)
        items_path = users_path = None
        if is_glob(path) and not location.exists():
            files = glob_files(path)
            name = files[0].parent.resolve().name
        elif location.is_dir():
            files = interaction_files(location)
            if files is None:
                raise DataError(
                    f"no {INTERACTIONS_STEM}.<ext> file, {INTERACTIONS_STEM}/ folder of Parquet shards or *.parquet "
                    f"shard in this directory (looked for {', '.join(INTERACTIONS_STEM + e for e in TABLE_EXTENSIONS)})",
                    path=str(location),
                )
            items_path = find_in_directory(location, ITEMS_STEM, METADATA_EXTENSIONS)
            users_path = find_in_directory(location, USERS_STEM, METADATA_EXTENSIONS)
            name = location.resolve().name
        else:
            files = [location]
            name = location.stem
        report = LoadReport()
        options = self.options
        # Each file on its own, so a malformed row names its own file and line; the share of
        # malformed rows is checked per file.
        interactions = Interactions.concat([
            load_interactions_file(file, strict=options.strict, max_malformed_fraction=options.max_malformed_fraction,
                                   report=report)
            for file in files
        ])
        limits = {"strict": options.strict, "max_malformed_fraction": options.max_malformed_fraction, "report": report}
        items = load_items_file(items_path, **limits) if items_path else None
        users = load_users_file(users_path, **limits) if users_path else None
        return Dataset(name=name, interactions=interactions, items=items, users=users, report=report)


def _shown(header: list[str], columns: int = 10, width: int = 40) -> str:
    """The header as an error message shows it: a binary or very wide first line stays one
    readable line (the first ``columns`` names, each cut at ``width`` characters)."""
    names = [name if len(name) <= width else name[:width] + "..." for name in header[:columns]]
    more = f" and {len(header) - columns} more" if len(header) > columns else ""
    return f"{names}{more}"
