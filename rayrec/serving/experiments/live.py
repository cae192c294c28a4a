"""An experiment while it is served: its stored record, which arm answers a request, the readout.

The record (a JSON dict in the state store) is what every ingress replica reads::

    {"name", "status": "running" | "stopped" | "promoted", "spec": ExperimentSpec as a dict,
     "arms": {arm: {"generation", "model_dir", "model_files_mb", "added_resident_mb", "replicas",
                    "shares_live_model"}},
     "started_at", "ended_at", "promoted_arm"}
"""

from __future__ import annotations

import time
from typing import Any

from rayrec.serving.experiments.assignment import assign_arm
from rayrec.serving.experiments.readout import readout, tally
from rayrec.components import ComponentSpec
from rayrec.serving.experiments.spec import ArmSpec, ExperimentSpec
from rayrec.serving.stages.errors import RequestError
from rayrec.state.base import BaseStateStore

RUNNING = "running"
#: How long an ingress replica trusts its copy of the running experiment: a start, stop or
#: promote made through another replica reaches this one within it.
RECORD_TTL_S = 1.0


def new_record(spec: ExperimentSpec, arms: dict[str, dict[str, Any]],
               live_model_dir: str | None = None) -> dict[str, Any]:
    """``live_model_dir``: the model served outside the experiment when it started."""
    return {"name": spec.name, "status": RUNNING, "spec": spec.model_dump(), "arms": arms,
            "started_at": time.time(), "ended_at": None, "promoted_arm": None, "live_model_dir": live_model_dir}


def promoted_model_dir(record: dict[str, Any] | None, configured_model_dir: str) -> str | None:
    """The promoted arm's model directory where a restart with ``configured_model_dir`` should
    serve it instead: the experiment was promoted and the configured model is one it already
    knew (the config it started with). A model directory it never saw is a new choice: None."""
    if record is None or record["status"] != "promoted":
        return None
    known = {arm["model_dir"] for arm in record["arms"].values()} | {record.get("live_model_dir")}
    if configured_model_dir not in known:
        return None
    return record["arms"][record["promoted_arm"]]["model_dir"]


def running_experiment(store: BaseStateStore) -> dict[str, Any] | None:
    return next((record for record in reversed(store.experiments()) if record["status"] == RUNNING), None)


class RunningExperiment:
    """An ingress replica's cached view of the running experiment (re-read every RECORD_TTL_S)."""

    def __init__(self, store: BaseStateStore) -> None:
        self.store = store
        self._record: dict[str, Any] | None = None
        self._read_at = float("-inf")

    def get(self) -> dict[str, Any] | None:
        if time.monotonic() - self._read_at > RECORD_TTL_S:
            self._record = running_experiment(self.store)
            self._read_at = time.monotonic()
        return self._record

    def forget(self) -> None:
        """Re-read on the next request (this replica just changed it)."""
        self._read_at = float("-inf")


def choose_arm(record: dict[str, Any], user_id: str | None, session_id: str | None,
               forced: str | None) -> str | None:
    """The arm that answers: ``forced`` (checked), else the user's (or session's) hashed arm;
    None for a request with neither id (it is served by the live model, outside the test)."""
    spec = ExperimentSpec(**record["spec"])
    if forced is not None:
        if forced not in record["arms"]:
            raise RequestError("arm", f"experiment {spec.name!r} has no arm {forced!r}; arms: "
                                      f"{', '.join(record['arms'])}")
        return forced
    unit = user_id or session_id
    if unit is None:
        return None
    return assign_arm(unit, spec.assignment_salt, [(arm.name, arm.share) for arm in spec.arms])


def _arm(record: dict[str, Any], arm: str) -> ArmSpec:
    return next(a for a in ExperimentSpec(**record["spec"]).arms if a.name == arm)


def arm_scorers(record: dict[str, Any] | None, arm: str | None) -> list[ComponentSpec] | None:
    """The arm's own re-rankers, or None where the server's answer (no such arm, none of its own)."""
    if record is None or arm is None or arm not in record["arms"]:
        return None
    return _arm(record, arm).scorers


def arm_scorer_options(record: dict[str, Any], arm: str, request_options: dict[str, dict[str, Any]]):
    """The arm's scorer options, with the request's own options on top."""
    options = {name: dict(values) for name, values in _arm(record, arm).scorer_options.items()}
    for name, values in request_options.items():
        options.setdefault(name, {}).update(values)
    return options


def report(store: BaseStateStore, record: dict[str, Any]) -> dict[str, Any]:
    """``GET /experiments/{name}``: the record's summary and the readout table's rows."""
    spec = ExperimentSpec(**record["spec"])
    outcomes = tally(store.impression_counts(spec.name), store.attributed_events(spec.name),
                     spec.click_events, spec.conversion_events)
    return {
        "name": spec.name,
        "status": record["status"],
        "control": spec.control_arm,
        "promoted_arm": record.get("promoted_arm"),
        "click_events": spec.click_events,
        "conversion_events": spec.conversion_events,
        "arms": [{"name": arm.name, "share": arm.share, **record["arms"][arm.name]} for arm in spec.arms],
        "readout": readout(outcomes, [arm.name for arm in spec.arms], spec.control_arm),
    }
