"""``rayrec recommend``: batch top-K recommendations for training users, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

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
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output JSON-lines file.")
@click.option("--users", "users_path", default=None, help="Only these users: a text file with one id per line, or a CSV with user_id.")
def recommend(model_dir, k, out_path, users_path):
    """Write the top K unseen items for every training user (or the listed ones)."""
    from rayrec.models.servable import load_model_dir

    model = load_model_dir(model_dir)  # any model_kind (two-tower, ALS)
    user_ids = read_user_list(users_path) if users_path else model.user_vocab.ids
    known = [(uid, model.user_vocab.index_of(uid)) for uid in user_ids]
    known_rows = [index for _, index in known if index is not None]
    items, scores = model.recommend_indices(known_rows, k)
    by_user = {row: (items[i], scores[i]) for i, row in enumerate(known_rows)}
    popular = np.argsort(-model.item_popularity, kind="stable")[:k]
    unknown = 0
    with open(out_path, "w") as handle:
        for user_id, index in known:
            if index is None:
                # Not seen in training: the most popular items, scored by their popularity.
                unknown += 1
                top, top_scores = popular, model.item_popularity[popular]
            else:
                top, top_scores = by_user[index]
            handle.write(json.dumps({
                "user_id": user_id,
                "items": model.item_vocab.decode(top.tolist()),
                "scores": [round(float(s), 6) for s in top_scores],
            }) + "\n")
    click.echo(f"wrote top-{k} recommendations for {len(known):,} users to {out_path}")
    if unknown:
        click.echo(f"{unknown:,} listed users were not seen in training and got the most popular items", err=True)
