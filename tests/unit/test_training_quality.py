"""Tiny models trained in-process on synthetic data with known structure really learn it."""

import json

import numpy as np
import pytest

from rayrec.data import SyntheticConfig, generate
from rayrec.models.trained import TrainedModel
from rayrec.training.config import TrainConfig
from rayrec.training.evaluate import evaluate_leave_one_out
from rayrec.training.local import train_in_process
from rayrec.training.prepare import prepare

# 8 clusters of 25 items; users mostly stay in their home cluster and walk it in order.
SMALL = SyntheticConfig(num_users=400, num_items=200, num_clusters=8, mean_events_per_user=20, seed=3)


def quiet(line: str) -> None:
    pass


def few_epochs(**fields) -> TrainConfig:
    """A config for a few-epoch run: the learning rate, history length and SASRec dropout that
    these tests were sized for (the defaults now suit long, early-stopped runs)."""
    model = {"max_len": 50, **fields.pop("model", {})}
    if model.get("user_encoder", "sasrec") == "sasrec":
        model["user_encoder_options"] = {"dropout": 0.2, **model.get("user_encoder_options", {})}
    return TrainConfig(learning_rate=3e-3, model=model, **fields)


@pytest.fixture(scope="module")
def small_data():
    return prepare(generate(SMALL))


@pytest.mark.parametrize("encoder,epochs", [("sasrec", 16), ("gru", 16), ("mean", 16)])
def test_each_user_tower_beats_popularity_by_far(small_data, encoder, epochs):
    config = few_epochs(epochs=epochs, eval_every=4, model={"user_encoder": encoder, "dim": 32})
    results = evaluate_leave_one_out(small_data, config, in_process=True, log=quiet)
    model_ndcg = results[f"rayrec ({encoder})"]["NDCG@10"]
    popularity_ndcg = results["popularity"]["NDCG@10"]
    assert model_ndcg > 3 * popularity_ndcg
    assert model_ndcg > 0.2


def test_model_directory_round_trip_and_recommendations_exclude_history(tmp_path):
    dataset = generate(SMALL)
    out = train_in_process(dataset, tmp_path / "model", TrainConfig(epochs=4, eval_every=2), log=quiet)
    for name in ("config.json", "weights.pt", "item_embeddings.npy", "metrics.json", "training_curve.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]  # a checkpoint every epoch
    assert [h["epoch"] for h in metrics["history"] if h["val_ndcg@10"] is not None] == [2, 4]

    model = TrainedModel.load(out)
    assert len(model.item_ids) == len(set(dataset.interactions.item_id))
    items, scores = model.recommend_indices([0, 1, 2], k=10)
    for row, user in enumerate([0, 1, 2]):
        assert not set(items[row]) & set(model.training_history_indices(user).tolist())
        assert np.all(np.diff(scores[row]) <= 1e-6)  # best first


def test_home_cluster_items_dominate_recommendations(tmp_path):
    from rayrec.data import synthetic_truth

    dataset = generate(SMALL)
    out = train_in_process(dataset, tmp_path / "model", few_epochs(epochs=12, eval_every=4), log=quiet)
    model = TrainedModel.load(out)
    truth = synthetic_truth(SMALL)
    users = list(range(50))
    items, _ = model.recommend_indices(users, k=5)
    same_cluster = []
    for row, user_index in enumerate(users):
        user_cluster = truth.user_cluster[int(model.user_vocab.ids[user_index].removeprefix("u"))]
        clusters = [truth.item_cluster[int(model.item_ids[i].removeprefix("i"))] for i in items[row]]
        same_cluster.append(np.mean([c == user_cluster for c in clusters]))
    # 8 clusters: chance is 1/8.
    assert np.mean(same_cluster) > 0.6


def test_user_features_reach_the_user_tower_when_enabled(tmp_path):
    from rayrec.schema import Users

    dataset = generate(SMALL)
    user_ids = sorted(set(dataset.interactions.user_id))
    dataset.users = Users(user_id=user_ids, features={"plan": ["free" if i % 2 else "paid" for i in range(len(user_ids))]})
    config = TrainConfig(epochs=2, eval_every=2, model={"use_user_features": True, "dim": 16})
    model = TrainedModel.load(train_in_process(dataset, tmp_path / "model", config, log=quiet))
    assert model.user_features is not None and model.user_features.shape == (len(model.user_vocab), 1)
    free = next(i for i, u in enumerate(model.user_vocab.ids) if dataset.users.features["plan"][user_ids.index(u)] == "free")
    paid = next(i for i, u in enumerate(model.user_vocab.ids) if dataset.users.features["plan"][user_ids.index(u)] == "paid")
    history = [model.training_history_indices(free)]
    as_free, _ = model.encode_histories(history, [free])
    as_paid, _ = model.encode_histories(history, [paid])
    assert not np.allclose(as_free, as_paid)  # same history, different features, different vector
