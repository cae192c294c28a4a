"""What an experiment is: its arms, traffic shares, salt and the events that count as success."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import ComponentSpec

#: At most this many arms: every stage keeps each arm's model loaded next to the live one.
MAX_ARMS = 4
#: Shares must sum to 1 within this (YAML and JSON decimals are not exact).
SHARE_TOLERANCE = 1e-6
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ArmSpec(BaseModel):
    """One arm: a model directory served as a full pipeline, its share of the traffic."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="Shown in answers (`arm`) and the readout.")
    model_dir: str = Field(min_length=1, max_length=4096,
                           description="Absolute path to a model directory inside security.model_roots.")
    share: float = Field(ge=0, le=1, description="Fraction of users assigned to this arm; the arms' shares sum to 1.")
    scorers: list[ComponentSpec] | None = Field(
        None,
        description="This arm's re-rankers, in place of the server's `scorers` (an empty list: none, the "
                    "model's order). Unset: the server's. Lets two arms test re-rankers on one model.")
    scorer_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options of this arm's scorers (its own `scorers`, else the server's) for its requests, "
                    "as a request's scorer_options; a request's own options win.")


class ExperimentSpec(BaseModel):
    """An A/B test between models (``experiment:`` in the serve config, ``POST /admin/experiments``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="The experiment's name, e.g. sasrec-vs-gru.")
    arms: list[ArmSpec] = Field(min_length=2, max_length=MAX_ARMS)
    salt: str = Field("", max_length=256,
                      description="Mixed into the assignment hash: a new salt reshuffles users. Default: the name.")
    control: str | None = Field(None, description="The arm the others are compared with. Default: the first arm.")
    click_events: list[str] = Field(default_factory=lambda: ["click"],
                                    description="Event types that count as a click (CTR, reward).")
    conversion_events: list[str] = Field(default_factory=lambda: ["purchase"],
                                         description="Event types that count as a conversion.")

    def problems(self, event_types: set[str]) -> tuple[str, str] | None:
        """The first (field, message) wrong with this spec beyond its types, else None."""
        seen: dict[str, int] = {}
        for i, arm in enumerate(self.arms):
            if arm.name in seen:
                return f"arms[{i}].name", f"duplicate arm name {arm.name!r} (also arms[{seen[arm.name]}])"
            seen[arm.name] = i
        total = math.fsum(arm.share for arm in self.arms)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            return "arms.share", f"the arms' shares sum to {total:g}; they must sum to 1"
        if self.control is not None and self.control not in seen:
            return "control", f"no arm named {self.control!r}; arms: {', '.join(seen)}"
        for field in ("click_events", "conversion_events"):
            unknown = sorted(set(getattr(self, field)) - event_types)
            if unknown:
                return field, f"unknown event type {unknown[0]!r}; known: {', '.join(sorted(event_types))}"
        return None

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0].name

    @property
    def assignment_salt(self) -> str:
        return self.salt or self.name
