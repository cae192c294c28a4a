"""Interaction files as Ray Datasets: reading, cleaning, vocabularies and per-user sequences
computed as distributed Ray Data operations, so the driver never holds the interactions.

This module applies when every input is Parquet (a file, a directory of shards, a glob, or a
URI pyarrow's filesystems read), or every input is a local CSV/TSV file and together they are
at least ``data.ray_data_min_delimited_mb`` large. The in-memory loaders
(:mod:`rayrec.data.interactions_file`, :func:`rayrec.data.preprocess`) stay the path for
smaller CSV/TSV inputs (they start training sooner), the event log, MovieLens directories,
and delimited files whose rows pyarrow cannot all parse (the exact reader names each bad
line). Both paths apply
the same rules, and share the code that states them: the column converters of
:mod:`rayrec.data.columns`, :func:`rayrec.data.preprocessing.duplicate_mask` and
:func:`~rayrec.data.preprocessing.time_order`. Two differences, both of order only:

- vocabularies are in sorted id order (first appearance in a file has no meaning once the
  rows are read in parallel);
- a user's events with the same timestamp are ordered by item id, not by file position.

What the driver holds: the vocabularies, the small per-file metadata, and counts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rayrec.data.columns import parse_ids, parse_labels, parse_timestamps, parse_values
from rayrec.data.interactions_file import (
    ITEMS_STEM,
    USERS_STEM,
    find_in_directory,
    glob_files,
    interaction_files,
    is_glob,
    load_interactions_file,
    resolve_columns,
)
from rayrec.data.malformed import DEFAULT_MAX_MALFORMED_FRACTION, MAX_EXAMPLES
from rayrec.data.preprocessing import duplicate_mask, time_order
from rayrec.data.tables import (
    METADATA_EXTENSIONS,
    PARQUET_EXTENSIONS,
    arrow_column_values,
    file_kind,
    read_delimited_header,
    sniff_delimiter,
)
from rayrec.errors import DataError
from rayrec.schema import (EVENT_TYPE, INTERACTION_REQUIRED, ITEM_ID, TIMESTAMP, USER_ID, VALUE, Interactions,
                           LoadReport, Vocabulary)

#: Columns of the sequence dataset: one row per user.
USER_INDEX = "user_index"  # 0-based position in the user vocabulary
SEQUENCE = "items"  # the user's 1-based item indices, oldest first
#: Helper column: users are grouped into this many rows' worth of buckets, so that a
#: ``map_groups`` call cleans thousands of users at once (vectorised) instead of one.
BUCKET = "user_bucket"
ROWS_PER_BUCKET = 250_000
#: Why a row is dropped (0: kept), in the order the rules apply.
KEPT, MALFORMED_ROW, DUPLICATE, BELOW_THRESHOLD = 0, 1, 2, 3
DROPPED = "dropped"
SOURCE_PATH = "path"
#: URL schemes that are state stores, never files.
STATE_STORE_SCHEMES = ("sqlite", "redis", "rediss")


@dataclass
class FileInput:
    """Every ``--interactions`` input resolved to files of one format on one filesystem."""

    files: list[str]
    filesystem: Any = None  # a pyarrow FileSystem, None for local paths
    items_path: Path | None = None  # found next to the shards (a `rayrec synthetic` directory)
    users_path: Path | None = None
    name: str = "parquet"
    file_format: str = "parquet"  # or "delimited" (CSV/TSV, local files)
    delimiter: str = ","  # delimited: the files' delimiter
    header: list[str] | None = None  # delimited: the files' header line (the same in all)

    @property
    def local(self) -> bool:
        return self.filesystem is None

    def describe(self) -> str:
        return f"{len(self.files)} {'Parquet' if self.file_format == 'parquet' else 'CSV/TSV'} file(s)"


def _scheme(text: str) -> str | None:
    """A URI's scheme in lower case (``s3``, ``file``, ``sqlite``), None for a plain path."""
    return text.split("://", 1)[0].lower() if "://" in text else None


