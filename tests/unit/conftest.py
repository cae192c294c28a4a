"""Fixtures shared by the unit tests of the order-free models (ALS and EASE)."""

import dataclasses

import numpy as np
import pytest

from rayrec.data import SyntheticConfig, generate
from rayrec.data.synthetic import synthetic_truth
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
