"""``rayrec experiments replay``: a log played against two model directories through the serving code."""

from __future__ import annotations

import csv

import numpy as np
from click.testing import CliRunner

from rayrec.cli import cli
from rayrec.models.toy import write_toy_model
from rayrec.serving.experiments.assignment import assign_arm


def write_log(path, users: int = 40, per_user: int = 4):
    """A time-ordered log: each user's events are on items of the user's own toy category."""
    rng = np.random.default_rng(0)
    rows, t = [], 1_000_000
    for u in range(users):
        for _ in range(per_user):
            rows.append((f"user{u}", f"item{int(rng.integers(0, 8)) * 8 + u % 8}", t))
            t += 1
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    return rows


def test_replay_prints_the_readout_of_every_event_and_writes_a_chart(tmp_path):
    model_a = write_toy_model(tmp_path / "a", num_items=64, dim=8, num_users=40, seed=1, version="toy-a")
    model_b = write_toy_model(tmp_path / "b", num_items=64, dim=8, num_users=40, seed=2, version="toy-b")
    rows = write_log(tmp_path / "log.csv")
    chart = tmp_path / "chart.png"
    result = CliRunner().invoke(cli, ["experiments", "replay", "--interactions", str(tmp_path / "log.csv"),
                                      "--arm", f"A={model_a}", "--arm", f"B={model_b}", "-k", "5",
                                      "--chart", str(chart)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith(("A ", "B "))}
    expected = {arm: sum(assign_arm(user, "replay", [("A", 0.5), ("B", 0.5)]) == arm for user, _, _ in rows)
                for arm in "AB"}
    assert {arm: int(line[2 if arm == "A" else 1]) for arm, line in lines.items()} == expected  # one per event
    assert chart.stat().st_size > 1000


def test_replay_refuses_a_missing_model_directory_naming_the_option(tmp_path):
    model_a = write_toy_model(tmp_path / "a", num_items=16, dim=8)
    result = CliRunner().invoke(cli, ["experiments", "replay", "--interactions", "x.csv", "--arm", f"A={model_a}",
                                      "--arm", f"B={tmp_path / 'missing'}"])
    assert result.exit_code != 0 and "--arm" in result.output and "no model directory" in result.output


def test_the_http_commands_say_in_one_line_when_no_server_answers(tmp_path):
    from rayrec.errors import RayrecError

    spec = tmp_path / "ab.yaml"
    spec.write_text("name: ab\narms:\n  - {name: A, model_dir: /m/a, share: 0.5}\n  - {name: B, model_dir: /m/b, share: 0.5}\n")
    from rayrec.testing import free_port

    url = f"http://127.0.0.1:{free_port()}"
    for command in (["start", str(spec)], ["report", "ab"], ["promote", "ab", "B"], ["stop", "ab"]):
        result = CliRunner().invoke(cli, ["experiments", *command, "--url", url])
        assert isinstance(result.exception, RayrecError), result.output
        assert str(result.exception).startswith(f"cannot reach {url}")
