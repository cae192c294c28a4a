"""The readout of an experiment: per arm, what users did with what they were shown.

The unit of analysis is the impression (one answer of ``/recommend``):

* **CTR**: the share of impressions with at least one click event on an item they showed;
* **conversion**: the share with at least one conversion event (``conversion_events``);
* **reward**: position-weighted, as in DCG: an impression earns ``1 / log2(position + 2)`` for
  each shown position (0 = first) that got a click or a conversion, so a hit at the top is
  worth 1 and one at position 9 about 0.29.

Intervals are 95% and come from statsmodels: Wilson intervals for the proportions, Newcomb's
hybrid score interval (and the score test) for a difference of proportions, Welch's t interval
for the mean reward and its difference. A difference is "arm minus control".
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rayrec.state.base import AttributedEvent

ALPHA = 0.05


def position_weight(position: int) -> float:
    """The reward of a hit at ``position`` (0-based): DCG's discount."""
    return 1.0 / math.log2(position + 2)


@dataclass
class ArmOutcomes:
    """What the impressions of one arm led to."""

    impressions: int = 0
    clicked: int = 0  # impressions with at least one click
    converted: int = 0  # impressions with at least one conversion
    #: reward -> number of impressions that earned it (impressions with no hit: reward 0, not listed)
    rewards: dict[float, int] = field(default_factory=dict)

    def reward_values(self) -> tuple[list[float], list[int]]:
        """Distinct rewards and how many impressions had each, the zeros included."""
        values, counts = list(self.rewards), list(self.rewards.values())
        zeros = self.impressions - sum(counts)
        if zeros > 0:
            values.append(0.0)
            counts.append(zeros)
        return values, counts


def tally(impressions: Mapping[str, int], events: Iterable[AttributedEvent], click_events: Iterable[str],
          conversion_events: Iterable[str]) -> dict[str, ArmOutcomes]:
    """Outcomes per arm from the impression counts and the attributed events."""
    clicks, conversions = set(click_events), set(conversion_events)
    hits: dict[str, dict[str, tuple[set[int], bool, bool]]] = {}  # arm -> impression -> (positions, click, conv)
    for event in events:
        is_click, is_conversion = event.event_type in clicks, event.event_type in conversions
        if not (is_click or is_conversion):
            continue
        positions, clicked, converted = hits.setdefault(event.arm, {}).get(event.impression_id, (set(), False, False))
        positions.add(event.position)
        hits[event.arm][event.impression_id] = (positions, clicked or is_click, converted or is_conversion)
    outcomes = {arm: ArmOutcomes(impressions=int(count)) for arm, count in impressions.items()}
    for arm, by_impression in hits.items():
        result = outcomes.setdefault(arm, ArmOutcomes())
        for positions, clicked, converted in by_impression.values():
            result.clicked += clicked
            result.converted += converted
            reward = round(sum(position_weight(p) for p in positions), 12)
            result.rewards[reward] = result.rewards.get(reward, 0) + 1
    return outcomes


@contextlib.contextmanager
def _quiet():
    """statsmodels warns on degenerate inputs (no clicks in either arm); those answer None instead."""
    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def proportion(count: int, nobs: int) -> dict[str, Any]:
    from statsmodels.stats.proportion import proportion_confint

    if nobs == 0:
        return {"value": None, "ci": [None, None]}
    low, high = proportion_confint(count, nobs, alpha=ALPHA, method="wilson")
    return {"value": count / nobs, "ci": [_number(low), _number(high)]}


def proportion_difference(count: int, nobs: int, control_count: int, control_nobs: int) -> dict[str, Any]:
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    if nobs == 0 or control_nobs == 0:
        return {"diff": None, "ci": [None, None], "p_value": None}
    low, high = confint_proportions_2indep(count, nobs, control_count, control_nobs, method="newcomb",
                                           compare="diff", alpha=ALPHA)
    test = test_proportions_2indep(count, nobs, control_count, control_nobs, method="score", compare="diff")
    return {"diff": count / nobs - control_count / control_nobs, "ci": [_number(low), _number(high)],
            "p_value": _number(test.pvalue)}


def _described(outcome: ArmOutcomes):
    from statsmodels.stats.weightstats import DescrStatsW

    values, counts = outcome.reward_values()
    return DescrStatsW(values, weights=counts)


