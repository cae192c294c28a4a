"""Bad input gives a DataError naming the file and the line or column, never a traceback."""

from __future__ import annotations

import pytest

from rayrec.data import load_dataset, load_interactions_file, load_items_file, load_users_file
from rayrec.data.movielens import MovieLens100K, MovieLensLatest
from rayrec.errors import ConfigError, DataError
from rayrec.schema import LoadReport

HEADER = "user_id,item_id,timestamp\n"


def good_rows(count: int) -> str:
    return "".join(f"u{n},i{n},{1000 + n}\n" for n in range(count))


def test_missing_path_names_it_and_lists_formats_and_sources(tmp_path):
    missing = tmp_path / "nothing_here.csv"
    with pytest.raises(DataError) as error:
        load_dataset(missing)
    message = str(error.value)
    assert str(missing) in message and "no such file" in message
    for expected in (".csv", ".parquet", "movielens-100k", "movielens-latest", "synthetic", "interactions-file"):
        assert expected in message


def test_unrecognised_existing_path_lists_what_is_supported(tmp_path):
    odd = tmp_path / "events.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="no data source can load this path") as error:
        load_dataset(odd)
    assert "events.xlsx" in str(error.value)


def test_missing_interactions_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"gone\.csv: no such file; expected a CSV, TSV or Parquet file"):
        load_interactions_file(tmp_path / "gone.csv")


