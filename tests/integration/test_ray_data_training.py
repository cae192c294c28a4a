"""`rayrec train` on Parquet shards through Ray Data, on a real local Ray cluster: the workers
read their own shards of the users, the model learns the data's structure, and it is as good
as the in-memory path's on the same data."""

import json
import subprocess
import sys

import pytest

from rayrec.data import SyntheticConfig, write_synthetic

pytestmark = pytest.mark.integration

CONFIG = SyntheticConfig(num_users=400, num_items=150, num_clusters=5, mean_events_per_user=20, seed=11)
TRAIN = ["--no-search", "--epochs", "6", "--num-workers", "2"]


def train(interactions, out):
    done = subprocess.run([sys.executable, "-m", "rayrec", "train", "--interactions", str(interactions),
                           "--out", str(out), *TRAIN], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr, json.loads((out / "metrics.json").read_text())


def test_parquet_shards_train_through_ray_data_as_well_as_in_memory(tmp_path):
    parquet, csv = tmp_path / "parquet", tmp_path / "csv"
    write_synthetic(parquet, CONFIG, file_format="parquet", shards=4)
    write_synthetic(csv, CONFIG)
    rows = sum(1 for _ in open(csv / "interactions.csv")) - 1

    output, metrics = train(f"file://{parquet / 'interactions'}", tmp_path / "ray_data_model")
    assert "with Ray Data" in output
    shards = metrics["worker_shards"]
    assert [shard["rank"] for shard in shards] == [0, 1]
    assert sum(shard["users"] for shard in shards) == CONFIG.num_users
    assert sum(shard["interactions"] for shard in shards) == rows
    assert all(shard["users"] > 0 for shard in shards)
    config = json.loads((tmp_path / "ray_data_model" / "config.json").read_text())
    assert (config["num_users"], config["num_interactions"]) == (CONFIG.num_users, rows)
    random_hit_rate = 10 / CONFIG.num_items
    assert metrics["best_val_hr@10"] > 4 * random_hit_rate

    output, in_memory = train(csv / "interactions.csv", tmp_path / "in_memory_model")
    assert "with Ray Data" not in output and "worker_shards" not in in_memory
    assert metrics["best_val_ndcg@10"] >= in_memory["best_val_ndcg@10"] - 0.08, (metrics, in_memory)
