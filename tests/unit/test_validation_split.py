"""The validation split every candidate model of ``rayrec train`` is chosen on."""

import numpy as np

from rayrec.training.worker import hold_out_last


def sequences(lengths):
    return [np.arange(1, n + 1) for n in lengths]


def test_every_user_with_two_items_holds_out_the_last():
    train, targets = hold_out_last(sequences([1, 2, 5]))
    assert targets.tolist() == [0, 2, 5]
    assert [t.tolist() for t in train] == [[1], [1], [1, 2, 3, 4]]


def test_a_large_population_validates_a_fixed_sample_and_trains_on_the_rest_whole():
    data = sequences([4] * 50)
    train, targets = hold_out_last(data, max_users=10)
    validated = np.flatnonzero(targets > 0)
    assert len(validated) == 10
    assert np.array_equal(hold_out_last(data, max_users=10)[1], targets)  # the same users every time
    assert all(len(train[u]) == 3 for u in validated)
    assert all(len(train[u]) == 4 for u in set(range(50)) - set(validated.tolist()))
