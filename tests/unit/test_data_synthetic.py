"""The synthetic generator: deterministic, streams in flat memory, and its structure is real."""

from __future__ import annotations

import tracemalloc
from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner

from rayrec.data import (
    SyntheticConfig,
    generate,
    iter_chunks,
    load_dataset,
    parse_synthetic_spec,
    synthetic_truth,
    write_synthetic,
)
from rayrec.errors import DataError
from rayrec.schema import Interactions

SMALL = SyntheticConfig(num_users=300, num_items=200, num_clusters=5, mean_events_per_user=20, seed=7)


def same_interactions(a: Interactions, b: Interactions) -> bool:
    return (
        a.user_id.tolist() == b.user_id.tolist()
        and a.item_id.tolist() == b.item_id.tolist()
        and np.array_equal(a.timestamp, b.timestamp)
        and np.array_equal(a.value, b.value)
        and a.event_type.tolist() == b.event_type.tolist()
    )


@pytest.fixture(scope="module")
def default_dataset():
    return generate(SyntheticConfig())


def test_laptop_defaults(default_dataset):
    config = SyntheticConfig()
    assert (config.num_users, config.num_items, config.num_clusters) == (1000, 500, 10)
    assert len(default_dataset.items) == 500 and len(default_dataset.users) == 1000
    events_per_user = len(default_dataset.interactions) / 1000
    assert 35 <= events_per_user <= 45
    assert default_dataset.report.rows_read == len(default_dataset.interactions)


def test_same_seed_same_data_other_seed_other_data():
    first, second = generate(SMALL), generate(SMALL)
    assert same_interactions(first.interactions, second.interactions)
    assert first.items.records() == second.items.records()
    assert first.users.features == second.users.features
    other = generate(SMALL.model_copy(update={"seed": 8}))
    assert other.interactions.item_id.tolist() != first.interactions.item_id.tolist()