def test_missing_required_column_lists_found_and_required(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item_id,time\nu,i,1\n")
    with pytest.raises(DataError) as error:
        load_interactions_file(path)
    message = str(error.value)
    assert f"{path}:1, column 'user_id'" in message
    assert "missing required columns user_id, timestamp" in message
    assert "['user', 'item_id', 'time']" in message  # the header found
    assert "user_id, item_id, timestamp" in message  # what is required


def test_missing_column_in_parquet_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["b"]}), path)
    with pytest.raises(DataError, match=r"events\.parquet, column 'timestamp': missing required column timestamp"):
        load_interactions_file(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty; expected a header line with columns user_id"):
        load_interactions_file(path)


def test_header_only_means_no_interactions(tmp_path):
    path = tmp_path / "header_only.tsv"
    path.write_text("user_id\titem_id\ttimestamp\n\n")
    with pytest.raises(DataError, match=r"header_only\.tsv: no interactions"):
        load_interactions_file(path)


def test_a_few_malformed_rows_are_skipped_and_reported(tmp_path):
    path = tmp_path / "events.csv"
    lines = good_rows(40).splitlines()
    lines.insert(5, "u,i,yesterday")  # line 7 (header is line 1)
    lines.insert(10, "u,i")  # line 12: too few fields
    lines.insert(20, ",i,5")  # line 22: empty user id
    path.write_text(HEADER + "\n".join(lines) + "\n")
    dataset = load_dataset(path)
    report = dataset.report
    assert len(dataset.interactions) == 40
    assert report.rows_read == 43 and report.malformed_rows == 3
    assert report.malformed_examples == [
        f"{path}:7: timestamp 'yesterday' is neither unix seconds nor an ISO-8601 datetime",
        f"{path}:12: expected 3 fields (user_id,item_id,timestamp), found 2",
        f"{path}:22: empty user_id",
    ]
    assert any("skipped 3 malformed rows" in line for line in report.lines())


def test_too_many_malformed_rows_raise_with_the_first_examples(tmp_path):
    path = tmp_path / "events.csv"
    bad = "".join(f"u,i,not-a-time-{n}\n" for n in range(8))
    path.write_text(HEADER + good_rows(20) + bad)
    with pytest.raises(DataError) as error:
        load_interactions_file(path)
    message = str(error.value)
    assert "8 of 28 rows are malformed" in message and "more than 10%" in message
    assert f"{path}:22: timestamp 'not-a-time-0'" in message
    assert f"{path}:26: timestamp 'not-a-time-4'" in message
    assert "not-a-time-5" not in message  # only the first five examples


def test_strict_raises_on_a_single_bad_row(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + good_rows(50) + "u,i,1,extra\n")
    assert len(load_interactions_file(path)) == 50
    with pytest.raises(DataError, match=r"strict.*\n.*events\.csv:52: expected 3 fields \(user_id,item_id,timestamp\), found 4"):
        load_interactions_file(path, strict=True)


def test_non_numeric_value(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp,value\nu,i,1,5\nu,i,2,five\n")
    with pytest.raises(DataError, match=r"events\.csv:3: value 'five' is not a number"):
        load_interactions_file(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "events.json"
    path.write_text("{}")
    with pytest.raises(DataError, match=r"events\.json: unsupported file type '\.json'"):
        load_interactions_file(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(HEADER.encode() + b"u\xff\xfe,i,1\n")
    with pytest.raises(DataError, match=r"events\.csv:2: the file is not utf-8 text"):
        load_interactions_file(path)


def test_duplicate_header_column(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp,item_id\nu,i,1,j\n")
    with pytest.raises(DataError, match=r"events\.csv:1, column 'item_id': column 'item_id' appears twice"):
        load_interactions_file(path)


def test_movielens_100k_missing_ratings_file(tmp_path):
    with pytest.raises(DataError, match=r"u\.data: no such file; expected the u\.data file of a MovieLens 100K"):
        MovieLens100K().load(str(tmp_path))


def test_movielens_100k_malformed_ratings_line(tmp_path):
    rows = "".join(f"{n}\t{n}\t3\t{100 + n}\n" for n in range(30))
    (tmp_path / "u.data").write_text(rows + "7\t8\tthree\t99\n")
    with pytest.raises(DataError, match=r"u\.data:31: value 'three' is not a number"):
        MovieLens100K({"strict": True}).load(str(tmp_path))
    dataset = MovieLens100K().load(str(tmp_path))
    assert len(dataset.interactions) == 30 and dataset.report.malformed_rows == 1


def test_movielens_latest_wrong_ratings_header(tmp_path):
    (tmp_path / "ratings.csv").write_text("user,movie,rating,timestamp\n1,2,3,4\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n2,X,Drama\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1, column 'userId': missing columns userId, movieId; the header has"):
        MovieLensLatest().load(str(tmp_path))


def test_items_file_errors(tmp_path):
    no_id = tmp_path / "items.csv"
    no_id.write_text("id,title\n1,x\n")
    with pytest.raises(DataError, match=r"items\.csv:1, column 'item_id': missing required column item_id; the header has \['id', 'title'\]"):
        load_items_file(no_id)
    bad_json = tmp_path / "items.jsonl"
    bad_json.write_text('{"item_id": "a"}\n{"item_id": \n[1, 2]\n')
    with pytest.raises(DataError) as error:
        load_items_file(bad_json)
    assert f"{bad_json}:2: not valid JSON" in str(error.value)
    assert f"{bad_json}:3: expected a JSON object, found list" in str(error.value)
    with pytest.raises(DataError, match=r"users\.csv: no such file"):
        load_users_file(tmp_path / "users.csv")


def test_bad_source_options_are_a_config_error(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + good_rows(3))
    with pytest.raises(ConfigError, match="invalid options for data source 'interactions-file': strictness"):
        load_dataset(path, options={"strictness": True})


def test_report_is_filled_even_when_loading_succeeds(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + good_rows(3))
    report = LoadReport()
    load_interactions_file(path, report=report)
    assert report.rows_read == 3 and report.malformed_rows == 0 and report.malformed_examples == []


# -- a plugin's data source, through `rayrec train` as a user runs it ------------------------
def jsonl_plugin(load):
    """A plugin whose data source claims ``*.jsonl`` files and loads them with ``load``."""
    import types

    from rayrec.components import DataSource
    from rayrec.hookspecs import hookimpl

    class JsonLines(DataSource):
        name = "jsonl-events"
        description = "JSON lines of events."

        def can_load(self, path: str) -> bool:
            return path.endswith(".jsonl")

        def load(self, path: str):
            return load(path)

    module = types.ModuleType("rayrec_jsonl_events")
    module.register_data_sources = hookimpl(lambda register: register(JsonLines))
    return module


def train_error(tmp_path, capsys, register_rayrec_plugin, load) -> list[str]:
    from rayrec.cli import main

    register_rayrec_plugin(jsonl_plugin(load), name="rayrec-jsonl-events")
    path = tmp_path / "events.jsonl"
    path.write_text("{}\n")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--interactions", str(path), "--out", str(tmp_path / "model"), "--in-process"])
    assert exited.value.code == 1
    assert not (tmp_path / "model").exists()
    return capsys.readouterr().err.strip().splitlines()


def test_any_exception_from_a_plugin_data_source_is_one_line_naming_source_and_plugin(tmp_path, capsys,
                                                                                       register_rayrec_plugin):
    def broken(path):
        raise ValueError("Expecting ',' delimiter:\nline 1 column 3")

    [line] = train_error(tmp_path, capsys, register_rayrec_plugin, broken)
    assert line == (f"Error: {tmp_path / 'events.jsonl'}: data source 'jsonl-events' (plugin rayrec-jsonl-events) "
                    "failed to load it: ValueError: Expecting ',' delimiter: line 1 column 3")


def test_a_data_error_from_a_plugin_data_source_is_shown_as_raised(tmp_path, capsys, register_rayrec_plugin):
    def strict(path):
        raise DataError("expected an object with user_id", path=path, line=1)

    [line] = train_error(tmp_path, capsys, register_rayrec_plugin, strict)
    assert line == f"Error: {tmp_path / 'events.jsonl'}:1: expected an object with user_id"


def test_a_plugin_data_source_that_returns_no_dataset_is_named(tmp_path, capsys, register_rayrec_plugin):
    [line] = train_error(tmp_path, capsys, register_rayrec_plugin, lambda path: [{"user_id": "u1"}])
    assert "data source 'jsonl-events' (plugin rayrec-jsonl-events) returned list, not a rayrec.schema.Dataset" in line


def test_a_binary_first_line_gives_a_short_message(tmp_path):
    """A file overwritten with zeros (or any binary first line): the message stays one short
    line naming the file, not the whole line."""
    path = tmp_path / "train.csv"
    path.write_bytes(b"\x00" * 100_000 + b",1,2\n1,2,3\n")
    with pytest.raises(DataError) as error:
        load_interactions_file(path)
    message = str(error.value)
    assert "train.csv:1" in message and "missing required columns" in message
    assert len(message) < 600, len(message)
