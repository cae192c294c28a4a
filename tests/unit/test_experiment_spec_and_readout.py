"""Experiments without Ray: the spec's checks, sticky assignment, attribution and the readout maths."""

from __future__ import annotations

import math

import pytest

from rayrec.components import FeedbackEvent
from rayrec.serving.experiments.assignment import assign_arm
from rayrec.serving.experiments.readout import ArmOutcomes, format_table, readout, tally
from rayrec.serving.experiments.spec import ExperimentSpec
from rayrec.serving.stages.errors import RequestError
from rayrec.serving.stages.feedback import FeedbackLogic
from rayrec.serving.stages.generations import ModelSlots
from rayrec.state import open_state_store
from rayrec.state.base import AttributedEvent, Impression

EVENT_TYPES = {"click", "purchase", "view"}


def spec(**changes):
    values = {"name": "ab", "arms": [{"name": "A", "model_dir": "/m/a", "share": 0.5},
                                     {"name": "B", "model_dir": "/m/b", "share": 0.5}]}
    values.update(changes)
    return ExperimentSpec(**values)


def test_a_50_50_split_is_sticky_and_within_5_percent_over_2000_users():
    arms = [("A", 0.5), ("B", 0.5)]
    first = {f"user-{i}": assign_arm(f"user-{i}", "salt-1", arms) for i in range(2000)}
    share_a = sum(arm == "A" for arm in first.values()) / len(first)
    assert abs(share_a - 0.5) <= 0.05
    assert all(assign_arm(user, "salt-1", arms) == arm for user, arm in first.items())  # same user, same arm
    reshuffled = {user: assign_arm(user, "salt-2", arms) for user in first}
    assert 0.3 < sum(first[u] != reshuffled[u] for u in first) / len(first) < 0.7  # a new salt reshuffles


def test_shares_other_than_half_are_honoured_and_a_zero_share_arm_gets_nobody():
    arms = [("A", 0.8), ("B", 0.2), ("C", 0.0)]
    assigned = [assign_arm(f"u{i}", "s", arms) for i in range(4000)]
    assert abs(assigned.count("B") / len(assigned) - 0.2) <= 0.03
    assert "C" not in assigned


@pytest.mark.parametrize("changes, field", [
    ({"arms": [{"name": "A", "model_dir": "/m/a", "share": 0.5}, {"name": "B", "model_dir": "/m/b", "share": 0.4}]},
     "arms.share"),
    ({"arms": [{"name": "A", "model_dir": "/m/a", "share": 0.5}, {"name": "A", "model_dir": "/m/b", "share": 0.5}]},
     "arms[1].name"),
    ({"control": "Z"}, "control"),
    ({"conversion_events": ["checkout"]}, "conversion_events"),
])
def test_a_bad_spec_names_the_field(changes, field):
    problem = spec(**changes).problems(EVENT_TYPES)
    assert problem is not None and problem[0] == field


def test_a_good_spec_has_no_problem_and_defaults_control_and_salt():
    good = spec()
    assert good.problems(EVENT_TYPES) is None
    assert (good.control_arm, good.assignment_salt) == ("A", "ab")


def test_wilson_and_newcomb_intervals_match_known_values():
    outcomes = {"A": ArmOutcomes(impressions=1000, clicked=100), "B": ArmOutcomes(impressions=1000, clicked=130)}
    rows = readout(outcomes, ["A", "B"], control="A")
    low, high = rows[0]["ctr"]["ci"]
    # Wilson score interval for 100/1000: 0.1015 -/+ 0.0186
    assert rows[0]["ctr"]["value"] == 0.1
    assert low == pytest.approx(0.08291, abs=1e-4) and high == pytest.approx(0.12015, abs=1e-4)
    diff = rows[1]["vs_control"]["ctr"]
    assert diff["diff"] == pytest.approx(0.03)
    # Newcomb's hybrid score interval (method 10): from the two Wilson intervals
    l1, u1 = rows[1]["ctr"]["ci"]
    expected_low = 0.03 - math.sqrt((0.13 - l1) ** 2 + (high - 0.10) ** 2)
    expected_high = 0.03 + math.sqrt((u1 - 0.13) ** 2 + (0.10 - low) ** 2)
    assert diff["ci"] == pytest.approx([expected_low, expected_high], abs=1e-9)
    assert diff["ci"][0] > 0 and diff["p_value"] < 0.05
    assert "vs_control" not in rows[0]


def test_reward_is_position_weighted_with_a_t_interval():
    impressions = {"A": 4}
    events = [AttributedEvent("e1", "i1", "ab", "A", "x", "click", 0),
              AttributedEvent("e2", "i2", "ab", "A", "y", "click", 2),
              AttributedEvent("e3", "i2", "ab", "A", "y", "purchase", 2),  # same position: counted once
              AttributedEvent("e4", "i3", "ab", "A", "z", "view", 0)]  # neither click nor conversion
    outcome = tally(impressions, events, ["click"], ["purchase"])["A"]
    assert (outcome.impressions, outcome.clicked, outcome.converted) == (4, 2, 1)
    row = readout({"A": outcome}, ["A"], control="A")[0]
    # rewards 1, 1/log2(4) = 0.5, 0, 0: mean 0.375, s = 0.478714, t(3) = 3.182446
    assert row["reward"]["value"] == pytest.approx(0.375)
    half = 3.182446 * 0.478714 / 2
    assert row["reward"]["ci"] == pytest.approx([0.375 - half, 0.375 + half], abs=1e-5)
    assert "A (control)" in format_table([row])


