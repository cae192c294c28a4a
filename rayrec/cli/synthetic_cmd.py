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
@click.option("--format", "file_format", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True,
              help="csv: interactions.csv, items.csv, users.csv; parquet: interactions/ shards, items.parquet, users.parquet.")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parquet files the interactions are split into, each holding whole users (needs --format parquet).")
def synthetic(out_dir: str, users: int, items: int, clusters: int, events_per_user: float, seed: int,
              shuffle_order: bool, chunk_size: int, file_format: str, shards: int) -> None:
    """Write interactions, items and users with known clusters and sequences.

    Train on it with `rayrec train --interactions DIR --out MODEL` (the directory holds the
    items and users too); synthetic.json holds the config, from which the ground truth can be
    recomputed. With --format parquet --shards N the interactions are N Parquet files in
    DIR/interactions/, written shard by shard in flat memory.
    """
    from rayrec.config import parse_config
    from rayrec.data.synthetic import SyntheticConfig, write_synthetic

    config = parse_config(SyntheticConfig, {
        "num_users": users, "num_items": items, "num_clusters": clusters, "mean_events_per_user": events_per_user,
        "seed": seed, "shuffle_order": shuffle_order}, what="synthetic data options")
    if shards > 1 and file_format != "parquet":
        raise click.UsageError("--shards needs --format parquet (shards are Parquet files)")
    paths = write_synthetic(out_dir, config, chunk_size=chunk_size, file_format=file_format, shards=shards)
    if file_format == "parquet":
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in paths["interactions"].glob("*.parquet"))
    else:
        with open(paths["interactions"], "rb") as handle:
            rows = sum(1 for _ in handle) - 1
    click.echo(f"wrote {rows:,} interactions of {users:,} users on {items:,} items in {clusters} clusters to {out_dir}")
    for kind, path in paths.items():
        click.echo(f"  {kind:<12} {path}")
