"""Unset ``batch_size``: the users per batch follow how long the histories are."""

import json

from rayrec.data import SyntheticConfig, generate
from rayrec.training.batches import AUTO_BATCH_POSITIONS, AUTO_BATCH_USERS, auto_batch_size
from rayrec.training.config import TrainConfig
from rayrec.training.local import train_in_process


def test_long_histories_make_batches_of_fewer_users_and_short_ones_keep_128():
    assert auto_batch_size(95) == 32  # MovieLens: ~95 next-item positions per user
    assert auto_batch_size(8) == AUTO_BATCH_USERS.stop - 1 == 128  # short histories, as before
    assert auto_batch_size(2000) == AUTO_BATCH_USERS.start  # never a batch of one or two users
    for mean in (30, 60, 150):
        assert abs(auto_batch_size(mean) * mean - AUTO_BATCH_POSITIONS) <= mean


def _train(tmp_path, name, config, events_per_user):
    lines = []
    dataset = generate(SyntheticConfig(num_users=60, num_items=80, num_clusters=4, seed=5,
                                       mean_events_per_user=events_per_user, min_events_per_user=events_per_user))
    out = train_in_process(dataset, tmp_path / name, config, log=lines.append)
    return json.loads((out / "metrics.json").read_text()), lines


def test_training_records_the_batch_size_it_chose_and_a_set_one_wins(tmp_path):
    metrics, lines = _train(tmp_path, "auto", TrainConfig(epochs=1, model={"dim": 16}), 150)
    chosen = metrics["batch_size"]
    assert AUTO_BATCH_USERS.start < chosen < 60  # histories of ~150 events: a few dozen users a batch
    assert any(line.startswith(f"batches of {chosen} users") for line in lines)
    metrics, lines = _train(tmp_path, "set", TrainConfig(epochs=1, batch_size=50, model={"dim": 16}), 151)
    assert metrics["batch_size"] == 50
    assert not any(line.startswith("batches of") for line in lines)
