"""``rayrec recommend`` on Ray Data: an actor pool on a 2-CPU local Ray, one file or shards."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from rayrec.batch.recommend import pool_layout, recommend_all
from rayrec.cli import cli
from rayrec.models.servable import load_model_dir

pytestmark = pytest.mark.integration

RAYREC = [sys.executable, "-m", "rayrec"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    result = CliRunner().invoke(cli, ["train", "--interactions", "synthetic:users=700,items=120,clusters=4,seed=2",
                                      "--out", str(out), "--epochs", "1", "--in-process"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def two_cpu_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def expected_lists(model_dir, k):
    """What the model itself ranks for every training user, in process, no Ray. Scores match
    to rounding: the product of a batch of user vectors and the items rounds by the batch."""
    model = load_model_dir(model_dir)
    items, scores = model.recommend_indices(list(range(len(model.user_vocab))), k)
    return {user_id: (model.item_vocab.decode(items[row].tolist()), [round(float(s), 6) for s in scores[row]])
            for row, user_id in enumerate(model.user_vocab.ids)}


def test_one_file_keeps_the_users_order_and_the_models_lists(model_dir, two_cpu_ray, tmp_path):
    out = tmp_path / "recs.jsonl"
    written = recommend_all(model_dir, 5, out)
    assert written["actors"] == 2  # one model copy per CPU of the 2-CPU Ray, and it finished
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    model = load_model_dir(model_dir)
    assert [line["user_id"] for line in lines] == model.user_vocab.ids  # 700 users, two actors, in order
    expected = expected_lists(model_dir, 5)
    for line in lines:
        assert set(line) == {"user_id", "items", "scores"}
        items, scores = expected[line["user_id"]]
        assert line["items"] == items and line["scores"] == pytest.approx(scores, abs=2e-6)


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_shards_hold_every_user_once_with_the_same_lists(model_dir, two_cpu_ray, tmp_path, output_format):
    out = tmp_path / "recs"
    written = recommend_all(model_dir, 4, out, output_format=output_format)
    shards = sorted(out.glob(f"*.{output_format}"))
    assert written["shards"] == len(shards) == 4  # two blocks per actor
    if output_format == "jsonl":
        records = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    else:
        records = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    expected = expected_lists(model_dir, 4)
    assert sorted(r["user_id"] for r in records) == sorted(expected)
    for record in records:
        items, scores = expected[record["user_id"]]
        assert list(record["items"]) == items and list(record["scores"]) == pytest.approx(scores, abs=2e-6)
    # A second run replaces the earlier shards instead of adding to them.
    recommend_all(model_dir, 4, out, output_format=output_format)
    assert len(list(out.glob(f"*.{output_format}"))) == len(shards)


def test_listed_users_in_their_order_and_strangers_get_popular_items(model_dir, two_cpu_ray, tmp_path):
    model = load_model_dir(model_dir)
    listed = [model.user_vocab.ids[5], "never-seen", model.user_vocab.ids[0]]
    out = tmp_path / "recs.jsonl"
    written = recommend_all(model_dir, 3, out, user_ids=listed)
    assert written["unknown"] == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == listed
    popular = np.argsort(-model.item_popularity, kind="stable")[:3]
    assert lines[1]["items"] == model.item_vocab.decode(popular.tolist())
    assert lines[0]["items"] == expected_lists(model_dir, 3)[listed[0]][0]


def test_pool_size_follows_the_cpus_and_shards_stay_bounded():
    layout = pool_layout(2, 700)
    assert (layout.actors, layout.threads) == (2, 1)
    assert layout.blocks == 4 and layout.batch_size == 175  # two blocks per actor; a batch never spans two
    assert pool_layout(16, 100_000, actors=4).threads == 4
    big = pool_layout(2, 10_000_000)
    assert big.blocks == 100 and big.batch_size == 512  # 100,000 users per shard at most
    assert pool_layout(2, 10_000_000, users_per_shard=1_000_000).blocks == 10


def test_cli_writes_parquet_shards_and_refuses_a_foreign_directory(model_dir, tmp_path):
    out = tmp_path / "shards"
    result = subprocess.run(RAYREC + ["recommend", "--model", str(model_dir), "-k", "2", "--out", str(out),
                                      "--format", "parquet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parquet shards" in result.stdout
    assert sum(pq.read_table(shard).num_rows for shard in out.glob("*.parquet")) == 700

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = subprocess.run(RAYREC + ["recommend", "--model", str(model_dir), "--out", str(foreign),
                                       "--format", "jsonl"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "notes.txt" in refused.stderr and "Traceback" not in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
