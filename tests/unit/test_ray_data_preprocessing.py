"""The Ray Data path of the training input (rayrec.data.ray_data) against the in-memory one:
the same users, items and per-user sequences, the same counts of what was dropped, and
one-line errors that name the file and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.data import SyntheticConfig, build_vocabularies, load_dataset, preprocess, user_sequences, write_synthetic
from rayrec.data.ray_data import parquet_input, read_sequences
from rayrec.errors import DataError


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three synthetic shards plus a fourth repeating some rows (duplicates) of the first."""
    out = tmp_path_factory.mktemp("parquet")
    write_synthetic(out, SyntheticConfig(num_users=120, num_items=60, num_clusters=4, mean_events_per_user=12, seed=3),
                    file_format="parquet", shards=3)
    first = pq.read_table(out / "interactions" / "part-00000.parquet")
    pq.write_table(first.slice(0, 25), out / "interactions" / "part-00003.parquet")
    return out


def sequences_by_id(user_vocab, item_vocab, sequences) -> dict[str, list[str]]:
    return {user_vocab.ids[u]: [item_vocab.ids[i] for i in items] for u, items in sequences}


def ray_data_sequences(result) -> dict[str, list[str]]:
    pairs = []
    for users, lengths, flat in result.iter_in_user_order():
        pairs += zip(users, (s - 1 for s in np.split(flat, np.cumsum(lengths)[:-1])))
    return sequences_by_id(result.user_vocab, result.item_vocab, pairs)


@pytest.mark.parametrize("options", [{}, {"rating_threshold": 3.0, "kcore": 3}])
def test_same_vocabularies_sequences_and_report_as_in_memory(ray_cluster, shards, options):
    in_memory = preprocess(load_dataset(shards), **options)
    users, items = build_vocabularies(in_memory.interactions)
    expected = sequences_by_id(users, items, enumerate(user_sequences(in_memory.interactions, users, items)))

    result = read_sequences(parquet_input([shards]), **options)

    assert set(result.user_vocab.ids) == set(users.ids) and set(result.item_vocab.ids) == set(items.ids)
    assert result.user_vocab.ids == sorted(users.ids)  # this path's order: sorted ids
    assert ray_data_sequences(result) == expected
    assert result.num_interactions == len(in_memory.interactions)
    report, expected_report = result.report, in_memory.report
    assert report.duplicates_dropped == expected_report.duplicates_dropped == 25
    assert (report.rows_read, report.below_threshold_dropped, report.kcore_dropped) == \
        (expected_report.rows_read, expected_report.below_threshold_dropped, expected_report.kcore_dropped)
    if options:
        assert report.below_threshold_dropped > 0 and report.kcore_dropped >= 0


def test_inputs_that_are_all_parquet_and_those_that_are_not(shards, tmp_path):
    folder = shards / "interactions"
    as_directory = parquet_input([shards])
    assert len(as_directory.files) == 4 and as_directory.items_path.name == "items.parquet"
    assert parquet_input([f"file://{folder}"]).files == as_directory.files
    assert parquet_input([str(folder / "part-0000[12].parquet")]).files == [str(folder / "part-00001.parquet"),
                                                                              str(folder / "part-00002.parquet")]
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp\nu,i,1\n")
    assert parquet_input([csv]) is None
    assert parquet_input([folder / "part-00000.parquet", csv]) is None
    assert parquet_input(["sqlite:///state.db"]) is None


def test_a_missing_column_names_the_file_and_the_column(ray_cluster, tmp_path):
    path = tmp_path / "no_time.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"]}), path)
    with pytest.raises(DataError) as caught:
        read_sequences(parquet_input([path]))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "'timestamp'" in message


def test_a_file_that_is_no_parquet_is_named(ray_cluster, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError) as caught:
        read_sequences(parquet_input([path]))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value) and "Parquet" in str(caught.value)


def test_malformed_rows_are_skipped_and_named_by_file_and_row(ray_cluster, tmp_path):
    path = tmp_path / "events.parquet"
    users = [f"u{i % 5}" for i in range(40)]
    users[17] = ""  # row 18: no user
    pq.write_table(pa.table({"user_id": users, "item_id": [f"i{i % 7}" for i in range(40)],
                             "timestamp": list(range(40))}), path)
    result = read_sequences(parquet_input([path]))
    assert result.num_interactions == 39 and result.report.malformed_rows == 1
    assert result.report.malformed_examples == [f"{path}:18: empty user_id"]
    with pytest.raises(DataError, match=r"events.parquet.*strict loading allows no malformed rows"):
        read_sequences(parquet_input([path]), strict=True)


