"""``rayrec experiments``: start, read out, promote and stop A/B tests on a running server,
and replay one offline against model directories."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

import click

from rayrec.errors import RayrecError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_OPTION = click.option("--url", default=DEFAULT_URL, show_default=True, help="The rayrec server.")
KEY_OPTION = click.option("--api-key", envvar="RAYREC_API_KEY", default=None,
                          help="API key for the admin routes (default: $RAYREC_API_KEY).")
CHART_OPTION = click.option("--chart", "chart_path", default=None, type=click.Path(dir_okay=False),
                            help="Also write a PNG chart of CTR and reward with their intervals (needs matplotlib).")


def call(url: str, method: str, path: str, body: Any = None, api_key: str | None = None) -> dict[str, Any]:
    """One JSON request; a 4xx/5xx answer or an unreachable server becomes one line of error."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        raise RayrecError(f"{method} {path}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RayrecError(f"cannot reach {url} ({getattr(exc, 'reason', exc)}); is `rayrec serve` running?") from None


def show(result: dict[str, Any], chart_path: str | None) -> None:
    from rayrec.serving.experiments.readout import format_table, write_chart

    arms = ", ".join(f"{arm['name']}={arm['model_dir']} ({arm['share']:.0%}"
                     + (f", {arm['model_files_mb']:.1f} MB" if arm.get("model_files_mb") is not None else "")
                     + (f", +{arm['added_resident_mb']:.1f} MB resident in {arm['replicas']} replicas"
                        if arm.get("added_resident_mb") is not None and arm.get("replicas") else "")
                     + (", the live model" if arm.get("shares_live_model") else "") + ")" for arm in result["arms"])
    click.echo(f"experiment {result['name']} ({result['status']}"
               + (f", promoted {result['promoted_arm']}" if result.get("promoted_arm") else "") + f"): {arms}")
    click.echo(format_table(result["readout"]))
    click.echo("95% intervals in brackets; diffs are arm minus control (CTR in percentage points).")
    if chart_path:
        if write_chart(result["readout"], chart_path, f"experiment {result['name']}"):
            click.echo(f"chart written to {chart_path}")
        else:
            click.echo("no chart: matplotlib is not installed (pip install 'rayrec[plot]')", err=True)


@click.group()
def experiments() -> None:
    """A/B tests between models: each arm a model directory, users split by a stable hash."""


@experiments.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@URL_OPTION
@KEY_OPTION
def start(spec_file, url, api_key):
    """Start the experiment in SPEC_FILE (YAML or JSON: name, salt, arms of name/model_dir/share)."""
    import yaml

    with open(spec_file) as handle:
        spec = yaml.safe_load(handle)
    show(call(url, "POST", "/admin/experiments", spec, api_key), None)


@experiments.command()
@click.argument("name")
@URL_OPTION
@CHART_OPTION
def report(name, url, chart_path):
    """Print the readout of experiment NAME (and write a chart)."""
    show(call(url, "GET", f"/experiments/{name}"), chart_path)


@experiments.command()
@click.argument("name")
@click.argument("arm")
@URL_OPTION
@KEY_OPTION
def promote(name, arm, url, api_key):
    """End experiment NAME: ARM's model becomes the only one served (no request fails)."""
    show(call(url, "POST", f"/admin/experiments/{name}/promote", {"arm": arm}, api_key), None)


@experiments.command()
@click.argument("name")
@URL_OPTION
@KEY_OPTION
def stop(name, url, api_key):
    """End experiment NAME without a winner: the live model serves everybody."""
    show(call(url, "POST", f"/admin/experiments/{name}/stop", None, api_key), None)


def parse_arm(value: str) -> tuple[str, str]:
    name, sep, model_dir = value.partition("=")
    if not sep or not name or not model_dir:
        raise click.BadParameter(f"{value!r}: expected NAME=MODEL_DIR", param_hint="--arm")
    if not os.path.isdir(model_dir):
        raise click.BadParameter(f"{value!r}: no model directory at {model_dir}", param_hint="--arm")
    return name, model_dir


@experiments.command()
@click.option("--interactions", required=True, help="The log to replay (CSV/TSV/Parquet with user_id,item_id,timestamp, "
                                                    "or any other --interactions source of rayrec train).")
@click.option("--arm", "arm_values", multiple=True, required=True, metavar="NAME=MODEL_DIR",
              help="An arm (repeat it; the first is the control); users are split equally.")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Items per answer.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay only the first N events.")
@click.option("--salt", default="replay", show_default=True, help="The assignment salt.")
@CHART_OPTION
def replay(interactions, arm_values, k, limit, salt, chart_path):
    """Replay a time-ordered log against the arms as live traffic would (ask, then feed the event
    back), and print the same readout as `rayrec experiments report`."""
    from rayrec.data import load_dataset
    from rayrec.serving.experiments.replay import replay as run_replay

    arms = [parse_arm(value) for value in arm_values]
    if len(arms) < 2:
        raise click.BadParameter("give at least two arms", param_hint="--arm")
    if len({name for name, _ in arms}) != len(arms):
        raise click.BadParameter("arm names must differ", param_hint="--arm")
    log = load_dataset(interactions).interactions
    total = min(len(log), limit or len(log))
    click.echo(f"replaying {total:,} events against {', '.join(name for name, _ in arms)} ...", err=True)

    def progress(done: int, count: int) -> None:
        if done % 2000 == 0 or done == count:
            click.echo(f"  {done:,}/{count:,} events", err=True)

    show(run_replay(log, arms, k=k, limit=limit, salt=salt, progress=progress), chart_path)
