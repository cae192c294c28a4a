"""`rayrec train` on a 2-node Ray cluster (two raylets on this machine, ``ray.cluster_utils.Cluster``):
one Ray Train worker per node, each reading only its own shard of the Parquet users through
Ray Data, and a model as good as a 1-node run of the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from rayrec.data import SyntheticConfig, write_synthetic  # noqa: E402

pytestmark = pytest.mark.integration

CONFIG = SyntheticConfig(num_users=400, num_items=150, num_clusters=5, mean_events_per_user=20, seed=5)
#: 2 CPUs per worker on nodes of 3: the two workers cannot share a node, and each node keeps a
#: CPU for the Ray Data tasks that feed it.
TRAIN_CONFIG = "cpus_per_worker: 2\n"


def train(interactions, out, config, ray_address=None):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    done = subprocess.run([sys.executable, "-m", "rayrec", "train", "--interactions", interactions, "--out", str(out),
                           "--config", str(config), "--no-search", "--epochs", "6", "--num-workers", "2"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_nodes_one_worker_each_read_their_own_shards_and_match_one_node(tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, CONFIG, file_format="parquet", shards=4)
    interactions = f"file://{data / 'interactions'}"
    config = tmp_path / "config.yaml"
    config.write_text(TRAIN_CONFIG)

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    nodes.add_node(num_cpus=3)
    try:
        nodes.wait_for_nodes()
        two_nodes = train(interactions, tmp_path / "two_nodes", config, ray_address=nodes.address)
        # Without RAY_ADDRESS, rayrec starts its own local Ray, even with that cluster running here.
        config.write_text("cpus_per_worker: 1\n")  # both workers on the one local node
        one_node = train(interactions, tmp_path / "one_node", config)
    finally:
        nodes.shutdown()

    shards = two_nodes["worker_shards"]
    assert len({shard["node"] for shard in shards}) == 2  # one worker on each node
    assert all(shard["users"] > 0 for shard in shards)
    assert sum(shard["users"] for shard in shards) == CONFIG.num_users  # disjoint shards, nobody lost
    assert two_nodes["best_val_hr@10"] > 4 * 10 / CONFIG.num_items  # it learnt the clusters

    local_nodes = {shard["node"] for shard in one_node["worker_shards"]}
    assert len(local_nodes) == 1 and not local_nodes & {shard["node"] for shard in shards}
    assert two_nodes["best_val_ndcg@10"] >= one_node["best_val_ndcg@10"] - 0.05, (two_nodes, one_node)