def test_where_ray_data_cannot_apply_a_file_uri_is_read_in_memory_and_the_log_says_so(shards):
    from rayrec.training.config import TrainConfig
    from rayrec.training.prepare import DatasetBackedData, load_training_data

    lines: list[str] = []
    data = load_training_data([f"file://{shards}"], None, None, TrainConfig(), echo=lines.append, ray_data=False)
    assert "in memory" in lines[0] and "--in-process" in lines[0]
    assert not isinstance(data, DatasetBackedData) and len(data.user_vocab) == 120


# -- CSV/TSV through Ray Data ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_events(tmp_path_factory) -> Path:
    """Synthetic interactions as one CSV file, with a repeated block (duplicates) and a row
    whose timestamp is no time at line 6."""
    out = tmp_path_factory.mktemp("csv")
    paths = write_synthetic(out, SyntheticConfig(num_users=90, num_items=50, num_clusters=3, mean_events_per_user=10,
                                                 seed=5))
    lines = paths["interactions"].read_text().splitlines()
    lines[5] = ",".join([lines[5].split(",")[0], lines[5].split(",")[1], "not-a-time", *lines[5].split(",")[3:]])
    paths["interactions"].write_text("\n".join(lines + lines[10:30]) + "\n")
    return paths["interactions"]


def test_big_csv_input_is_read_with_ray_data_as_in_memory(ray_cluster, csv_events):
    from rayrec.data.ray_data import delimited_input

    in_memory = preprocess(load_dataset(csv_events))
    users, items = build_vocabularies(in_memory.interactions)
    expected = sequences_by_id(users, items, enumerate(user_sequences(in_memory.interactions, users, items)))

    source = delimited_input([csv_events], min_bytes=0)
    assert source.file_format == "delimited" and source.files == [str(csv_events)]
    result = read_sequences(source)

    assert ray_data_sequences(result) == expected and result.user_vocab.ids == sorted(users.ids)
    report, expected_report = result.report, in_memory.report
    assert (report.rows_read, report.duplicates_dropped, report.malformed_rows) == \
        (expected_report.rows_read, expected_report.duplicates_dropped, expected_report.malformed_rows)
    assert report.duplicates_dropped == 20 and report.malformed_rows == 1
    # The bad row is still named by its file and line.
    assert report.malformed_examples == expected_report.malformed_examples
    assert report.malformed_examples[0].startswith(f"{csv_events}:6:")


def test_which_delimited_inputs_ray_data_reads(csv_events, tmp_path):
    from rayrec.data.ray_data import delimited_input

    size = csv_events.stat().st_size
    assert delimited_input([csv_events], min_bytes=size + 1) is None  # small: read in memory
    assert delimited_input([f"file://{csv_events}"], min_bytes=size).files == [str(csv_events)]
    tsv = tmp_path / "events.tsv"
    tsv.write_text("user_id\titem_id\ttimestamp\nu\ti\t1\n")
    assert delimited_input([tsv], 0).delimiter == "\t"
    assert delimited_input([csv_events, tsv], 0) is None  # two layouts: the in-memory reader
    blank_first = tmp_path / "blank_first.csv"
    blank_first.write_text("\nuser_id,item_id,timestamp\nu,i,1\n")
    assert delimited_input([blank_first], 0) is None
    assert delimited_input([csv_events, "sqlite:///state.db"], 0) is None


def test_rows_ray_data_cannot_split_fall_back_to_the_in_memory_reader_which_names_the_line(ray_cluster, tmp_path):
    from rayrec.training.config import TrainConfig
    from rayrec.training.prepare import DatasetBackedData, load_training_data

    path = tmp_path / "ragged.csv"
    rows = [f"u{i % 6},i{i % 9},{1000 + i}" for i in range(60)]
    rows[20] = "u1,i2"  # line 22: a field short
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    lines: list[str] = []
    config = TrainConfig(data={"ray_data_min_delimited_mb": 0})
    data = load_training_data([path], None, None, config, echo=lines.append, ray_data=True)
    assert "with Ray Data" in lines[0] and "reading the input in memory" in lines[1]
    assert not isinstance(data, DatasetBackedData) and data.num_interactions == 59
    assert any(f"{path}:22" in line for line in lines)


def test_big_csv_trains_from_the_ray_dataset(ray_cluster, csv_events):
    from rayrec.training.config import TrainConfig
    from rayrec.training.prepare import DatasetBackedData, load_training_data

    lines: list[str] = []
    data = load_training_data([csv_events], None, None, TrainConfig(data={"ray_data_min_delimited_mb": 0}),
                              echo=lines.append, ray_data=True)
    assert lines[0].startswith("data: reading 1 CSV/TSV file(s) with Ray Data")
    assert isinstance(data, DatasetBackedData) and len(data.user_vocab) == 90
