"""Reading CSV, TSV, Parquet and JSON-lines files into columns, keeping line numbers.

Delimited text is read twice-if-needed: a fast pass with pyarrow, and, only when the fast pass
meets something irregular, an exact pass with the :mod:`csv` module that knows the physical
line of every row, so error messages can point at ``file:line``. Clean files (the common case)
never pay for the slow pass.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rayrec.data.malformed import MalformedRows
from rayrec.errors import DataError

#: Extension -> default delimiter (None: sniffed from the header line).
DELIMITED_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".txt": None}
PARQUET_EXTENSIONS = (".parquet", ".pq")
JSONL_EXTENSIONS = (".jsonl", ".ndjson")
TABLE_EXTENSIONS = tuple(DELIMITED_EXTENSIONS) + PARQUET_EXTENSIONS
METADATA_EXTENSIONS = TABLE_EXTENSIONS + JSONL_EXTENSIONS
_SNIFFED_DELIMITERS = (",", "\t", ";", "|")
# csv's default limit (128 KiB) is too small for long item descriptions.
csv.field_size_limit(1 << 30)


@dataclass
class RawTable:
    """A file's rows as columns, before any type conversion.

    ``columns``: column name -> (n,) array; text files give object arrays of ``str``, Parquet
    keeps its own dtypes (ints, floats, datetime64, object). ``line_numbers``: (n,) int64, the
    line where each row starts (Parquet: the 1-based row number), or None after the fast pass,
    which does not track lines; re-read with ``exact=True`` before reporting a row.
    ``rows_read`` counts the data rows seen, including malformed ones that were skipped.
    """

    path: str
    header: list[str]
    columns: dict[str, np.ndarray]
    line_numbers: np.ndarray | None
    rows_read: int

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def exact_lines(self) -> bool:
        return self.line_numbers is not None


def file_kind(path: str | Path) -> str | None:
    """``"delimited"``, ``"parquet"``, ``"jsonl"`` or None, from the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix in DELIMITED_EXTENSIONS:
        return "delimited"
    if suffix in PARQUET_EXTENSIONS:
        return "parquet"
    if suffix in JSONL_EXTENSIONS:
        return "jsonl"
    return None


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or a DataError saying which file is missing and what it should be."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file; expected {what}", path=str(path))
    if not path.is_file():
        raise DataError(f"not a file; expected {what}", path=str(path))
    return path


def _decode_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> DataError:
    """A DataError pointing at the first line that does not decode.

    Text readers decode ahead in blocks, so the line they were on is not the bad one; find it
    by decoding line by line (only ever done once, on the way to an error).
    """
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    bad_line = None
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode(codec)
            except UnicodeDecodeError:
                bad_line = line_number
                break
    return DataError(f"the file is not {codec} text ({exc.reason}); save it as UTF-8", path=str(path), line=bad_line)


def _first_row(path: Path, delimiter: str, encoding: str, quoting: bool) -> tuple[list[str], int] | None:
    """The first non-blank row and its line number, or None for an empty file."""
    with open(path, newline="", encoding=encoding) as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        try:
            for fields in reader:
                if any(field.strip() for field in fields):
                    return [field.strip() for field in fields], reader.line_num
        except UnicodeDecodeError as exc:
            raise _decode_error(path, encoding, exc) from None
        except csv.Error as exc:
            raise DataError(f"cannot parse the header line: {exc}", path=str(path), line=1) from None
    return None


def sniff_delimiter(path: str | Path, wanted_columns: Sequence[str] = (), encoding: str = "utf-8-sig") -> str:
    """The delimiter that splits the header line best.

    Preference: the delimiter under which most of ``wanted_columns`` appear as header names,
    then the one giving the most fields, then the extension's default (``.tsv`` tab, else comma).
    """
    path = Path(path)
    default = DELIMITED_EXTENSIONS.get(path.suffix.lower()) or ","
    try:
        with open(path, newline="", encoding=encoding) as handle:
            first_line = ""
            for line in handle:
                if line.strip():
                    first_line = line
                    break
    except UnicodeDecodeError:
        return default
    wanted = {name.lower() for name in wanted_columns}
    best, best_key = default, (-1, -1, 0)
    for delimiter in _SNIFFED_DELIMITERS:
        fields = next(csv.reader([first_line], delimiter=delimiter), [])
        names = {field.strip().lower() for field in fields}
        key = (len(wanted & names), len(fields), delimiter == default)
        if key > best_key:
            best, best_key = delimiter, key
    return best


