"""Generic item and user metadata files (CSV, TSV, Parquet or JSON lines).

Items: ``item_id`` plus any of ``title``, ``text`` (or ``description``) and ``categories``
(``|``-separated in text files, a list in JSON/Parquet). Users: ``user_id`` plus any other
columns, each kept as a categorical feature (values as strings). Column names match
case-insensitively. A repeated id keeps its first row; the repeats count as malformed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rayrec.data.columns import parse_ids, parse_labels, split_categories
from rayrec.data.malformed import DEFAULT_MAX_MALFORMED_FRACTION, MalformedRows
from rayrec.data.tables import METADATA_EXTENSIONS, RawTable, file_kind, find_column, read_table, require_file
from rayrec.errors import DataError
from rayrec.schema import CATEGORIES, DESCRIPTION, ITEM_ID, TEXT, TITLE, USER_ID, Items, LoadReport, Users


def _read_metadata(path: str | Path, id_column: str, expected: str, strict: bool, max_fraction: float):
    path = require_file(path, f"a CSV, TSV, Parquet or JSON-lines file with {expected}")
    if file_kind(path) is None:
        raise DataError(
            f"unsupported file type {path.suffix!r}; use one of {', '.join(METADATA_EXTENSIONS)}",
            path=str(path),
        )
    malformed = MalformedRows(path, strict=strict, max_fraction=max_fraction)
    table = read_table(path, malformed=malformed, wanted_columns=(id_column,), exact=True, expected=expected)
    id_name = find_column(table.header, id_column)
    if id_name is None:
        if table.rows_read == 0 and file_kind(path) == "jsonl":
            raise DataError(f"the file is empty; expected one JSON object per line with {expected}", path=str(path))
        raise DataError(
            f"missing required column {id_column}; the header has {table.header}, but the file needs {expected}",
            path=str(path),
            line=1 if file_kind(path) == "delimited" else None,
            column=id_column,
        )
    if table.rows_read == 0:
        raise DataError(f"no rows: the file has a header but no data ({expected})", path=str(path))
    return path, table, id_name, malformed


def _unique_rows(table: RawTable, id_name: str, malformed: MalformedRows) -> tuple[np.ndarray, np.ndarray]:
    """Row positions to keep (first row per id, non-empty ids) and their ids."""
    ids, bad = parse_ids(table.columns[id_name])
    first_line: dict[str, int] = {}
    keep: list[int] = []
    for row, identifier in enumerate(ids):
        line = int(table.line_numbers[row])
        if bad[row]:
            malformed.add(line, f"empty {id_name}")
        elif identifier in first_line:
            malformed.add(line, f"duplicate {id_name} {identifier!r} (first on line {first_line[identifier]})")
        else:
            first_line[identifier] = line
            keep.append(row)
    rows = np.asarray(keep, dtype=np.int64)
    return rows, ids[rows]


def _text_column(table: RawTable, rows: np.ndarray, name: str) -> list[str] | None:
    return None if name is None else list(parse_labels(table.columns[name][rows]))


def load_items_file(
    path: str | Path,
    *,
    strict: bool = False,
    max_malformed_fraction: float = DEFAULT_MAX_MALFORMED_FRACTION,
    report: LoadReport | None = None,
) -> Items:
    """Item metadata from a file (see the module docstring); malformed rows go to ``report``."""
    expected = f"columns {ITEM_ID} and any of {TITLE}, {TEXT} (or {DESCRIPTION}), {CATEGORIES}"
    path, table, id_name, malformed = _read_metadata(path, ITEM_ID, expected, strict, max_malformed_fraction)
    rows, ids = _unique_rows(table, id_name, malformed)
    malformed.check(table.rows_read)
    if report is not None:
        malformed.record_into(report)

    titles = _text_column(table, rows, find_column(table.header, TITLE))
    texts = _text_column(table, rows, find_column(table.header, TEXT))
    descriptions = _text_column(table, rows, find_column(table.header, DESCRIPTION))
    if texts is None:
        texts = descriptions
    elif descriptions is not None:  # both present: fill empty text from the description
        texts = [text or description for text, description in zip(texts, descriptions)]
    categories_name = find_column(table.header, CATEGORIES)
    categories = (
        [split_categories(value) for value in table.columns[categories_name][rows]] if categories_name else []
    )
    return Items(item_id=list(ids), title=titles or [], text=texts or [], categories=categories)


def load_users_file(
    path: str | Path,
    *,
    strict: bool = False,
    max_malformed_fraction: float = DEFAULT_MAX_MALFORMED_FRACTION,
    report: LoadReport | None = None,
) -> Users:
    """User metadata: ``user_id`` plus every other column as a categorical feature (strings)."""
    expected = f"a column {USER_ID} and any other columns as categorical features"
    path, table, id_name, malformed = _read_metadata(path, USER_ID, expected, strict, max_malformed_fraction)
    rows, ids = _unique_rows(table, id_name, malformed)
    malformed.check(table.rows_read)
    if report is not None:
        malformed.record_into(report)
    features = {
        name: list(parse_labels(table.columns[name][rows])) for name in table.header if name != id_name
    }
    return Users(user_id=list(ids), features=features)
