"""Early stopping follows the trend of validation NDCG@10, not single epochs."""
from rayrec.training.worker import update_stopping_trend


def stopping_epoch(curve: list[float], patience: int, window: int) -> int | None:
    """The epoch (1-based) after which training would stop, or None if it runs the whole curve."""
    state = {"evaluations_without_gain": 0, "history": []}
    for epoch, score in enumerate(curve, start=1):
        state["history"].append({"val_ndcg@10": score})
        update_stopping_trend(state, window)
        if state["evaluations_without_gain"] >= patience:
            return epoch
    return None


def test_a_lucky_early_epoch_does_not_end_training_while_the_model_still_improves():
    # A spike at epoch 4, then steady learning that passes it only at epoch 21.
    curve = [0.02, 0.03, 0.04, 0.09] + [0.045 + 0.003 * i for i in range(20)]
    assert stopping_epoch(curve, patience=10, window=1) == 14  # the raw rule quits before the real best
    assert stopping_epoch(curve, patience=10, window=5) is None


def test_a_declining_plateau_stops_although_noise_keeps_setting_new_records():
    rising = [0.02 + 0.01 * i for i in range(8)]  # up to 0.09
    plateau = []
    for cycle in range(8):  # overfitting: the level falls, a lucky epoch now and then sets a record
        level = 0.095 - 0.003 * cycle
        plateau += [level, level - 0.002, level + 0.001, level - 0.001, level, level - 0.002, 0.100 + 0.0005 * cycle]
    curve = rising + plateau
    assert stopping_epoch(curve, patience=10, window=1) is None  # a new raw best every 7 epochs
    stopped = stopping_epoch(curve, patience=10, window=5)
    assert stopped is not None and stopped < len(curve) - 20


def test_window_one_is_the_raw_rule():
    curve = [0.1, 0.2, 0.15, 0.15, 0.15]
    assert stopping_epoch(curve, patience=3, window=1) == 5
