"""``rayrec quickstart``: the whole loop on built-in synthetic data, in one command.

Generates data with a known structure, trains with Ray Train, serves the graph with Ray
Serve, asks for recommendations over HTTP, sends feedback, and shows the list change.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import click


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(base: str, method: str, path: str, body: dict | None = None) -> tuple[dict, float]:
    """One JSON request with the standard library; returns (response, milliseconds)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    return payload, (time.perf_counter() - started) * 1000


def _show(recommendations: dict, titles: dict[str, str], milliseconds: float) -> None:
    click.echo(f"  model {recommendations['model_version']}, answered in {milliseconds:.1f} ms")
    for rank, item in enumerate(recommendations["items"], 1):
        because = ", ".join(titles.get(i, i) for i in item["explanation"].get("because", [])[:2])
        reason = f"  <- because of {because}" if because else ""
        click.echo(f"  {rank:>2}. {titles.get(item['item_id'], item['item_id']):<40} {item['score']:7.3f}{reason}")


@click.command()
@click.option("--workdir", default="rayrec-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Where the data, model and state go.")
@click.option("--users", default=600, show_default=True, help="Synthetic users.")
@click.option("--items", "num_items", default=300, show_default=True, help="Synthetic items.")
@click.option("--epochs", default=20, show_default=True, help="Maximum training epochs (early stopping ends sooner).")
@click.option("--num-workers", default=2, show_default=True, help="Ray Train workers.")
@click.option("--port", default=8000, show_default=True, help="HTTP port (a free one is used if taken).")
@click.option("--keep-serving", is_flag=True, help="Keep the server running after the demo (Ctrl-C stops).")
def quickstart(workdir, users, num_items, epochs, num_workers, port, keep_serving):
    """Train on synthetic data, serve it, and watch feedback change a recommendation."""
    import ray
    from ray import serve

    from rayrec.data import SyntheticConfig, generate, synthetic_truth, write_synthetic
    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs
    from rayrec.serving.graph.proxy import default_proxy, prepare_local_ray
    from rayrec.training.config import TrainConfig
    from rayrec.training.prepare import prepare
    from rayrec.training.trainer import train_distributed

    prepare_local_ray(default_proxy())  # before Ray starts (in training): its processes inherit it
    root = Path(workdir).resolve()
    synthetic = SyntheticConfig(num_users=users, num_items=num_items)
    click.secho(f"1. Synthetic data: {users} users, {num_items} items in {synthetic.num_clusters} topics -> {root / 'data'}",
                bold=True)
    write_synthetic(root / "data", synthetic)
    dataset = generate(synthetic)
    data = prepare(dataset)
    titles = dict(zip(dataset.items.item_id, dataset.items.title))

    click.secho(f"2. Training a SASRec two-tower model with Ray Train ({num_workers} workers)", bold=True)
    config = TrainConfig(epochs=epochs, num_workers=num_workers)
    model_dir = train_distributed(data, root / "model", config,
                                  log=lambda line: click.echo(f"   {line}") if "val NDCG" in line else None)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    click.echo(f"   best validation NDCG@10 {metrics['best_val_ndcg@10']:.3f} at epoch {metrics['best_epoch']}")

    port = _free_port(port)
    base = f"http://127.0.0.1:{port}"
    click.secho(f"3. Serving the graph with Ray Serve at {base}", bold=True)
    state_file = root / "state.db"
    state_file.unlink(missing_ok=True)  # every quickstart starts from the trained model alone
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    try:
        serve.run(build_app(AppArgs(model_dir=str(model_dir), state=str(state_file))), name="rayrec", route_prefix="/")
        truth = synthetic_truth(synthetic)
        user_id = data.user_vocab.ids[0]
        home = truth.user_cluster_of(user_id)
        click.secho(f"4. POST /recommend for {user_id}, who is mostly into {truth.cluster_themes[home]}", bold=True)
        before, ms = _call(base, "POST", "/recommend", {"user_id": user_id, "k": 5})
        _show(before, titles, ms)

        other = (home + synthetic.num_clusters // 2) % synthetic.num_clusters
        liked = [item for item in dataset.items.item_id if truth.item_cluster_of(item) == other][:3]
        click.secho(f"5. POST /feedback: {user_id} likes 3 {truth.cluster_themes[other]} items", bold=True)
        events = [{"user_id": user_id, "item_id": item, "event_type": "like", "event_id": f"quickstart-{item}"}
                  for item in liked]
        accepted, ms = _call(base, "POST", "/feedback", {"events": events})
        click.echo(f"  accepted {accepted['accepted']} events in {ms:.1f} ms: " + ", ".join(titles[i] for i in liked))

        click.secho("6. POST /recommend again: no retraining, the list follows the new interest", bold=True)
        after, ms = _call(base, "POST", "/recommend", {"user_id": user_id, "k": 5})
        _show(after, titles, ms)
        moved = sum(truth.item_cluster_of(i["item_id"]) == other for i in after["items"])
        changed = [i["item_id"] for i in before["items"]] != [i["item_id"] for i in after["items"]]
        click.echo(f"  {'changed' if changed else 'UNCHANGED'}: {moved} of {len(after['items'])} are now "
                   f"{truth.cluster_themes[other]} items")

        similar, ms = _call(base, "GET", f"/similar-items/{liked[0]}?k=3")
        click.secho(f"7. GET /similar-items/{liked[0]} ({titles[liked[0]]})", bold=True)
        for item in similar["items"]:
            click.echo(f"   {titles.get(item['item_id'], item['item_id'])}")
        if keep_serving:
            click.echo(f"\nServing at {base} (API docs at {base}/docs). Ctrl-C to stop.")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    click.echo(f"\nDone. Try: rayrec serve --model {model_dir}   (then POST {base}/recommend)")