def read_delimited_header(
    path: str | Path, delimiter: str, *, encoding: str = "utf-8-sig", quoting: bool = True, expected: str = ""
) -> tuple[list[str], int]:
    """The header names (stripped) and the header's line number; DataError if the file is empty."""
    first = _first_row(Path(path), delimiter, encoding, quoting)
    if first is None:
        hint = f"; expected a header line with {expected}" if expected else ""
        raise DataError(f"the file is empty{hint}", path=str(path))
    header, line = first
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"column {name!r} appears twice in the header {header}", path=str(path), line=line, column=name)
        seen.add(name)
    return header, line


def read_delimited(
    path: str | Path,
    *,
    delimiter: str,
    malformed: MalformedRows,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8-sig",
    quoting: bool = True,
    exact: bool = False,
    expected: str = "",
    integer_hint: Sequence[str] = (),
) -> RawTable:
    """Read a delimited text file into string columns.

    With ``column_names=None`` the first non-blank line is the header; otherwise the file has
    no header and ``column_names`` name its fields. Blank lines are ignored; rows with the wrong
    number of fields are skipped into ``malformed``. ``exact=False`` tries the fast pyarrow
    pass first and falls back to the exact pass if any row is irregular. The fast pass returns
    the ``integer_hint`` columns as int64 when all their values are integers (timestamps).
    """
    path = Path(path)
    if column_names is None:
        header, header_line = read_delimited_header(path, delimiter, encoding=encoding, quoting=quoting, expected=expected)
    else:
        header, header_line = list(column_names), 0
    if not exact:
        table = _read_delimited_fast(path, header, header_line, delimiter, encoding, quoting, set(integer_hint))
        if table is not None:
            return table
    return _read_delimited_exact(path, header, header_line, delimiter, encoding, quoting, malformed)


def _read_delimited_fast(
    path: Path, header: list[str], header_line: int, delimiter: str, encoding: str, quoting: bool, integer_hint: set[str]
) -> RawTable | None:
    """pyarrow's multi-threaded reader; None if any row is irregular (the exact pass reports it)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    irregular: list[int] = []

    def on_invalid_row(row) -> str:
        irregular.append(1)
        return "skip"

    if header_line > 1:
        return None  # blank lines before the header: skipping by row count would be unsafe
    skip_rows = header_line  # 1 with a header line, 0 without
    try:
        arrow_table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(
                column_names=header, skip_rows=skip_rows, encoding="utf8" if encoding == "utf-8-sig" else encoding
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoting else False,
                newlines_in_values=True,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeError, OSError, ValueError):
        return None
    if irregular:
        return None
    columns = {name: _arrow_column_to_numpy(arrow_table.column(name), name in integer_hint) for name in header}
    return RawTable(str(path), header, columns, None, len(arrow_table))


def _arrow_column_to_numpy(column, try_integer: bool) -> np.ndarray:
    """An Arrow string column as numpy: int64 if hinted and every value is an integer, else
    an object array of str. Repetitive columns (ids) go through a dictionary so each distinct
    string becomes one Python object, which is several times faster than one per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if try_integer:
        try:
            return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # not all integers (ISO dates, floats, junk): the caller parses the text
    encoded = pc.dictionary_encode(column)
    if len(encoded.dictionary) * 2 > len(column):
        return column.to_numpy(zero_copy_only=False)
    return encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy(zero_copy_only=False)]


