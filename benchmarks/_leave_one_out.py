"""The leave-one-out protocol of ``../shared/datasets/README.md``, shared by the benchmarks.

Every interaction counts (nothing is dropped or deduplicated); per user, interactions sorted
by time with ties in file order; the last one is the test item, the one before it the
validation item, the rest train. All items are ranked with the user's history masked, and
HR@10 and NDCG@10 are averaged over users. The split and the metrics are rayrec's own
(``rayrec.data.splits``, ``rayrec.evaluation``); this module only wires them together and
turns the split back into the files ``rayrec train`` reads.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rayrec.data import build_vocabularies, leave_one_out_sequences, load_dataset, user_sequences
from rayrec.data.splits import held_out_position
from rayrec.evaluation import metrics
from rayrec.evaluation.protocol import evaluate_ranking
from rayrec.schema import CATEGORIES, ITEM_ID, TIMESTAMP, TITLE, USER_ID, VALUE, Dataset, Vocabulary

K = 10
#: histories (B arrays of 0-based item indices) -> (B, num_items) scores
HistoryScorer = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class LeaveOneOut:
    """One dataset split per user; item and user indices are 0-based, in first-appearance order.

    ``train[u]``: (n_u,) int64 items in time order without the last two; ``validation`` and
    ``test``: (U,) int64 held-out items, -1 for users with fewer than 3 interactions (they
    keep everything in train and are not evaluated).
    """

    name: str
    dataset: Dataset
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    train: list[np.ndarray]
    validation: np.ndarray
    test: np.ndarray
    _with_validation: list[np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_dataset(cls, name: str, dataset: Dataset) -> "LeaveOneOut":
        user_vocab, item_vocab = build_vocabularies(dataset.interactions)
        sequences = user_sequences(dataset.interactions, user_vocab, item_vocab)
        train, validation, test = leave_one_out_sequences(sequences)
        return cls(name, dataset, user_vocab, item_vocab, train, validation, test)

    @property
    def num_items(self) -> int:
        return len(self.item_vocab)

    @property
    def num_evaluated(self) -> int:
        return int((self.test >= 0).sum())

    @property
    def train_with_validation(self) -> list[np.ndarray]:
        """Per user, everything but the test item: the history the test ranking masks."""
        if self._with_validation is None:
            self._with_validation = [
                np.append(items, target) if target >= 0 else items for items, target in zip(self.train, self.validation)
            ]
        return self._with_validation

    def histories_and_targets(self, on: str) -> tuple[list[np.ndarray], np.ndarray]:
        """``"validation"``: (train, validation items); ``"test"``: (train + validation, test items)."""
        if on == "validation":
            return self.train, self.validation
        if on == "test":
            return self.train_with_validation, self.test
        raise ValueError(f"on must be 'validation' or 'test', got {on!r}")

    def evaluate(self, scorer: HistoryScorer, on: str) -> dict[str, float]:
        """HR@10 and NDCG@10 of a model that scores histories, on ``"validation"`` or ``"test"``
        (see :meth:`histories_and_targets`): all items ranked, the history masked."""
        histories, _ = self.histories_and_targets(on)
        return self.evaluate_users(lambda users: scorer([histories[u] for u in users]), on)

    def evaluate_users(self, score_users: Callable[[np.ndarray], np.ndarray], on: str) -> dict[str, float]:
        """Like :meth:`evaluate`, for a model that scores users by index: (B,) -> (B, num_items)."""
        histories, targets = self.histories_and_targets(on)
        result = evaluate_ranking(score_users, histories, targets, self.num_items, ks=(K,), batch_size=512)
        return {f"HR@{K}": result[f"HR@{K}"], f"NDCG@{K}": result[f"NDCG@{K}"], "users": result["users"]}

    def score_lists_on_test(self, lists: dict[str, list[str]]) -> dict[str, float]:
        """HR@10 and NDCG@10 of top-10 id lists (user id -> item ids, best first) on the test
        items; a user without a list, or whose test item is not in it, is a miss."""
        users = np.flatnonzero(self.test >= 0)
        ranks = np.full(users.size, K, dtype=np.int64)  # K = not in the top K
        for row, user in enumerate(users.tolist()):
            target = self.item_vocab.ids[self.test[user]]
            recommended = lists.get(self.user_vocab.ids[user], [])[:K]
            if target in recommended:
                ranks[row] = recommended.index(target)
        return {f"HR@{K}": float(metrics.hit_rate_at_k(ranks, K).mean()),
                f"NDCG@{K}": float(metrics.ndcg_at_k(ranks, K).mean()), "users": int(users.size)}

    def write_rayrec_inputs(self, directory: Path) -> tuple[Path, Path | None]:
        """Write ``train.csv`` (every interaction except each user's test item, in file order,
        so ties keep their order) and ``items.csv`` (title, categories) for ``rayrec train``.

        Returns (interactions path, items path or None when the dataset has no item metadata).
        """
        directory.mkdir(parents=True, exist_ok=True)
        interactions = self.dataset.interactions
        kept = interactions.take(held_out_position(interactions) != 0)  # all but the test items
        train_path = directory / "train.csv"
        with open(train_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            has_value = kept.value is not None
            writer.writerow([USER_ID, ITEM_ID, TIMESTAMP, *([VALUE] if has_value else [])])
            columns = [kept.user_id.tolist(), kept.item_id.tolist(), kept.timestamp.tolist()]
            if has_value:
                columns.append(["" if np.isnan(v) else f"{v:g}" for v in kept.value.tolist()])  # empty = missing
            writer.writerows(zip(*columns))
        items = self.dataset.items
        if items is None or len(items) == 0:
            return train_path, None
        items_path = directory / "items.csv"
        with open(items_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([ITEM_ID, TITLE, CATEGORIES])
            for row in range(len(items)):
                title = items.title[row] if items.title else ""
                categories = "|".join(items.categories[row]) if items.categories else ""
                writer.writerow([items.item_id[row], title, categories])
        return train_path, items_path


def load_leave_one_out(name: str, path: str | Path) -> LeaveOneOut:
    """Load ``path`` with rayrec's loaders (MovieLens layouts, CSV directory, ...) and split it."""
    return LeaveOneOut.from_dataset(name, load_dataset(str(path)))


def read_recommendations(path: Path) -> dict[str, list[str]]:
    """``rayrec recommend`` output (JSON lines) -> user id -> recommended item ids, best first."""
    lists: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                lists[str(record["user_id"])] = [str(item) for item in record["items"]]
    return lists
