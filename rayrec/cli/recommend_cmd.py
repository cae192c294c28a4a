"""``rayrec recommend``: batch top-K recommendations for training users (see :mod:`rayrec.batch.recommend`)."""

from __future__ import annotations

from pathlib import Path

import click

from rayrec.errors import DataError


def read_user_list(path: str) -> list[str]:
    """User ids from a text file (one per line) or a CSV/TSV/Parquet file with a user_id column."""
    file = Path(path)
    if not file.exists():
        raise DataError("users file not found", path=path)
    if file.suffix.lower() in {".csv", ".tsv", ".parquet", ".jsonl"}:
        from rayrec.data import load_users_file

        return list(load_users_file(path).user_id)
    ids = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError("the users file lists no user ids", path=path)
    return ids


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Model directory from rayrec train.")
@click.option("-k", "k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Items per user.")
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="Output: one JSON-lines file, or with --format a directory of shards.")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "parquet"]), default=None,
              help="Write a directory of JSON-lines or Parquet shards (one per block of users) instead of one file.")
@click.option("--users", "users_path", default=None, help="Only these users: a text file with one id per line, or a CSV with user_id.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Model copies scoring in parallel (default: one per CPU Ray sees).")
@click.option("--users-per-shard", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="With --format: the most users in one shard file.")
def recommend(model_dir, k, out_path, output_format, users_path, actors, users_per_shard):
    """Write the top K unseen items for every training user (or the listed ones).

    The users are scored on Ray Data by a pool of actors, each holding one copy of the model.
    """
    from rayrec.batch.recommend import recommend_all

    user_ids = read_user_list(users_path) if users_path else None
    written = recommend_all(model_dir, k, out_path, output_format=output_format, user_ids=user_ids, actors=actors,
                            users_per_shard=users_per_shard)
    where = f"{written['shards']} {output_format} shards in {out_path}" if output_format else out_path
    copies = f"{written['actors']} model cop{'y' if written['actors'] == 1 else 'ies'}"
    click.echo(f"wrote top-{k} recommendations for {written['users']:,} users to {where} ({copies})")
    if written["unknown"]:
        click.echo(f"{written['unknown']:,} listed users were not seen in training and got the most popular items",
                   err=True)
