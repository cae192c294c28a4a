"""The validation split every candidate model of ``rayrec train`` is chosen on."""

import numpy as np

from rayrec.training.prepare import validation_split


def sequences(lengths):
    return [np.arange(1, n + 1) for n in lengths]


def test_every_user_with_two_items_holds_out_the_last():
    train, targets = validation_split(sequences([1, 2, 5]))
    assert targets.tolist() == [0, 2, 5]
    assert [t.tolist() for t in train] == [[1], [1], [1, 2, 3, 4]]


def test_a_large_population_validates_a_fixed_sample_and_trains_on_the_rest_whole():
    data = sequences([4] * 50)
    train, targets = validation_split(data, max_users=10)
    validated = np.flatnonzero(targets > 0)
    assert len(validated) == 10
    assert np.array_equal(validation_split(data, max_users=10)[1], targets)  # the same users every time
    assert all(len(train[u]) == 3 for u in validated)
    assert all(len(train[u]) == 4 for u in set(range(50)) - set(validated.tolist()))


def test_the_zero_based_form_is_the_same_split_shifted():
    data = sequences([1, 2, 5] + [3] * 20)
    train1, targets1 = validation_split(data, max_users=10)
    train0, targets0 = validation_split(data, zero_based=True, max_users=10)
    assert np.array_equal(targets0, targets1 - 1) and targets0.min() == -1
    assert all(np.array_equal(a, b - 1) for a, b in zip(train0, train1))
