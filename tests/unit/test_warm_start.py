"""``rayrec train --init-from``: a model warm-started on data with new items keeps what the
previous model learnt about the old items and learns the new ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rayrec.data import SyntheticConfig, generate
from rayrec.data.synthetic import synthetic_truth
from rayrec.errors import ConfigError
from rayrec.models.trained import TrainedModel
from rayrec.training.config import TrainConfig
from rayrec.training.local import train_prepared_in_process
from rayrec.training.prepare import prepare
from rayrec.training.warm_start import initial_weights, warm_start_config

# 8 clusters of 25 items; users mostly stay in their home cluster and walk it in order.
SYNTHETIC = SyntheticConfig(num_users=400, num_items=200, num_clusters=8, mean_events_per_user=20, seed=3)
NEW_PER_CLUSTER = 2


def quiet(line: str) -> None:
    pass


def config(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, eval_every=epochs, patience=100, learning_rate=3e-3, final_fit_fraction=0.0,
                       model={"dim": 32, "max_len": 50, "user_encoder_options": {"dropout": 0.2}})


def without_items(dataset, item_ids: set[str]):
    events = dataset.interactions
    keep = np.array([item not in item_ids for item in events.item_id])
    columns = {f.name: getattr(events, f.name) for f in dataclasses.fields(events)}
    return dataclasses.replace(dataset, interactions=type(events)(
        **{name: None if column is None else column[keep] for name, column in columns.items()}))


def vectors(model: TrainedModel, ids: list[str]) -> np.ndarray:
    rows = [model.item_vocab.index_of(i) for i in ids]
    table = model.item_embeddings[rows]
    return table / np.linalg.norm(table, axis=1, keepdims=True)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).mean())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The previous model (without the new items), the warm-started one and one from scratch,
    the last two trained for the same few epochs on the data with the new items."""
    root = tmp_path_factory.mktemp("warm-start")
    truth = synthetic_truth(SYNTHETIC)
    new_items = [truth.item_ids[i] for cluster in range(SYNTHETIC.num_clusters)
                 for i in np.flatnonzero(truth.item_cluster == cluster)[:NEW_PER_CLUSTER]]
    dataset = generate(SYNTHETIC)
    previous = train_prepared_in_process(prepare(without_items(dataset, set(new_items))), root / "previous",
                                         config(12), log=quiet)
    grown = prepare(dataset)
    warm_config = warm_start_config(previous, config(3))
    lines: list[str] = []
    start = initial_weights(previous, grown, warm_config, log=lines.append)
    warm = train_prepared_in_process(grown, root / "warm", warm_config, log=quiet, initial_weights=start)
    scratch = train_prepared_in_process(grown, root / "scratch", config(3), log=quiet)
    return {"truth": truth, "new": new_items, "lines": lines, "start": start, "grown": grown,
            **{name: TrainedModel.load(path) for name, path in
               [("previous", previous), ("warm", warm), ("scratch", scratch)]}}


def test_old_items_keep_their_vectors_and_a_model_from_scratch_does_not(models):
    old_ids = models["previous"].item_vocab.ids
    before = vectors(models["previous"], old_ids)
    warm, scratch = mean_cosine(before, vectors(models["warm"], old_ids)), \
        mean_cosine(before, vectors(models["scratch"], old_ids))
    assert warm > 0.8, warm
    assert warm > scratch + 0.5, (warm, scratch)
    assert f"{len(old_ids):,} of {len(models['grown'].item_vocab):,} items keep their trained vectors" \
        in models["lines"][0]


def test_new_items_are_learnt_next_to_their_kind(models):
    truth, warm = models["truth"], models["warm"]
    cluster_of = dict(zip(truth.item_ids, truth.item_cluster))
    old_ids = models["previous"].item_vocab.ids
    old = vectors(warm, old_ids)
    old_clusters = np.array([cluster_of[i] for i in old_ids])
    new = vectors(warm, models["new"])

    def cluster_margin(new_vectors: np.ndarray) -> np.ndarray:
        """Per new item: mean cosine to the old items of its cluster minus to the others."""
        similarity = new_vectors @ old.T  # (new, old)
        return np.array([similarity[r][old_clusters == cluster_of[i]].mean()
                         - similarity[r][old_clusters != cluster_of[i]].mean() for r, i in enumerate(models["new"])])

    # Three epochs place the new items by their cluster, which their fresh rows knew nothing of.
    rows = [models["grown"].item_vocab.index_of(i) + 1 for i in models["new"]]
    start = models["start"]["item_tower.id_embedding.weight"][rows].numpy()
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    margin_learnt, margin_at_start = cluster_margin(new), cluster_margin(start)
    assert abs(margin_at_start.mean()) < 0.04, margin_at_start
    assert margin_learnt.mean() > margin_at_start.mean() + 0.08, (margin_learnt, margin_at_start)
    assert np.mean(margin_learnt > 0) >= 0.8, margin_learnt


def test_only_a_two_tower_model_directory_warm_starts(tmp_path):
    from rayrec.training.als import train_als

    als_dir = tmp_path / "als"
    train_als(prepare(generate(SyntheticConfig(num_users=60, num_items=30, seed=1))), als_dir, seed=0)
    with pytest.raises(ConfigError, match="--init-from .*only a two-tower model directory"):
        warm_start_config(als_dir, TrainConfig())
