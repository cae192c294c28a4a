"""Loaders: MovieLens layouts on the shared datasets, generic files, dispatch by load_dataset."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.data import (
    InteractionsFileSource,
    MovieLens100K,
    MovieLensLatest,
    load_dataset,
    load_interactions_file,
    load_items_file,
    load_users_file,
    write_synthetic,
    SyntheticConfig,
)
from rayrec.errors import DataError
from rayrec.plugins import registry


def test_builtin_data_sources_are_registered_in_dispatch_order():
    names = list(registry().by_kind["data_source"])
    assert names[:5] == ["movielens-100k", "movielens-latest", "synthetic", "event-log", "interactions-file"]


# --- MovieLens on the shared datasets ---------------------------------------------------------


def test_movielens_100k_loads_every_rating_user_and_movie(ml100k_path):
    dataset = load_dataset(ml100k_path)
    interactions = dataset.interactions
    assert len(interactions) == 100_000
    assert len(set(interactions.user_id)) == 943
    assert len(set(interactions.item_id)) == 1682
    assert dataset.report.rows_read == 100_000 and dataset.report.malformed_rows == 0
    # First line of u.data: 196 242 3 881250949
    assert (interactions.user_id[0], interactions.item_id[0]) == ("196", "242")
    assert interactions.timestamp[0] == 881250949 and interactions.timestamp.dtype == np.int64
    assert interactions.value[0] == 3.0 and set(interactions.event_type[:10]) == {"rating"}
    assert len(dataset.items) == 1682 and all(dataset.items.title)
    toy_story = dataset.items.record(dataset.items.item_id.index("1"))
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    assert len(dataset.users) == 943
    first_user = dataset.users.user_id.index("1")  # 1|24|M|technician|85711
    assert dataset.users.features["age"][first_user] == "18-24"
    assert dataset.users.features["gender"][first_user] == "M"
    assert dataset.users.features["occupation"][first_user] == "technician"


def test_movielens_latest_small_loads_ratings_movies_and_tags(ml_latest_small_path):
    dataset = load_dataset(ml_latest_small_path)
    interactions = dataset.interactions
    assert len(interactions) == 100_836
    assert len(set(interactions.user_id)) == 610
    assert len(dataset.items) == 9742 and all(dataset.items.title)
    assert interactions.value.dtype == np.float32 and interactions.value[0] == 4.0
    items = {record["item_id"]: record for record in dataset.items.records()}
    # A quoted title with a comma, parsed as one field.
    assert items["11"]["title"] == "American President, The (1995)"
    assert items["1"]["categories"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert items["1"]["text"] == "pixar; fun"  # tags.csv, appended to the item text
    no_genres = [record for record in items.values() if not record["categories"]]
    assert no_genres and all("(no genres listed)" not in r["categories"] for r in items.values())


def test_movielens_sources_claim_only_their_layout(ml100k_path, ml_latest_small_path, tmp_path):
    assert MovieLens100K().can_load(str(ml100k_path))
    assert not MovieLens100K().can_load(str(ml_latest_small_path))
    assert MovieLensLatest().can_load(str(ml_latest_small_path))
    assert not MovieLensLatest().can_load(str(ml100k_path))
    assert not InteractionsFileSource().can_load(str(ml100k_path))
    assert not MovieLens100K().can_load(str(tmp_path))


def test_movielens_100k_layout_built_by_hand(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t100\n2\t10\t3\t200\n1\t11\t4\t150\n")
    genre_lines = "\n".join(f"g{i}|{i}" for i in range(19))
    (tmp_path / "u.genre").write_text(genre_lines + "\n\n")
    flags = ["0"] * 19
    flags[3] = "1"
    (tmp_path / "u.item").write_bytes(
        ("10|Caf\xe9 \"Noir\" (1990)|01-Jan-1990||http://x|" + "|".join(flags) + "\n").encode("latin-1")
        + ("11|Other (1991)|01-Jan-1991||http://y|" + "|".join(["0"] * 19) + "\n").encode("latin-1")
    )
    dataset = load_dataset(tmp_path)
    assert list(dataset.interactions.item_id) == ["10", "10", "11"]
    assert dataset.items.title == ['Caf\xe9 "Noir" (1990)', "Other (1991)"]
    assert dataset.items.categories == [["g3"], []]
    assert dataset.users is None  # no u.user: no user features, not an error


# --- Generic interactions files ---------------------------------------------------------------


def test_csv_keeps_ids_as_opaque_strings(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp,event_type,value\n007,0042,100,click,1\n7,42,101,purchase,2.5\n")
    interactions = load_interactions_file(path)
    assert list(interactions.user_id) == ["007", "7"]
    assert list(interactions.item_id) == ["0042", "42"]
    assert list(interactions.timestamp) == [100, 101]
    assert list(interactions.event_type) == ["click", "purchase"]
    assert interactions.value.tolist() == [1.0, 2.5]


def test_tsv_and_txt_are_sniffed_and_extra_columns_ignored(tmp_path):
    tsv = tmp_path / "events.tsv"
    tsv.write_text("session\tUser_ID\tItem_Id\tTimestamp\nA\t007\tx1\t5\nB\t008\tx2\t6\n")
    interactions = load_interactions_file(tsv)
    assert list(interactions.user_id) == ["007", "008"]
    assert interactions.event_type is None and interactions.value is None
    txt = tmp_path / "events.txt"
    txt.write_text("user_id;item_id;timestamp\n007;x1;5\n")
    assert list(load_interactions_file(txt).item_id) == ["x1"]


def test_parquet_round_trip_with_string_and_integer_ids(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table({"user_id": ["007", "7"], "item_id": [42, 43], "timestamp": [100, 200], "value": [1.0, 0.5]}), path
    )
    interactions = load_dataset(path).interactions
    assert list(interactions.user_id) == ["007", "7"]
    assert list(interactions.item_id) == ["42", "43"]
    assert list(interactions.timestamp) == [100, 200]
    assert interactions.value.tolist() == [1.0, 0.5]


def test_parquet_timestamp_columns_become_unix_seconds(tmp_path):
    path = tmp_path / "events.parquet"
    moments = [
        datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc),
        datetime(2021, 3, 4, 5, 6, 8, 750_000, tzinfo=timezone.utc),  # sub-second: truncated
    ]
    pq.write_table(
        pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": pa.array(moments, pa.timestamp("ms", tz="UTC"))}),
        path,
    )
    interactions = load_interactions_file(path)
    assert list(interactions.timestamp) == [int(m.timestamp()) for m in moments]


def test_iso_8601_and_float_timestamps(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp\n"
        "a,x,2021-03-04T05:06:07Z\n"
        "a,y,2021-03-04 05:06:07\n"  # no zone: UTC
        "a,z,2021-03-04T07:06:07+02:00\n"
        "b,x,2021-03-04\n"
        "b,y,1614834367.9\n"  # fractional seconds are floored
    )
    expected = int(datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp())
    midnight = int(datetime(2021, 3, 4, tzinfo=timezone.utc).timestamp())
    timestamps = load_interactions_file(path).timestamp.tolist()
    assert timestamps == [expected, expected, expected, midnight, expected]


def test_quoted_fields_blank_lines_and_bom_are_handled(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes('\ufeffuser_id,item_id,timestamp\n"a,1",x,1\n\nb, y ,2\n'.encode("utf-8"))
    interactions = load_interactions_file(path)
    assert list(interactions.user_id) == ["a,1", "b"]
    assert list(interactions.item_id) == ["x", "y"]  # surrounding spaces stripped


def test_fast_and_exact_reads_agree(tmp_path):
    """The pyarrow pass (clean file) and the csv pass (one bad row) give the same good rows."""
    rows = [f"u{i % 7},i{i % 11},{1000 + i}" for i in range(200)]
    clean = tmp_path / "clean.csv"
    clean.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    dirty = tmp_path / "dirty.csv"
    dirty.write_text("user_id,item_id,timestamp\n" + "\n".join(rows[:50] + ["broken"] + rows[50:]) + "\n")
    from rayrec.schema import LoadReport

    report = LoadReport()
    a, b = load_interactions_file(clean), load_interactions_file(dirty, report=report)
    assert list(a.user_id) == list(b.user_id) and list(a.timestamp) == list(b.timestamp)
    assert report.malformed_rows == 1 and report.rows_read == 201
    assert report.malformed_examples == [f"{dirty}:52: expected 3 fields (user_id,item_id,timestamp), found 1"]


def test_directory_with_interactions_items_and_users(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n")
    (tmp_path / "items.jsonl").write_text(
        '{"item_id": "i1", "title": "One", "categories": ["a", "b"]}\n{"item_id": "i2", "description": "Two things"}\n'
    )
    (tmp_path / "users.tsv").write_text("user_id\tcountry\tplan\nu1\tde\tfree\nu2\tfr\t\n")
    dataset = load_dataset(tmp_path)
    assert dataset.name == tmp_path.name
    assert dataset.items.record(0) == {"item_id": "i1", "title": "One", "text": "", "categories": ["a", "b"]}
    assert dataset.items.record(1)["text"] == "Two things"
    assert dataset.users.features == {"country": ["de", "fr"], "plan": ["free", ""]}


def test_explicit_items_and_users_files_override(tmp_path, ml100k_path):
    items = tmp_path / "my_items.csv"
    items.write_text('item_id,title,text,categories\n1,Toy,"A toy, story",Kids| Fun |\n')
    users = tmp_path / "my_users.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "segment": ["a", None]}), users)
    dataset = load_dataset(ml100k_path, items=items, users=users)
    assert len(dataset.interactions) == 100_000
    assert dataset.items.records() == [{"item_id": "1", "title": "Toy", "text": "A toy, story", "categories": ["Kids", "Fun"]}]
    assert dataset.users.user_id == ["1", "2"] and dataset.users.features == {"segment": ["a", ""]}


def test_items_file_duplicates_keep_the_first_and_are_reported(tmp_path):
    from rayrec.schema import LoadReport

    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n" + "".join(f"i{n},T{n}\n" for n in range(20)) + "i3,again\n")
    report = LoadReport()
    items = load_items_file(path, report=report)
    assert len(items) == 20 and items.title[3] == "T3"
    assert report.malformed_rows == 1
    assert report.malformed_examples == [f"{path}:22: duplicate item_id 'i3' (first on line 5)"]


def test_users_file_parquet_and_csv_agree(tmp_path):
    csv_path = tmp_path / "users.csv"
    csv_path.write_text("user_id,age\n007,30\n")
    parquet_path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["007"], "age": ["30"]}), parquet_path)
    for path in (csv_path, parquet_path):
        users = load_users_file(path)
        assert users.user_id == ["007"] and users.features == {"age": ["30"]}


def test_synthetic_directory_round_trips_through_load_dataset(tmp_path):
    config = SyntheticConfig(num_users=30, num_items=40, num_clusters=4, mean_events_per_user=8, seed=3)
    write_synthetic(tmp_path, config)
    from_disk = load_dataset(tmp_path)
    in_memory = load_dataset("synthetic:users=30,items=40,clusters=4,events=8,seed=3")
    assert list(from_disk.interactions.user_id) == list(in_memory.interactions.user_id)
    assert list(from_disk.interactions.item_id) == list(in_memory.interactions.item_id)
    assert np.array_equal(from_disk.interactions.timestamp, in_memory.interactions.timestamp)
    assert np.array_equal(from_disk.interactions.value, in_memory.interactions.value)
    assert from_disk.items.records() == in_memory.items.records()
    assert from_disk.users.features == in_memory.users.features


def test_load_dataset_passes_options_to_the_source(tmp_path):
    from rayrec.errors import DataError

    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n" + "u,i,1\n" * 30 + "u,i,never\n")
    assert len(load_dataset(path).interactions) == 30
    with pytest.raises(DataError, match=r"events\.csv:32"):
        load_dataset(path, options={"strict": True})


def write_shards(directory, rows_per_shard):
    """Parquet shards as Spark or Ray Data write them: part-N.parquet, one user per shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for shard, rows in enumerate(rows_per_shard):
        users, items, times = zip(*rows)
        pq.write_table(pa.table({"user_id": list(users), "item_id": list(items), "timestamp": list(times)}),
                       directory / f"part-{shard:05d}.parquet")