def mean_reward(outcome: ArmOutcomes) -> dict[str, Any]:
    if outcome.impressions == 0:
        return {"value": None, "ci": [None, None]}
    stats = _described(outcome)
    if outcome.impressions < 2:
        return {"value": float(stats.mean), "ci": [None, None]}
    low, high = stats.tconfint_mean(alpha=ALPHA)
    return {"value": float(stats.mean), "ci": [_number(low), _number(high)]}


def reward_difference(outcome: ArmOutcomes, control: ArmOutcomes) -> dict[str, Any]:
    from statsmodels.stats.weightstats import CompareMeans

    if outcome.impressions < 2 or control.impressions < 2:
        return {"diff": None, "ci": [None, None], "p_value": None}
    arm, base = _described(outcome), _described(control)
    diff = float(arm.mean - base.mean)
    if arm.std == 0 and base.std == 0:  # no spread at all: the t interval is undefined
        return {"diff": diff, "ci": [diff, diff] if diff else [None, None], "p_value": None}
    compare = CompareMeans(arm, base)
    low, high = compare.tconfint_diff(alpha=ALPHA, usevar="unequal")
    _, p_value, _ = compare.ttest_ind(usevar="unequal")
    return {"diff": diff, "ci": [_number(low), _number(high)], "p_value": _number(p_value)}


def readout(outcomes: Mapping[str, ArmOutcomes], arm_order: list[str], control: str) -> list[dict[str, Any]]:
    """One row per arm (in ``arm_order``): impressions, CTR, conversion and reward with their 95%
    intervals; arms other than the control also carry ``vs_control``, each metric's difference."""
    with _quiet():
        return _rows(outcomes, arm_order, control)


def _rows(outcomes: Mapping[str, ArmOutcomes], arm_order: list[str], control: str) -> list[dict[str, Any]]:
    base = outcomes.get(control, ArmOutcomes())
    rows = []
    for name in arm_order:
        outcome = outcomes.get(name, ArmOutcomes())
        row: dict[str, Any] = {
            "arm": name,
            "control": name == control,
            "impressions": outcome.impressions,
            "clicks": outcome.clicked,
            "conversions": outcome.converted,
            "ctr": proportion(outcome.clicked, outcome.impressions),
            "conversion": proportion(outcome.converted, outcome.impressions),
            "reward": mean_reward(outcome),
        }
        if name != control:
            row["vs_control"] = {
                "ctr": proportion_difference(outcome.clicked, outcome.impressions, base.clicked, base.impressions),
                "conversion": proportion_difference(outcome.converted, outcome.impressions, base.converted,
                                                    base.impressions),
                "reward": reward_difference(outcome, base),
            }
        rows.append(row)
    return rows


def _interval(metric: Mapping[str, Any], key: str = "value", scale: float = 1.0, digits: int = 2) -> str:
    value, (low, high) = metric.get(key), metric["ci"]
    if value is None:
        return "-"
    text = f"{value * scale:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


def format_table(rows: list[dict[str, Any]]) -> str:
    """The readout as a plain-text table (what ``rayrec experiments report`` prints)."""
    header = ["arm", "impressions", "CTR %", "conversion %", "reward", "CTR diff pp", "reward diff"]
    lines = [header]
    for row in rows:
        vs = row.get("vs_control")
        lines.append([
            row["arm"] + (" (control)" if row["control"] else ""),
            str(row["impressions"]),
            _interval(row["ctr"], scale=100),
            _interval(row["conversion"], scale=100),
            _interval(row["reward"], digits=4),
            _interval(vs["ctr"], "diff", scale=100) if vs else "",
            _interval(vs["reward"], "diff", digits=4) if vs else "",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def write_chart(rows: list[dict[str, Any]], path: str, title: str) -> bool:
    """A PNG of each arm's CTR and reward with their intervals; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [row["arm"] for row in rows]
    for axis, metric, label in ((axes[0], "ctr", "CTR"), (axes[1], "reward", "position-weighted reward")):
        values = [row[metric]["value"] or 0.0 for row in rows]
        errors = [[max(0.0, v - (row[metric]["ci"][0] if row[metric]["ci"][0] is not None else v)) for v, row in
                   zip(values, rows)],
                  [max(0.0, (row[metric]["ci"][1] if row[metric]["ci"][1] is not None else v) - v) for v, row in
                   zip(values, rows)]]
        axis.bar(names, values, yerr=errors, capsize=6, color=["#888888" if row["control"] else "#3b7dd8"
                                                              for row in rows])
        axis.set_title(f"{label} (95% CI)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
