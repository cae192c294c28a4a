"""Training with the rayrec-text plugin end to end, and adding unseen items through content.

Synthetic data whose titles and descriptions use cluster-specific words (known answer:
``synthetic_truth``). A tenth of the items is held out of training entirely; after training
with ``item_features: [text_embedding]`` and no id embedding, the held-out items are added
through ``TrainedModel.encode_items`` (the ``PUT /items`` path) and must land among their own
cluster and rank high for the users of that cluster.
"""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pytest

from rayrec.data import SyntheticConfig, generate, synthetic_truth
from rayrec.schema import Dataset

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rayrec_text") is None,
                                reason="needs the rayrec-text plugin: pip install -e plugins/rayrec-text")

DATA = SyntheticConfig(num_users=300, num_items=200, num_clusters=5, mean_events_per_user=20, seed=7)
HELD_OUT = 20


@pytest.fixture
def text_plugin(register_rayrec_plugin):
    """rayrec-text in the plugin manager, whether it came through its entry point or not."""
    import rayrec_text

    register_rayrec_plugin(rayrec_text)  # the fixture takes an installed plugin as it is


def content_only_config(cache_dir, **overrides):
    from rayrec.training.config import TrainConfig

    return TrainConfig(
        item_features=[{"name": "text_embedding", "options": {"cache_dir": str(cache_dir), "progress": False}}],
        model={"item_encoder_options": {"use_id": False}, "dim": 32},
        **overrides,
    )


def test_the_readme_config_snippet_is_a_valid_training_config(tmp_path, text_plugin):
    from rayrec.plugins import create_component
    from rayrec.training.config import load_train_config

    path = tmp_path / "text.yaml"
    path.write_text(textwrap.dedent("""\
        item_features:
          - name: text_embedding
            options:
              fields: [title, text, categories]
              cache_dir: ~/.cache/rayrec-text
        model:
          item_encoder: content_item_tower
          item_encoder_options:
            content_loss_weight: 1.0
            id_dropout: 0.5
    """))
    config = load_train_config(path)
    [spec] = config.item_features
    extractor = create_component("feature_extractor", spec.name, spec.options)
    assert extractor.options.fields == ("title", "text", "categories")
    tower = create_component("encoder", config.model.item_encoder, config.model.item_encoder_options)
    assert (tower.options.content_loss_weight, tower.options.id_dropout) == (1.0, 0.5)


@pytest.mark.slow
def test_items_unseen_in_training_get_vectors_among_their_cluster(tmp_path, text_plugin):
    import torch

    from rayrec.models.trained import TrainedModel
    from rayrec.training.local import train_in_process

    torch.set_num_threads(1)
    dataset = generate(DATA)
    truth = synthetic_truth(DATA)
    held_out = set(np.random.default_rng(0).choice(truth.item_ids, size=HELD_OUT, replace=False).tolist())
    keep = np.flatnonzero([item not in held_out for item in dataset.interactions.item_id])
    warm = Dataset(name="synthetic-warm", interactions=dataset.interactions.take(keep), items=dataset.items,
                   users=dataset.users, report=dataset.report)

    model_dir = train_in_process(warm, tmp_path / "model", content_only_config(tmp_path / "cache", epochs=30),
                                 log=lambda line: None)
    model = TrainedModel.load(model_dir)
    assert held_out.isdisjoint(model.item_ids)
    assert model.config["content_dim"] == 384

    # Content is the only input, so the upsert path reproduces a trained item's vector exactly.
    records = {record["item_id"]: record for record in dataset.items.records()}
    trained_again = model.encode_items([records[item] for item in model.item_ids[:10]])
    np.testing.assert_allclose(trained_again, model.item_embeddings[:10], rtol=1e-4, atol=1e-5)

    new_records = [records[item] for item in sorted(held_out)]
    new_vectors = model.encode_items(new_records)
    assert new_vectors.shape == (HELD_OUT, model.item_embeddings.shape[1])
    new_clusters = np.array([truth.item_cluster_of(r["item_id"]) for r in new_records])
    trained_clusters = np.array([truth.item_cluster_of(item) for item in model.item_ids])

    # Nearest trained items (by the model's own item vectors) share the new item's cluster;
    # chance is 1 in 5.
    neighbours = np.argsort(-(new_vectors @ model.item_embeddings.T), axis=1)[:, :5]
    same_cluster = (trained_clusters[neighbours] == new_clusters[:, None]).mean()
    assert same_cluster >= 0.8, f"only {same_cluster:.0%} of the new items' neighbours share their cluster"

    # Among the whole catalogue (trained + new), a new item ranks far higher for users of its
    # cluster than for everyone else.
    user_clusters = np.array([truth.user_cluster_of(user) for user in model.user_vocab.ids])
    user_vectors, _ = model.encode_histories([model.training_history_indices(u) for u in range(len(user_clusters))])
    catalogue = np.vstack([model.item_embeddings, new_vectors])
    scores = user_vectors @ catalogue.T  # (U, 200)
    new_scores = scores[:, len(model.item_ids):]  # (U, HELD_OUT)
    ranks = (scores[:, None, :] > new_scores[:, :, None]).sum(axis=2)  # rank of each new item per user
    home = user_clusters[:, None] == new_clusters[None, :]
    home_rank, other_rank = np.median(ranks[home]), np.median(ranks[~home])
    # A cluster holds 40 of the 200 items: "home" ranks should sit inside the user's cluster.
    assert home_rank < 40 and other_rank > 2 * home_rank, (home_rank, other_rank)