def _is_parquet(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in PARQUET_EXTENSIONS


def _local_parquet(text: str) -> tuple[list[str], Path | None, Path | None, str] | None:
    found = _local_files(text)
    if found is None or not all(_is_parquet(f) for f in found[0]):
        return None
    files, items, users, name = found
    return [str(f) for f in files], items, users, name


def _remote_parquet(uri: str) -> tuple[list[str], Any, str] | None:
    """The Parquet files at a URI (a file, or a directory of shards or with an
    ``interactions/`` folder of them) and its pyarrow filesystem; None when there are none."""
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot open the URI: {' '.join(str(exc).split())}", path=uri) from None
    if info.type == pafs.FileType.File:
        return ([path], filesystem, Path(path).stem) if _is_parquet(path) else None
    if info.type != pafs.FileType.Directory:
        return None
    for folder in (f"{path.rstrip('/')}/interactions", path):
        try:
            entries = filesystem.get_file_info(pafs.FileSelector(folder))
        except (OSError, FileNotFoundError):
            continue
        shards = sorted(e.path for e in entries if e.type == pafs.FileType.File and _is_parquet(e.path))
        if shards:
            return shards, filesystem, Path(path.rstrip("/")).name
    return None


def parquet_input(paths: Sequence[str | Path]) -> FileInput | None:
    """``paths`` as one :class:`FileInput` when every one of them is Parquet (local
    paths and ``file://`` URIs on the local disk, other URIs on one filesystem); None
    otherwise, and the in-memory loaders read them."""
    files: list[str] = []
    filesystems: set[str] = set()
    filesystem = items = users = None
    names = []
    for raw in paths:
        text = str(raw)
        scheme = _scheme(text)
        if scheme in STATE_STORE_SCHEMES or text.startswith("synthetic:"):
            return None
        if scheme is None or scheme == "file":
            found = _local_parquet(text[len("file://"):] if scheme == "file" else text)
            if found is None:
                return None
            shards, items_here, users_here, name = found
            items, users = items or items_here, users or users_here
            filesystems.add("local")
        else:
            remote = _remote_parquet(text)
            if remote is None:
                return None
            shards, filesystem, name = remote
            filesystems.add(filesystem.type_name)
        files.extend(shards)
        names.append(name)
    if not files or len(filesystems) != 1:
        return None  # one read_parquet reads one filesystem
    return FileInput(files, filesystem, items, users, "+".join(names))


def _local_files(text: str) -> tuple[list[Path], Path | None, Path | None, str] | None:
    """The interaction files a local path, directory or glob names, with the items and users
    files next to them; None when it names none."""
    location = Path(text)
    items = users = None
    if is_glob(text) and not location.exists():
        try:
            files = glob_files(text)
        except DataError:
            return None  # the in-memory loader names the pattern
        return files, None, None, files[0].parent.resolve().name
    if location.is_dir():
        files = interaction_files(location)
        if files is None:
            return None
        items = find_in_directory(location, ITEMS_STEM, METADATA_EXTENSIONS)
        users = find_in_directory(location, USERS_STEM, METADATA_EXTENSIONS)
        return files, items, users, location.resolve().name
    if location.is_file():
        return [location], None, None, location.stem
    return None


def delimited_input(paths: Sequence[str | Path], min_bytes: float) -> FileInput | None:
    """``paths`` as one :class:`FileInput` when every one of them is a local CSV/TSV file (a
    path, a ``file://`` URI, a directory with an ``interactions.csv``, a glob), they hold at
    least ``min_bytes`` together, and all have the same delimiter and header on their first
    line; None otherwise, and the in-memory loaders read them (and report any problem with
    the header)."""
    files: list[Path] = []
    items = users = None
    names = []
    for raw in paths:
        text = str(raw)
        scheme = _scheme(text)
        if scheme not in (None, "file") or text.startswith("synthetic:"):
            return None
        found = _local_files(text[len("file://"):] if scheme == "file" else text)
        if found is None:
            return None
        shards, items_here, users_here, name = found
        if not all(file_kind(f) == "delimited" for f in shards):
            return None
        files.extend(shards)
        items, users = items or items_here, users or users_here
        names.append(name)
    if not files or sum(f.stat().st_size for f in files) < min_bytes:
        return None
    layouts = set()
    for file in files:
        delimiter = sniff_delimiter(file, INTERACTION_REQUIRED)
        try:
            header, line = read_delimited_header(file, delimiter)
        except DataError:
            return None
        if line != 1:
            return None  # blank lines before the header: the in-memory reader skips them
        layouts.add((delimiter, tuple(header)))
    if len(layouts) != 1:
        return None
    [(delimiter, header)] = layouts
    return FileInput([str(f) for f in files], None, items, users, "+".join(names), file_format="delimited",
                     delimiter=delimiter, header=list(header))


def ray_data_input(paths: Sequence[str | Path], delimited_min_bytes: float) -> FileInput | None:
    """What Ray Data reads of ``paths``: their Parquet files, or their CSV/TSV files when they
    are big enough (:func:`delimited_input`); None: the in-memory loaders read them."""
    return parquet_input(paths) or delimited_input(paths, delimited_min_bytes)


def _read_schemas(source: FileInput) -> tuple[dict[str, str], int]:
    """The schema columns' names in the files (the same in all of them) and the total row
    count, from the Parquet footers alone; a one-line DataError naming the file and column
    when a file is no Parquet or lacks a required column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, str] | None = None
    rows = 0
    for file in source.files:
        try:
            metadata = pq.read_metadata(file, filesystem=source.filesystem)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read as Parquet: {' '.join(str(exc).split())}", path=file) from None
        names = list(metadata.schema.to_arrow_schema().names)
        mapping = resolve_columns(names, file, None)
        if columns is None:
            columns = mapping
        elif mapping != columns:
            raise DataError(f"the columns are named {mapping}, but {source.files[0]}'s {columns}; Parquet shards "
                            "of one input need the same column names", path=file)
        rows += metadata.num_rows
    assert columns is not None
    return columns, rows


def _user_bucket(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    # crc32, not hash(): str hashes differ between worker processes.
    return np.fromiter((zlib.crc32(u.encode()) % buckets for u in user_ids.tolist()), dtype=np.int32,
                       count=len(user_ids))


def _converted(batch, columns: dict[str, str], buckets: int):
    """A raw Parquet batch (pyarrow) -> schema columns by the in-memory loader's converters,
    malformed rows marked as such (their path is kept, for the report)."""
    import pyarrow as pa

    user_ids, bad_user = parse_ids(arrow_column_values(batch[columns[USER_ID]]))
    item_ids, bad_item = parse_ids(arrow_column_values(batch[columns[ITEM_ID]]))
    timestamps, bad_time = parse_timestamps(arrow_column_values(batch[columns[TIMESTAMP]]))
    out = {USER_ID: user_ids.astype(str), ITEM_ID: item_ids.astype(str), TIMESTAMP: timestamps}
    bad = bad_user | bad_item | bad_time
    if VALUE in columns:
        values, bad_value = parse_values(arrow_column_values(batch[columns[VALUE]]))
        out[VALUE], bad = values, bad | bad_value
    if EVENT_TYPE in columns:
        out[EVENT_TYPE] = parse_labels(arrow_column_values(batch[columns[EVENT_TYPE]])).astype(str)
    paths = arrow_column_values(batch[SOURCE_PATH]).astype(str)
    out[SOURCE_PATH] = np.where(bad, paths, "")
    out[DROPPED] = np.where(bad, MALFORMED_ROW, KEPT).astype(np.int8)
    out[BUCKET] = _user_bucket(user_ids, buckets)
    return pa.table(out)


def _interactions_of(batch) -> Interactions:
    def column(name):
        return arrow_column_values(batch[name]) if name in batch.column_names else None

    value = column(VALUE)
    return Interactions(column(USER_ID).astype(object), column(ITEM_ID).astype(object),
                        column(TIMESTAMP).astype(np.int64), column(EVENT_TYPE),
                        None if value is None else value.astype(np.float32))


def _clean_bucket(batch, rating_threshold: float | None):
    """One bucket of users: each well-formed row marked kept, duplicate (all columns equal to
    an earlier row) or below the rating threshold, in that order, as :func:`rayrec.data.preprocess`."""
    import pyarrow as pa

    dropped = arrow_column_values(batch[DROPPED]).copy()
    well_formed = np.flatnonzero(dropped == KEPT)
    interactions = _interactions_of(batch).take(well_formed)
    duplicates = duplicate_mask(interactions)
    dropped[well_formed[duplicates]] = DUPLICATE
    if rating_threshold is not None and interactions.value is not None:
        # NaN (missing) values compare False, so they are dropped too.
        dropped[well_formed[~duplicates & ~(interactions.value >= rating_threshold)]] = BELOW_THRESHOLD
    return batch.set_column(batch.column_names.index(DROPPED), DROPPED, pa.array(dropped))


def _bucket_sequences(batch, user_ids_ref, item_ids_ref):
    """One bucket of users -> one row per user: its vocabulary index and its 1-based item
    indices in time order (ties by item id)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    user_index = pc.index_in(batch[USER_ID], value_set=ray.get(user_ids_ref)).to_numpy()
    item_index = pc.index_in(batch[ITEM_ID], value_set=ray.get(item_ids_ref)).to_numpy() + 1
    timestamps = arrow_column_values(batch[TIMESTAMP]).astype(np.int64)
    by_item = np.argsort(item_index, kind="stable")
    order = by_item[time_order(user_index[by_item], timestamps[by_item])]
    users, starts, counts = np.unique(user_index[order], return_index=True, return_counts=True)
    offsets = np.append(starts, len(order)).astype(np.int32)
    return pa.table({USER_INDEX: users.astype(np.int64),
                     SEQUENCE: pa.ListArray.from_arrays(pa.array(offsets), pa.array(item_index[order], pa.int64()))})


@dataclass
class SequenceDataset:
    """Per-user sequences as a materialized Ray Dataset, and what the driver keeps of them."""

    sequences: Any  # ray.data.Dataset: USER_INDEX int64, SEQUENCE list<int64>
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    num_interactions: int
    report: LoadReport = field(default_factory=LoadReport)
    name: str = "parquet"

    def iter_in_user_order(self, batch_size: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(user indices, lengths, flat 1-based items) batches, users in vocabulary order; the
        driver holds one batch at a time."""
        for batch in self.sequences.sort(USER_INDEX).iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            yield sequence_columns(batch)


    def split_evenly(self, workers: int):
        """The sequences padded with empty rows (``USER_INDEX`` -1) to a multiple of
        ``workers`` rows: Ray Train's default split (``streaming_split(equal=True)``) gives
        every worker as many rows, dropping the remainder, and a row here is a whole user."""
        import pyarrow as pa
        import ray.data

        padding = -self.sequences.count() % workers
        if not padding:
            return self.sequences
        empty = pa.table({USER_INDEX: pa.array([-1] * padding, pa.int64()),
                          SEQUENCE: pa.array([[]] * padding, pa.list_(pa.int64()))})
        return self.sequences.union(ray.data.from_arrow(empty))


def sequence_columns(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of the sequence dataset -> (user indices (B,), lengths (B,), flat items (sum,)),
    without the padding rows of :meth:`SequenceDataset.split_evenly`."""
    import pyarrow.compute as pc

    batch = batch.filter(pc.greater_equal(batch[USER_INDEX], 0))
    sequences = batch[SEQUENCE]
    lengths = pc.list_value_length(sequences).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(sequences).to_numpy(zero_copy_only=False).astype(np.int64)
    return batch[USER_INDEX].to_numpy().astype(np.int64), lengths, flat


def _malformed_into(report: LoadReport, rows, bad: int, source: FileInput, strict: bool,
                    max_malformed_fraction: float) -> None:
    """Count the ``bad`` malformed rows; the files that have any are read again by the
    in-memory reader, which names each bad row's line (row number) and applies the same limits."""
    if not bad:
        return
    bad_files = sorted(rows.filter(expr=f"{DROPPED} == {MALFORMED_ROW}").unique(SOURCE_PATH))
    if not source.local:
        if strict or bad > max_malformed_fraction * max(report.rows_read, 1):
            raise DataError(f"{bad:,} of {report.rows_read:,} rows are malformed (missing ids, timestamps that are "
                            f"neither unix seconds nor ISO-8601, values that are no numbers), in "
                            f"{', '.join(bad_files[:3])}", path=bad_files[0])
        report.malformed_rows += bad
        report.malformed_examples.extend(f"{file}: malformed rows" for file in bad_files[:MAX_EXAMPLES])
        return
    exact = LoadReport()
    for file in bad_files:
        load_interactions_file(file, strict=strict, max_malformed_fraction=max_malformed_fraction, report=exact)
    report.malformed_rows += exact.malformed_rows
    report.malformed_examples.extend(exact.malformed_examples)


def _kcore(rows, k: int, report: LoadReport):
    """Iterative k-core on users and items, as :func:`rayrec.data.preprocessing.kcore_mask`:
    each round counts per user and per item (group-bys) and keeps the rows of both with
    at least ``k``, until a round drops nothing."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    remaining = rows.count()
    while True:
        kept_sets = []
        for column in (USER_ID, ITEM_ID):
            counts = rows.groupby(column).count().rename_columns({"count()": "rows"}).filter(expr=f"rows >= {k}")
            kept_sets.append(ray.put(pa.array(counts.unique(column), type=pa.string())))
        users_ref, items_ref = kept_sets

        def in_core(batch, users_ref=users_ref, items_ref=items_ref):
            keep = pc.and_(pc.is_in(batch[USER_ID], value_set=ray.get(users_ref)),
                           pc.is_in(batch[ITEM_ID], value_set=ray.get(items_ref)))
            return batch.filter(keep)

        rows = rows.map_batches(in_core, batch_format="pyarrow").materialize()
        now = rows.count()
        report.kcore_dropped += remaining - now
        if now == remaining:
            return rows
        remaining = now


def configure_ray_data() -> None:
    """Sort-based shuffles, and no progress bars or execution plans (rayrec's own ``data:``
    lines say what was read; ``RAYREC_RAY_LOG_LEVEL=INFO`` shows Ray Data's too).

    The default hash shuffle keeps aggregator actors, each holding CPUs, that on a small
    machine leave the group-by's own tasks waiting for a CPU (minutes for a few thousand rows
    on 2 cores); the sort-based shuffle runs as plain tasks.
    """
    import logging
    import os

    import ray.data
    from ray.data.context import ShuffleStrategy

    logging.getLogger("ray.data").setLevel(os.environ.get("RAYREC_RAY_LOG_LEVEL", "ERROR"))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


class UnparsableRows(Exception):
    """A delimited input has rows pyarrow cannot split into the header's fields (a wrong number
    of fields, an unclosed quote): the in-memory reader, which names each such line, reads it."""


def _read(source: FileInput, columns: dict[str, str]):
    """The input's rows as a Ray Dataset of its schema columns (strings, for CSV), with the path
    each row came from."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import ray.data

    wanted = list(dict.fromkeys(columns.values()))
    if source.file_format == "parquet":
        return ray.data.read_parquet(source.files, filesystem=source.filesystem, columns=wanted, include_paths=True)
    # As the in-memory reader's fast pass: the header's names, every value a string, and a row
    # with the wrong number of fields fails the read (UnparsableRows) rather than being dropped.
    return ray.data.read_csv(
        source.files, include_paths=True,
        read_options=pa_csv.ReadOptions(column_names=source.header, skip_rows=1, encoding="utf8"),
        parse_options=pa_csv.ParseOptions(delimiter=source.delimiter, newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(include_columns=wanted, column_types={name: pa.string() for name in wanted},
                                              strings_can_be_null=False, quoted_strings_can_be_null=False))


def read_sequences(source: FileInput, *, rating_threshold: float | None = None, kcore: int | None = None,
                   strict: bool = False, max_malformed_fraction: float = DEFAULT_MAX_MALFORMED_FRACTION
                   ) -> SequenceDataset:
    """Read ``source`` with ``ray.data.read_parquet`` (``read_csv``) and build every user's time-ordered
    sequence with Ray Data, as :func:`rayrec.training.prepare.prepare` does in memory: skip
    malformed rows, drop exact duplicates, keep ``value >= rating_threshold``, apply the
    ``kcore``, build the vocabularies. Ray must be initialised."""
    import pyarrow as pa
    import ray
    import ray.data

    configure_ray_data()
    if source.file_format == "parquet":
        columns, rows = _read_schemas(source)
    else:
        columns, rows = resolve_columns(source.header, source.files[0], 1), None
    if rating_threshold is not None and VALUE not in columns:
        raise DataError(f"rating_threshold={rating_threshold} needs a value column, but the input has "
                        "none; remove the threshold or add a 'value' column", path=source.files[0])
    # Buckets of about ROWS_PER_BUCKET rows (CSV: about 40 bytes a row, from the files' size).
    estimate = rows if rows is not None else sum(Path(f).stat().st_size for f in source.files) // 40
    buckets = max(8, estimate // ROWS_PER_BUCKET)
    # One shuffle groups every user's rows into its bucket; each map_groups call then cleans
    # a bucket at once with the in-memory rules.
    try:
        marked = _read(source, columns) \
            .map_batches(_converted, fn_kwargs={"columns": columns, "buckets": buckets}, batch_format="pyarrow") \
            .groupby(BUCKET).map_groups(_clean_bucket, fn_kwargs={"rating_threshold": rating_threshold},
                                        batch_format="pyarrow") \
            .materialize()
    except Exception as exc:  # noqa: BLE001 - Ray wraps pyarrow's parse error in its own types
        if source.file_format == "parquet":
            raise
        raise UnparsableRows(" ".join(str(exc).split())[-300:]) from None
    if rows is None:
        rows = marked.count()
    report = LoadReport(rows_read=rows)
    dropped = {int(row[DROPPED]): int(row["count()"]) for row in marked.groupby(DROPPED).count().take_all()}
    _malformed_into(report, marked, dropped.get(MALFORMED_ROW, 0), source, strict, max_malformed_fraction)
    report.duplicates_dropped += dropped.get(DUPLICATE, 0)
    report.below_threshold_dropped += dropped.get(BELOW_THRESHOLD, 0)
    kept = marked.filter(expr=f"{DROPPED} == {KEPT}").select_columns([USER_ID, ITEM_ID, TIMESTAMP, BUCKET])
    num_interactions = dropped.get(KEPT, 0)
    if kcore is not None and kcore > 1:
        kept = _kcore(kept.materialize(), kcore, report)
        num_interactions -= report.kcore_dropped
    if num_interactions == 0:
        raise DataError(f"dataset {source.name!r} has no interactions left after preprocessing",
                        path=source.files[0])
    kept = kept.materialize()
    user_ids, item_ids = sorted(kept.unique(USER_ID)), sorted(kept.unique(ITEM_ID))
    sequences = kept.groupby(BUCKET).map_groups(
        _bucket_sequences, batch_format="pyarrow",
        fn_kwargs={"user_ids_ref": ray.put(pa.array(user_ids, type=pa.string())),
                   "item_ids_ref": ray.put(pa.array(item_ids, type=pa.string()))}).materialize()
    return SequenceDataset(sequences, Vocabulary(user_ids), Vocabulary(item_ids), num_interactions, report,
                           source.name)
