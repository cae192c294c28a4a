"""`rayrec train` on Parquet shards through Ray Data, on a real local Ray cluster: the workers
read their own shards of the users, the model learns the data's structure, and it is as good
as the in-memory path's on the same data."""

import json
import subprocess
import sys
import time

import pytest

from rayrec.data import SyntheticConfig, write_synthetic

pytestmark = pytest.mark.integration

CONFIG = SyntheticConfig(num_users=400, num_items=150, num_clusters=5, mean_events_per_user=20, seed=11)
TRAIN = ["--no-search", "--epochs", "6", "--num-workers", "2"]


def train(interactions, out, *extra):
    done = subprocess.run([sys.executable, "-m", "rayrec", "train", "--interactions", str(interactions),
                           "--out", str(out), *TRAIN, *extra], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr, json.loads((out / "metrics.json").read_text())


def test_parquet_shards_train_through_ray_data_as_well_as_in_memory(tmp_path):
    parquet, csv = tmp_path / "parquet", tmp_path / "csv"
    write_synthetic(parquet, CONFIG, file_format="parquet", shards=4)
    write_synthetic(csv, CONFIG)
    rows = sum(1 for _ in open(csv / "interactions.csv")) - 1

    started = time.time()
    output, metrics = train(f"file://{parquet / 'interactions'}", tmp_path / "ray_data_model")
    assert "with Ray Data" in output
    # What each worker cost: its own peak memory (at least torch's), and when training began.
    assert len(metrics["worker_peak_rss_mb"]) == 2 and min(metrics["worker_peak_rss_mb"]) > 100
    assert started < metrics["first_step_at"] < time.time()
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

    # The same CSV above the size from which Ray Data reads CSV too.
    big_csv = tmp_path / "big_csv.yaml"
    big_csv.write_text("data: {ray_data_min_delimited_mb: 0}\n")
    output, from_csv = train(csv / "interactions.csv", tmp_path / "csv_ray_data_model", "--config", str(big_csv))
    assert "reading 1 CSV/TSV file(s) with Ray Data" in output
    assert sum(shard["interactions"] for shard in from_csv["worker_shards"]) == rows
    assert from_csv["best_val_ndcg@10"] >= in_memory["best_val_ndcg@10"] - 0.08, (from_csv, in_memory)


def test_the_default_model_search_reads_parquet_through_ray_data(tmp_path):
    """Without --no-search: every candidate trains, the sequential one from its Ray Data
    shard, the order-free ones in their own trials, and the kept model learned the data."""
    sequential = SyntheticConfig(num_users=300, num_items=400, num_clusters=4, mean_events_per_user=60,
                                 sequential_probability=0.9, explore_probability=0.05, seed=3)
    write_synthetic(tmp_path / "parquet", sequential, file_format="parquet", shards=3)
    for metadata in ("items.parquet", "users.parquet"):  # no item text: the plain sequential candidate
        (tmp_path / "parquet" / metadata).unlink()
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 0.005\nepochs: 25\npatience: 5\nmodel: {dim: 32, max_len: 30}\n")
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "rayrec", "train", "--interactions", str(tmp_path / "parquet"),
                           "--out", str(out), "--config", str(config), "--budget", "4"],
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "with Ray Data" in output and "in memory" not in output
    selection = json.loads((out / "selection.json").read_text())
    rows = {row["candidate"]: row for row in selection["candidates"]}
    assert all(rows[name]["status"] == "ok" for name in ("als", "ease", "sasrec")), selection
    assert rows["sasrec"]["details"]["input"] == "ray_data"
    assert selection["selected"].split("+")[0] == "sasrec", selection  # order is the signal here
    assert rows["sasrec"]["val_ndcg@10"] > rows["ease"]["val_ndcg@10"] + 0.1
    model = json.loads((out / "config.json").read_text())
    assert model["num_users"] == sequential.num_users