def test_chunks_are_exact_sized_and_independent_of_the_chunk_size():
    config = SMALL.model_copy(update={"num_users": 2500})  # more than one block of users
    whole = generate(config).interactions
    for chunk_size in (1, 997, 10_000, 10**9):
        if chunk_size == 1:
            config_small = SMALL.model_copy(update={"num_users": 3})
            chunks = list(iter_chunks(config_small, chunk_size=1))
            assert all(len(chunk) == 1 for chunk in chunks)
            assert same_interactions(Interactions.concat(chunks), generate(config_small).interactions)
            continue
        chunks = list(iter_chunks(config, chunk_size))
        assert all(len(chunk) == chunk_size for chunk in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size
        assert same_interactions(Interactions.concat(chunks), whole)


def test_streaming_memory_stays_flat():
    """Four times the users, same peak memory: the stream never holds the whole dataset."""

    def streaming_peak(num_users: int) -> tuple[int, int]:
        config = SyntheticConfig(num_users=num_users, num_items=1000, mean_events_per_user=8, seed=1)
        rows = 0
        tracemalloc.start()
        try:
            for chunk in iter_chunks(config, chunk_size=2_000):
                rows += len(chunk)
            return rows, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small_rows, small_peak = streaming_peak(2_000)
    large_rows, large_peak = streaming_peak(8_000)
    assert large_rows > 3.5 * small_rows
    assert large_peak < 1.5 * small_peak, f"peak grew from {small_peak / 1e6:.1f} MB to {large_peak / 1e6:.1f} MB"


def indices(ids) -> np.ndarray:
    return np.fromiter((int(identifier[1:]) for identifier in ids), dtype=np.int64)


def test_most_events_are_in_the_home_cluster(default_dataset):
    truth = synthetic_truth(SyntheticConfig())
    users = indices(default_dataset.interactions.user_id)
    items = indices(default_dataset.interactions.item_id)
    at_home = truth.user_cluster[users] == truth.item_cluster[items]
    assert 0.85 < at_home.mean() < 0.95  # explore_probability = 0.1
    per_user = np.bincount(users, weights=at_home) / np.bincount(users)
    assert (per_user > 0.5).mean() > 0.95  # the majority of nearly every user's events
    assert truth.user_cluster_of(default_dataset.interactions.user_id[0]) == truth.user_cluster[users[0]]


def test_sequences_follow_the_cluster_order_and_beat_popularity(default_dataset):
    truth = synthetic_truth(SyntheticConfig())
    data = default_dataset.interactions
    users, items = indices(data.user_id), indices(data.item_id)
    same_user = users[1:] == users[:-1]
    follows = truth.item_successor[items[:-1]] == items[1:]
    # Rows are user by user in time order, so consecutive rows are consecutive events.
    successor_rate = follows[same_user].mean()
    top_items = np.argsort(-np.bincount(items, minlength=500))[:10]
    popularity_rate = np.isin(items[1:][same_user], top_items).mean()
    assert successor_rate > 0.4
    assert successor_rate > 5 * popularity_rate


def test_popularity_within_a_cluster_is_skewed():
    # A catalogue large enough that users do not exhaust their home cluster (no repeats would
    # otherwise flatten popularity): the top tenth of each cluster by Zipf weight gets several
    # times the events of the bottom tenth.
    config = SyntheticConfig(num_items=2000, mean_events_per_user=20, seed=2)
    truth = synthetic_truth(config)
    counts = np.bincount(indices(generate(config).interactions.item_id), minlength=2000)
    for members in truth.cluster_order:
        by_weight = members[np.argsort(-truth.item_weight[members])]
        tenth = len(members) // 10
        assert counts[by_weight[:tenth]].sum() > 3 * counts[by_weight[-tenth:]].sum()


def test_timelines_increase_and_never_repeat_an_item(default_dataset):
    timelines = defaultdict(list)
    data = default_dataset.interactions
    for user, item, timestamp in zip(data.user_id.tolist(), data.item_id.tolist(), data.timestamp.tolist()):
        timelines[user].append((timestamp, item))
    assert len(timelines) == 1000
    for events in timelines.values():
        times = [t for t, _ in events]
        assert all(b > a for a, b in zip(times, times[1:]))
        assert len({item for _, item in events}) == len(events)
        assert len(events) >= SyntheticConfig().min_events_per_user


def test_shuffle_order_keeps_each_users_items_and_times_but_not_their_order(tmp_path):
    config = SMALL.model_copy(update={"num_users": 1100})  # more than one block of users
    ordered = generate(config).interactions
    shuffled = generate(config.model_copy(update={"shuffle_order": True})).interactions

    def timelines(data: Interactions) -> dict[str, list[tuple[int, str]]]:
        by_user = defaultdict(list)
        for user, item, timestamp in zip(data.user_id.tolist(), data.item_id.tolist(), data.timestamp.tolist()):
            by_user[user].append((timestamp, item))
        return {user: sorted(events) for user, events in by_user.items()}

    before, after = timelines(ordered), timelines(shuffled)
    assert before.keys() == after.keys()
    for user in before:
        assert {item for _, item in after[user]} == {item for _, item in before[user]}
        assert [t for t, _ in after[user]] == [t for t, _ in before[user]]
    changed = sum([i for _, i in after[user]] != [i for _, i in before[user]] for user in before)
    assert changed > 0.95 * len(before)
    # The cluster successor, which follows the previous item 40%+ of the time in order, is
    # now near chance: the order carries no signal.
    truth = synthetic_truth(config)
    users, items = indices(shuffled.user_id), indices(shuffled.item_id)
    same_user = users[1:] == users[:-1]
    assert (truth.item_successor[items[:-1]] == items[1:])[same_user].mean() < 0.1
    assert same_interactions(shuffled, generate(config.model_copy(update={"shuffle_order": True})).interactions)

    from rayrec.cli import cli

    result = CliRunner().invoke(
        cli, ["synthetic", "--out", str(tmp_path), "--users", "1100", "--items", "200", "--clusters", "5",
              "--events-per-user", "20", "--seed", "7", "--shuffle-order"],
    )
    assert result.exit_code == 0, result.output
    assert same_interactions(load_dataset(tmp_path).interactions, shuffled)


def test_item_text_uses_cluster_vocabularies(default_dataset):
    truth = synthetic_truth(SyntheticConfig())
    items = default_dataset.items
    own_word_share = []
    for position, record in enumerate(items.records()):
        cluster = truth.item_cluster[position]
        assert record["categories"][0] == truth.cluster_themes[cluster]
        words = {w.strip(",.:").lower() for w in (record["title"] + " " + record["text"]).split()}
        topical = [w for w in words if any(w in vocabulary for vocabulary in truth.cluster_words)]
        own_word_share.append(np.mean([w in truth.cluster_words[cluster] for w in topical]))
    assert np.mean(own_word_share) > 0.8
    assert len(set(items.title)) == len(items)


def test_user_interest_feature_is_informative_but_noisy(default_dataset):
    truth = synthetic_truth(SyntheticConfig())
    interest = default_dataset.users.features["interest"]
    matches = np.mean([interest[u] == truth.cluster_themes[c] for u, c in enumerate(truth.user_cluster)])
    assert 0.65 < matches < 0.85
    assert set(default_dataset.users.features) == {"interest", "country"}


def test_more_clusters_than_themes_get_distinct_vocabularies():
    truth = synthetic_truth(SyntheticConfig(num_users=10, num_items=40, num_clusters=20))
    assert len(set(truth.cluster_themes)) == 20
    assert not set(truth.cluster_words[0]) & set(truth.cluster_words[16])


def test_spec_parsing():
    config = parse_synthetic_spec("synthetic:users=20, items=30,clusters=3,events=6,seed=2")
    assert (config.num_users, config.num_items, config.num_clusters, config.mean_events_per_user, config.seed) == (20, 30, 3, 6.0, 2)
    assert parse_synthetic_spec("synthetic:") == SyntheticConfig() == parse_synthetic_spec("synthetic")
    with pytest.raises(DataError, match="cannot read 'colour=red'.*keys from: .*users"):
        parse_synthetic_spec("synthetic:colour=red")
    with pytest.raises(DataError, match="num_users"):
        parse_synthetic_spec("synthetic:users=lots")
    with pytest.raises(DataError, match="num_items .* must be at least num_clusters"):
        parse_synthetic_spec("synthetic:items=3,clusters=5")


def test_load_dataset_generates_in_memory():
    dataset = load_dataset("synthetic:users=40,items=50,clusters=5,seed=4")
    assert dataset.name == "synthetic"
    assert len(set(dataset.interactions.user_id)) == 40 and len(dataset.items) == 50


def test_write_synthetic_and_the_cli(tmp_path):
    from rayrec.cli import cli

    result = CliRunner().invoke(
        cli, ["synthetic", "--out", str(tmp_path / "data"), "--users", "25", "--items", "30", "--clusters", "3",
              "--events-per-user", "6", "--seed", "5", "--chunk-size", "7"],
    )
    assert result.exit_code == 0, result.output
    assert "interactions of 25 users on 30 items in 3 clusters" in result.output
    config = SyntheticConfig(num_users=25, num_items=30, num_clusters=3, mean_events_per_user=6, seed=5)
    from_disk = load_dataset(tmp_path / "data")
    assert same_interactions(from_disk.interactions, generate(config).interactions)
    import json

    saved = SyntheticConfig(**json.loads((tmp_path / "data" / "synthetic.json").read_text()))
    assert saved == config
    paths = write_synthetic(tmp_path / "again", config, chunk_size=3)
    assert paths["interactions"].read_text() == (tmp_path / "data" / "interactions.csv").read_text()
    header = paths["items"].read_text().splitlines()[0]
    assert header == "item_id,title,text,categories"


def test_cli_rejects_impossible_configs(tmp_path):
    from rayrec.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synthetic", "--out", str(tmp_path), "--items", "2", "--clusters", "5"])
    assert exit_info.value.code == 1


def test_parquet_shards_hold_the_same_rows_each_user_in_one_shard(tmp_path):
    import pyarrow.parquet as pq

    config = SyntheticConfig(num_users=3000, num_items=200, num_clusters=5, mean_events_per_user=6, seed=3)
    paths = write_synthetic(tmp_path, config, chunk_size=2_000, file_format="parquet", shards=4)
    shards = sorted(paths["interactions"].glob("*.parquet"))
    assert [s.name for s in shards] == [f"part-0000{i}.parquet" for i in range(4)]
    users_per_shard = [set(pq.read_table(s, columns=["user_id"]).column(0).to_pylist()) for s in shards]
    assert [len(u) for u in users_per_shard] == [750] * 4  # whole users, split evenly
    assert sum(len(u) for u in users_per_shard) == len(set().union(*users_per_shard))
    # Written a row group at a time, never the whole shard at once (about 4,500 rows a shard).
    assert all(pq.ParquetFile(s).metadata.num_row_groups >= 2 for s in shards)
    loaded = load_dataset(tmp_path)  # the directory: interactions/ shards, items.parquet, users.parquet
    expected = generate(config)
    assert same_interactions(loaded.interactions, expected.interactions)
    assert loaded.items.item_id == expected.items.item_id and loaded.items.categories == expected.items.categories
    assert loaded.users.features == expected.users.features


def test_parquet_writing_memory_stays_flat(tmp_path):
    """Four times the users, about the same peak: one block of users at a time, shard by shard."""

    def writing_peak(num_users: int) -> int:
        config = SyntheticConfig(num_users=num_users, num_items=1000, mean_events_per_user=8, seed=1)
        tracemalloc.start()
        try:
            write_synthetic(tmp_path / str(num_users), config, chunk_size=2_000, file_format="parquet", shards=8)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small_peak, large_peak = writing_peak(2_000), writing_peak(8_000)
    assert large_peak < 1.5 * small_peak, f"peak grew from {small_peak / 1e6:.1f} MB to {large_peak / 1e6:.1f} MB"


def test_the_cli_writes_parquet_shards_and_wants_parquet_for_shards(tmp_path):
    from rayrec.cli import cli

    result = CliRunner().invoke(cli, ["synthetic", "--out", str(tmp_path / "data"), "--users", "40", "--items", "30",
                                      "--clusters", "3", "--format", "parquet", "--shards", "3"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "data" / "interactions").glob("*.parquet"))) == 3
    rows = len(generate(SyntheticConfig(num_users=40, num_items=30, num_clusters=3)).interactions)
    assert f"wrote {rows:,} interactions of 40 users" in result.output
    refused = CliRunner().invoke(cli, ["synthetic", "--out", str(tmp_path / "csv"), "--shards", "3"])
    assert refused.exit_code == 2 and "--shards needs --format parquet" in refused.output
