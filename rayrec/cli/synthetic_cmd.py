"""``rayrec synthetic``: write a synthetic dataset with known structure to a directory."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write into (created if missing).")
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of users.")
@click.option("--items", type=click.IntRange(min=1), default=500, show_default=True, help="Number of items.")
@click.option("--clusters", type=click.IntRange(min=1), default=10, show_default=True, help="Number of latent clusters.")
@click.option("--events-per-user", type=click.FloatRange(min=0, min_open=True), default=40.0, show_default=True, help="Average events per user.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same data).")
@click.option("--shuffle-order", is_flag=True,
              help="Randomly permute each user's events in time, so their order carries no signal.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=100_000, show_default=True, help="Rows generated and written at a time.")
def synthetic(out_dir: str, users: int, items: int, clusters: int, events_per_user: float, seed: int,
              shuffle_order: bool, chunk_size: int) -> None:
    """Write interactions.csv, items.csv and users.csv with known clusters and sequences.

    Train on it with `rayrec train --interactions DIR/interactions.csv --items DIR/items.csv
    --users DIR/users.csv --out MODEL`; synthetic.json holds the config, from which the ground
    truth can be recomputed.
    """
    from rayrec.config import parse_config
    from rayrec.data.synthetic import SyntheticConfig, write_synthetic

    config = parse_config(SyntheticConfig, {
        "num_users": users, "num_items": items, "num_clusters": clusters, "mean_events_per_user": events_per_user,
        "seed": seed, "shuffle_order": shuffle_order}, what="synthetic data options")
    paths = write_synthetic(out_dir, config, chunk_size=chunk_size)
    with open(paths["interactions"], "rb") as handle:
        rows = sum(1 for _ in handle) - 1
    click.echo(f"wrote {rows:,} interactions of {users:,} users on {items:,} items in {clusters} clusters to {out_dir}")
    for kind, path in paths.items():
        click.echo(f"  {kind:<12} {path}")
