"""Fixtures shared by unit tests: the order-free models' data (ALS and EASE) and a private redis-server."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from rayrec.data import SyntheticConfig, generate
from rayrec.data.synthetic import synthetic_truth
from rayrec.testing import RedisServer, redis_unavailable
from rayrec.training.prepare import prepare


@pytest.fixture(scope="session")
def order_free_data() -> SyntheticConfig:
    """6 clusters of 50 items; users mostly stay in their home cluster."""
    return SyntheticConfig(num_users=600, num_items=300, num_clusters=6, mean_events_per_user=20, seed=3)


@pytest.fixture(scope="session")
def shuffled(order_free_data):
    """Prepared data with each user's sequence randomly permuted, and each item index's cluster."""
    data = prepare(generate(order_free_data))
    rng = np.random.default_rng(0)
    data = dataclasses.replace(data, sequences=[rng.permutation(s) for s in data.sequences])
    truth = synthetic_truth(order_free_data)
    clusters = np.array([truth.item_cluster_of(item_id) for item_id in data.item_vocab.ids])
    return data, clusters


@pytest.fixture
def check_rayrec_recommend(shuffled, order_free_data, tmp_path):
    """Runs ``rayrec recommend -k 5`` on a model directory for two training users and an
    unknown one, and checks the lists: unseen items of the user's cluster, popular items for
    the stranger."""
    from rayrec.cli import cli
    from rayrec.models.servable import load_model_dir

    def check(model_dir) -> None:
        data, clusters = shuffled
        users = tmp_path / "users.txt"
        users.write_text(f"{data.user_vocab.ids[0]}\n{data.user_vocab.ids[1]}\nnever-seen\n")
        out = tmp_path / "recs.jsonl"
        result = CliRunner().invoke(cli, ["recommend", "--model", str(model_dir), "-k", "5", "--out", str(out),
                                          "--users", str(users)])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["user_id"] for line in lines] == [data.user_vocab.ids[0], data.user_vocab.ids[1], "never-seen"]
        model = load_model_dir(model_dir)
        truth = synthetic_truth(order_free_data)
        for line in lines[:2]:
            assert len(line["items"]) == 5 and not set(line["items"]) & set(model.training_history(line["user_id"]))
            rows = [model.item_ids.index(i) for i in line["items"]]
            assert np.mean(clusters[rows] == truth.user_cluster_of(line["user_id"])) >= 0.8
        popular = np.argsort(-model.item_popularity, kind="stable")[:5]
        assert lines[2]["items"] == [model.item_ids[i] for i in popular]

    return check


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A redis-server of its own per test module (skips where redis-server is not installed)."""
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