def _read_delimited_exact(
    path: Path,
    header: list[str],
    header_line: int,
    delimiter: str,
    encoding: str,
    quoting: bool,
    malformed: MalformedRows,
) -> RawTable:
    width = len(header)
    rows: list[list[str]] = []
    lines: list[int] = []
    rows_read = 0
    with open(path, newline="", encoding=encoding) as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        last_line = 0
        try:
            for fields in reader:
                first_line, last_line = last_line + 1, reader.line_num
                if first_line <= header_line or not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # the header, or a blank line
                rows_read += 1
                if len(fields) != width:
                    malformed.add(
                        first_line,
                        f"expected {width} fields ({delimiter.join(header)}), found {len(fields)}",
                    )
                    continue
                rows.append(fields)
                lines.append(first_line)
        except UnicodeDecodeError as exc:
            raise _decode_error(path, encoding, exc) from None
        except csv.Error as exc:
            raise DataError(f"cannot parse the line: {exc}", path=str(path), line=last_line + 1) from None
    if rows:
        transposed = list(zip(*rows))
        columns = {name: _object_array(transposed[i]) for i, name in enumerate(header)}
    else:
        columns = {name: np.empty(0, dtype=object) for name in header}
    return RawTable(str(path), header, columns, np.asarray(lines, dtype=np.int64), rows_read)


def _object_array(values: Sequence) -> np.ndarray:
    """A 1-d object array (np.array would build 2-d arrays from equal-length lists)."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values) if not isinstance(values, list) else values
    return out


def arrow_column_values(column) -> np.ndarray:
    """One Arrow column (a Parquet file's, or a Ray Data batch's) as the (n,) numpy array the
    converters of :mod:`rayrec.data.columns` take."""
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        # Arrow stores UTC; numpy gets naive UTC datetime64, which is what we want.
        # safe=False truncates sub-second precision instead of refusing to lose it.
        column = column.cast(pa.timestamp("s", tz=column.type.tz), safe=False)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return _object_array(column.to_pylist())
    return column.to_numpy(zero_copy_only=False)


def read_parquet(path: str | Path) -> RawTable:
    """A Parquet file's columns as numpy arrays; 'lines' are 1-based row numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        arrow_table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", path=str(path)) from None
    columns = {name.strip(): arrow_column_values(arrow_table.column(name)) for name in arrow_table.column_names}
    n = arrow_table.num_rows
    return RawTable(str(path), list(columns), columns, np.arange(1, n + 1, dtype=np.int64), n)


def read_jsonl(path: str | Path, malformed: MalformedRows) -> RawTable:
    """JSON lines: one object per line; keys become columns (missing keys are None)."""
    path = Path(path)
    records: list[dict] = []
    lines: list[int] = []
    rows_read = 0
    with open(path, encoding="utf-8-sig") as handle:
        line_number = 0
        try:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                rows_read += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    malformed.add(line_number, f"not valid JSON ({exc.msg})")
                    continue
                if not isinstance(record, dict):
                    malformed.add(line_number, f"expected a JSON object, found {type(record).__name__}")
                    continue
                records.append({str(key).strip(): value for key, value in record.items()})
                lines.append(line_number)
        except UnicodeDecodeError as exc:
            raise _decode_error(path, "utf-8", exc) from None
    header: list[str] = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: _object_array([record.get(name) for record in records]) for name in header}
    return RawTable(str(path), header, columns, np.asarray(lines, dtype=np.int64), rows_read)


def read_table(
    path: str | Path,
    *,
    malformed: MalformedRows,
    wanted_columns: Sequence[str] = (),
    exact: bool = False,
    expected: str = "",
    integer_hint: Sequence[str] = (),
) -> RawTable:
    """Read any supported table file, choosing the reader by extension (delimiter sniffed)."""
    kind = file_kind(path)
    if kind == "parquet":
        return read_parquet(path)
    if kind == "jsonl":
        return read_jsonl(path, malformed)
    delimiter = sniff_delimiter(path, wanted_columns)
    return read_delimited(
        path, delimiter=delimiter, malformed=malformed, exact=exact, expected=expected, integer_hint=integer_hint
    )


def table_header(path: str | Path, wanted_columns: Sequence[str] = (), expected: str = "") -> tuple[list[str], int] | None:
    """The header of a delimited file (names, line) without reading the body; None for others."""
    if file_kind(path) != "delimited":
        return None
    delimiter = sniff_delimiter(path, wanted_columns)
    return read_delimited_header(path, delimiter, expected=expected)


def find_column(header: Sequence[str], name: str) -> str | None:
    """The header entry matching ``name`` case-insensitively, or None."""
    wanted = name.lower()
    for column in header:
        if column.strip().lower() == wanted:
            return column
    return None