SHARDS = [[("u1", "a", 1), ("u1", "b", 2)], [("u2", "b", 1), ("u2", "c", 2), ("u2", "a", 3)], [("u3", "c", 5)]]


@pytest.mark.parametrize("form", ["directory", "glob", "parent directory"])
def test_a_directory_or_glob_of_parquet_shards_loads_every_shard(tmp_path, form):
    write_shards(tmp_path / "events" / "interactions", SHARDS)
    path = {"directory": tmp_path / "events" / "interactions",
            "glob": tmp_path / "events" / "interactions" / "part-*.parquet",
            "parent directory": tmp_path / "events"}[form]
    dataset = load_dataset(str(path))
    assert list(dataset.interactions.user_id) == ["u1", "u1", "u2", "u2", "u2", "u3"]
    assert list(dataset.interactions.item_id) == ["a", "b", "b", "c", "a", "c"]
    assert dataset.report.rows_read == 6


def test_a_malformed_row_in_a_shard_names_the_shard_and_row(tmp_path):
    long_shard = [("u2", "b", 1), ("", "c", 2)] + [("u2", f"x{n}", 10 + n) for n in range(12)]
    write_shards(tmp_path / "shards", [SHARDS[0], long_shard, SHARDS[2]])
    dataset = load_dataset(str(tmp_path / "shards"))
    assert dataset.report.malformed_examples == [f"{tmp_path / 'shards' / 'part-00001.parquet'}:2: empty user_id"]
    assert len(dataset.interactions) == 2 + 13 + 1


def test_a_glob_that_matches_nothing_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"nothing-\*\.parquet: the pattern matches no file"):
        load_dataset(str(tmp_path / "nothing-*.parquet"))


def test_train_reads_a_directory_of_parquet_shards_and_a_glob(tmp_path):
    from click.testing import CliRunner

    from rayrec.cli import cli
    from rayrec.models.servable import load_model_dir

    write_synthetic(tmp_path / "data", SyntheticConfig(num_users=60, num_items=40, num_clusters=4, seed=2),
                    file_format="parquet", shards=3)
    for name, source in [("from-dir", tmp_path / "data" / "interactions"),
                         ("from-glob", tmp_path / "data" / "interactions" / "*.parquet")]:
        result = CliRunner().invoke(cli, ["train", "--interactions", str(source), "--out", str(tmp_path / name),
                                          "--epochs", "1", "--in-process"])
        assert result.exit_code == 0, result.output
        assert len(load_model_dir(tmp_path / name).user_vocab) == 60  # every shard's users