def test_feedback_with_an_impression_id_is_attributed_to_the_arm_and_position(tmp_path):
    store = open_state_store(f"sqlite:///{tmp_path}/state.db")
    store.record_impression(Impression("imp-1", "ab", "B", ["i9", "i4", "i7"]))
    logic = FeedbackLogic(store, {"click": 1.0, "purchase": 3.0})
    result = logic.ingest([
        FeedbackEvent(user_id="u", item_id="i7", event_type="click", impression_id="imp-1", event_id="e1"),
        FeedbackEvent(user_id="u", item_id="i1", event_type="click", impression_id="imp-1"),  # not shown
    ])
    assert (result["stored"], result["attributed"]) == (2, 1)
    again = logic.ingest([FeedbackEvent(user_id="u", item_id="i7", event_type="click", impression_id="imp-1",
                                        event_id="e1")])
    assert (again["duplicates"], again["attributed"]) == (1, 0)
    assert "attributed" not in logic.ingest([FeedbackEvent(user_id="u", item_id="i2")])  # no impression named
    [event] = store.attributed_events("ab")
    assert (event.arm, event.item_id, event.position) == ("B", "i7", 2)
    with pytest.raises(RequestError) as refused:
        logic.ingest([FeedbackEvent(user_id="u", item_id="i7", impression_id="never-served")])
    assert refused.value.field == "events[0].impression_id"
    assert store.event_count() == 3  # the refused batch stored nothing


def test_model_slots_keep_the_live_model_and_the_arms_loaded(tmp_path):
    store = open_state_store(f"sqlite:///{tmp_path}/state.db")
    live = store.ensure_model("/m/live").generation
    arms = []
    for name in ("a", "b"):
        generation = store.stage_model(f"/m/{name}")
        store.set_model_status(generation, "arm")
        arms.append(generation)
    slots = ModelSlots(store, build=lambda record: record.model_dir, keep=2)
    for generation in (live, *arms):
        slots.get(generation)
    assert slots.loaded() == [live, *arms]  # none evicted, though keep is 2
    for generation in arms:
        store.set_model_status(generation, "retired")
    newer = store.stage_model("/m/c")
    slots.get(newer)
    assert slots.loaded() == [live, newer]  # retired arms go when room is needed


def test_an_experiment_in_the_serve_config_is_recorded_once_with_its_arms(tmp_path):
    from rayrec.models.toy import write_toy_model
    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs

    model_a = write_toy_model(tmp_path / "a", num_items=20, dim=8)
    model_b = write_toy_model(tmp_path / "b", num_items=20, dim=8, seed=3)
    state = f"sqlite:///{tmp_path}/state.db"
    config = {"model_dir": str(model_a), "state": state, "experiment": {
        "name": "cfg", "arms": [{"name": "A", "model_dir": str(model_a), "share": 0.5},
                                {"name": "B", "model_dir": str(model_b), "share": 0.5}]}}
    build_app(AppArgs(**config))
    build_app(AppArgs(**config))  # a restart keeps the record (and its data), it does not add one
    store = open_state_store(state)
    [record] = store.experiments()
    assert record["status"] == "running"
    assert record["arms"]["A"]["shares_live_model"] and record["arms"]["A"]["generation"] == \
        store.model_generation().generation
    assert store.model_generation(record["arms"]["B"]["generation"]).status == "arm"


def test_a_restart_with_the_same_config_keeps_a_promoted_arm_and_a_new_model_dir_wins(tmp_path):
    from rayrec.models.toy import write_toy_model
    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs

    model_a, model_b, model_c = (write_toy_model(tmp_path / name, num_items=20, dim=8, seed=seed)
                                 for name, seed in (("a", 1), ("b", 2), ("c", 3)))
    state = f"sqlite:///{tmp_path}/state.db"
    config = {"model_dir": str(model_a), "state": state, "experiment": {
        "name": "cfg", "arms": [{"name": "A", "model_dir": str(model_a), "share": 0.5},
                                {"name": "B", "model_dir": str(model_b), "share": 0.5}]}}
    build_app(AppArgs(**config))
    store = open_state_store(state)
    [record] = store.experiments()
    # What POST /admin/experiments/cfg/promote records: B live, the experiment promoted.
    store.activate_model(record["arms"]["B"]["generation"])
    store.save_experiment({**record, "status": "promoted", "promoted_arm": "B"})

    build_app(AppArgs(**config))  # e.g. the process restarted with the config it started with
    assert store.model_generation().model_dir == str(model_b)
    build_app(AppArgs(**{**config, "model_dir": str(model_c)}))  # a model the experiment never saw
    assert store.model_generation().model_dir == str(model_c)
    store.close()


@pytest.mark.parametrize("arms, message", [
    ([("A", "a", 0.5), ("B", "missing", 0.5)], "experiment.arms[1].model_dir"),
    ([("A", "a", 0.5), ("B", "a", 0.6)], "experiment.arms.share"),
])
def test_a_bad_experiment_in_the_serve_config_fails_in_one_line_naming_the_field(tmp_path, arms, message):
    from rayrec.errors import ConfigError
    from rayrec.models.toy import write_toy_model
    from rayrec.serving.app import resolve_args
    from rayrec.serving.config import AppArgs

    write_toy_model(tmp_path / "a", num_items=20, dim=8)
    args = AppArgs(model_dir=str(tmp_path / "a"), state=f"sqlite:///{tmp_path}/state.db", experiment={
        "name": "bad", "arms": [{"name": n, "model_dir": str(tmp_path / d), "share": s} for n, d, s in arms]})
    with pytest.raises(ConfigError) as error:
        resolve_args(args)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
