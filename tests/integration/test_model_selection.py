"""``rayrec train`` picks its model on validation, as a user runs it: train -> recommend -> scored.

Two synthetic datasets with a known answer: one whose users follow each item's successor
(order is the signal: the sequential model must win), one with the same clusters but every
user's events shuffled (order carries nothing: the order-free model, which reads the whole
history where the sequential one reads the last ``max_len`` items as if their order meant
something, must win). Either way the kept model has to recommend well above popularity on
each user's held-out last interaction. A cluster holds more items than a user has events, so
knowing the cluster alone does not give the answer away.
"""

import csv
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from rayrec.data import SyntheticConfig, write_synthetic

pytestmark = pytest.mark.integration

RAYREC = [sys.executable, "-m", "rayrec"]
# Small towers and few epochs keep each candidate to seconds; the search itself is the default.
CONFIG = """
learning_rate: 0.005
epochs: 25
patience: 5
model:
  dim: 32
  max_len: 30
"""


def leave_last_out(directory):
    """Write train.csv (every user's events but the last) and return {user: last item}."""
    with open(directory / "interactions.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_user: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["user_id"], int(r["timestamp"]))):
        by_user.setdefault(row["user_id"], []).append(row)
    held_out = {user: events[-1]["item_id"] for user, events in by_user.items()}
    with open(directory / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for events in by_user.values():
            writer.writerows(events[:-1])
    popularity = Counter(row["item_id"] for events in by_user.values() for row in events[:-1])
    return held_out, popularity, {user: {r["item_id"] for r in events[:-1]} for user, events in by_user.items()}


def ndcg_at_10(ranked: dict[str, list[str]], held_out: dict[str, str]) -> float:
    gains = []
    for user, target in held_out.items():
        items = ranked[user][:10]
        gains.append(1 / np.log2(items.index(target) + 2) if target in items else 0.0)
    return float(np.mean(gains))


def train_and_score(tmp_path, synthetic: SyntheticConfig):
    data = tmp_path / "data"
    write_synthetic(data, synthetic)
    held_out, popularity, seen = leave_last_out(data)
    config = tmp_path / "train.yaml"
    config.write_text(CONFIG)
    model = tmp_path / "model"
    trained = subprocess.run(RAYREC + ["train", "--interactions", str(data / "train.csv"), "--out", str(model),
                                       "--config", str(config), "--budget", "4"],
                             capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "selected" in trained.stdout  # the table of candidates is printed
    recommended = subprocess.run(RAYREC + ["recommend", "--model", str(model), "-k", "10",
                                           "--out", str(tmp_path / "recs.jsonl")],
                                 capture_output=True, text=True, timeout=300)
    assert recommended.returncode == 0, recommended.stderr
    ranked = {}
    for line in (tmp_path / "recs.jsonl").read_text().splitlines():
        record = json.loads(line)
        ranked[record["user_id"]] = record["items"]
    by_popularity = [item for item, _ in popularity.most_common()]
    popular = {user: [i for i in by_popularity if i not in seen[user]][:10] for user in held_out}
    selection = json.loads((model / "selection.json").read_text())
    return selection, ndcg_at_10(ranked, held_out), ndcg_at_10(popular, held_out)


def test_sequential_data_selects_the_sequential_model(tmp_path):
    selection, model_ndcg, popularity_ndcg = train_and_score(tmp_path, SyntheticConfig(
        num_users=300, num_items=400, num_clusters=4, mean_events_per_user=60, sequential_probability=0.9,
        explore_probability=0.05, seed=3))
    scores = {row["candidate"]: row["val_ndcg@10"] for row in selection["candidates"]}
    # The sequential model alone, or blended with an order-free one (sasrec first, weight 1).
    assert selection["selected"].split("+")[0] == "sasrec", selection
    assert scores["sasrec"] > scores["als"] + 0.1  # the successor structure is visible only in order
    assert model_ndcg > 3 * popularity_ndcg, (model_ndcg, popularity_ndcg)


def test_shuffled_data_selects_the_order_free_model(tmp_path):
    selection, model_ndcg, popularity_ndcg = train_and_score(tmp_path, SyntheticConfig(
        num_users=300, num_items=400, num_clusters=4, mean_events_per_user=60, sequential_probability=0.9,
        explore_probability=0.05, shuffle_order=True, seed=3))
    assert selection["selected"] in ("als", "ease"), selection
    finished = {row["candidate"] for row in selection["candidates"] if row["val_ndcg@10"] is not None}
    assert {"als", "ease"} <= finished, selection  # both order-free trials ran within their shares
    assert model_ndcg > 1.5 * popularity_ndcg, (model_ndcg, popularity_ndcg)
    model = json.loads((tmp_path / "model" / "config.json").read_text())
    assert model["model_kind"] == selection["selected"]
