"""`rayrec recommend` output, scored independently, agrees with what `rayrec evaluate` reports."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from rayrec.data import SyntheticConfig, write_synthetic

RAYREC = [sys.executable, "-m", "rayrec"]
# Eight epochs: the learning rate, history length and SASRec dropout sized for a short run
# (the defaults suit long early-stopped ones).
CONFIG = ("epochs: 8\neval_every: 2\nlearning_rate: 3.0e-3\n"
          "model:\n  dim: 32\n  max_len: 50\n  user_encoder_options: {dropout: 0.2}\n")


def _last_items(path):
    """Each user's last item by time (ties keep file order), for users with at least 3."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for position, row in enumerate(rows):
        by_user.setdefault(row["user_id"], []).append((int(row["timestamp"]), position, row["item_id"]))
    return {user: sorted(events)[-1][2] for user, events in by_user.items() if len(events) >= 3}


def _score(recs_path, hidden):
    hits, gains = [], []
    for line in recs_path.read_text().splitlines():
        record = json.loads(line)
        if record["user_id"] in hidden:
            items = record["items"]
            rank = items.index(hidden[record["user_id"]]) if hidden[record["user_id"]] in items else None
            hits.append(rank is not None)
            gains.append(0.0 if rank is None else 1 / np.log2(rank + 2))
    return len(hits), float(np.mean(hits)), float(np.mean(gains))


def test_recommend_scored_by_hand_matches_evaluate(tmp_path):
    write_synthetic(tmp_path / "data", SyntheticConfig(num_users=300, num_items=200, num_clusters=8,
                                                      mean_events_per_user=20, seed=11))
    (tmp_path / "config.yaml").write_text(CONFIG)
    full = tmp_path / "data" / "interactions.csv"
    model = tmp_path / "model"

    evaluated = subprocess.run(RAYREC + ["evaluate", "--interactions", str(full), "--config", str(tmp_path / "config.yaml"),
                                         "--in-process", "--no-baselines", "--json", "--save-model", str(model)],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    reported = next(iter(json.loads(evaluated.stdout).values()))

    # Score the saved model's `rayrec recommend` output by hand against each user's last event.
    recs = tmp_path / "recs.jsonl"
    assert subprocess.run(RAYREC + ["recommend", "--model", str(model), "-k", "10", "--out", str(recs)],
                          capture_output=True, timeout=300).returncode == 0
    users, hit_rate, ndcg = _score(recs, _last_items(full))
    assert users == reported["users"] == 300
    assert hit_rate == pytest.approx(reported["HR@10"], abs=1e-9)
    assert ndcg == pytest.approx(reported["NDCG@10"], abs=1e-6)
    assert hit_rate > 0.3  # and far above chance: 10 of ~180 unseen items
