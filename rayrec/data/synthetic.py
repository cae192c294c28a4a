"""A synthetic dataset with a known answer, for tests, benchmarks and the quickstart.

The latent structure, all recoverable from the config with :func:`synthetic_truth`:

* **Clusters.** Items are split evenly into ``num_clusters`` clusters; each user has a home
  cluster. An event is in the home cluster unless the user explores (probability
  ``explore_probability``), then it is in a random other cluster.
* **Popularity.** Within a cluster, items are drawn Zipf-like (weight ``1 / rank**zipf_exponent``
  over a random popularity ranking), so a popularity baseline has something to find. Because
  nobody consumes an item twice, the skew flattens when users get through most of their home
  cluster (the defaults: ~36 home events in clusters of 50); larger catalogues keep it sharp.
* **Sequences.** Each cluster's items have an order (think episodes of a series). With
  probability ``sequential_probability`` a home event is the next item after the user's last
  home item, so the last item predicts the next one far better than popularity does.
* **Order, optionally none.** With ``shuffle_order`` each user's events are randomly
  permuted among that user's timestamps (from a stream of its own, so the set of items per
  user is the same as without it). The sequence order then carries no signal: a benchmark
  that needs data where only *which* items a user has, not their order, can be learned.
* **Content.** Titles, descriptions and categories use cluster-specific words (cluster 3 might
  be "jazz": saxophone, bebop, ...) plus shared filler words, so text models find similarity.
* **Users** have an ``interest`` feature equal to their home theme 70% of the time, and a
  ``country`` feature that is pure noise.

A user never consumes an item twice, timestamps increase strictly per user, and everything is
deterministic in ``seed``. Users are generated in fixed blocks, each with its own random
stream, so :func:`iter_chunks` streams millions of events in flat memory and gives the same
events whatever the chunk size.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayrec.components import DataSource
from rayrec.config import parse_config
from rayrec.errors import DataError
from rayrec.schema import (
    CATEGORIES,
    EVENT_TYPE,
    ITEM_ID,
    TEXT,
    TIMESTAMP,
    TITLE,
    USER_ID,
    VALUE,
    Dataset,
    Interactions,
    Items,
    LoadReport,
    Users,
)

#: Users per random stream; fixed so results do not depend on the chunk size.
USER_BLOCK = 1024
SPEC_PREFIX = "synthetic"

# Theme name -> cluster-specific words. More clusters than themes reuse the themes with a
# numbered suffix on every word ("jazz2"), so each cluster's vocabulary stays distinct.
THEMES: dict[str, list[str]] = {
    "jazz": ["saxophone", "bebop", "swing", "trumpet", "improvisation", "quartet", "blues", "club", "standards", "brass"],
    "cooking": ["recipe", "kitchen", "pasta", "baking", "spices", "chef", "sauce", "bread", "grill", "dessert"],
    "space": ["galaxy", "rocket", "astronaut", "orbit", "nebula", "planet", "telescope", "comet", "lunar", "cosmos"],
    "gardening": ["roses", "compost", "seedlings", "greenhouse", "soil", "pruning", "tulips", "orchard", "herbs", "bulbs"],
    "football": ["goal", "striker", "stadium", "league", "penalty", "midfield", "keeper", "derby", "tactics", "cup"],
    "history": ["empire", "medieval", "dynasty", "archive", "revolution", "castle", "pharaoh", "treaty", "ancient", "chronicle"],
    "fitness": ["workout", "cardio", "yoga", "stretching", "strength", "marathon", "pilates", "kettlebell", "endurance", "squats"],
    "travel": ["passport", "backpacking", "island", "itinerary", "hostel", "voyage", "journey", "beaches", "roadtrip", "luggage"],
    "finance": ["stocks", "budget", "investing", "dividends", "savings", "bonds", "portfolio", "mortgage", "taxes", "markets"],
    "gaming": ["console", "quest", "multiplayer", "pixel", "speedrun", "arcade", "controller", "dungeon", "boss", "esports"],
    "photography": ["lens", "aperture", "portrait", "shutter", "tripod", "exposure", "darkroom", "landscape", "camera", "flash"],
    "chess": ["gambit", "endgame", "checkmate", "bishop", "rook", "opening", "grandmaster", "pawn", "sicilian", "castling"],
    "woodworking": ["lathe", "chisel", "oak", "joinery", "carving", "sawdust", "dovetail", "workbench", "timber", "varnish"],
    "wildlife": ["safari", "wolves", "migration", "birds", "savanna", "predators", "elephants", "habitat", "reef", "owls"],
    "poetry": ["sonnet", "verse", "rhyme", "stanza", "haiku", "ballad", "metaphor", "lyric", "ode", "couplet"],
    "robotics": ["servo", "sensors", "actuator", "firmware", "autonomous", "drone", "gripper", "microcontroller", "lidar", "kinematics"],
}
FILLER_WORDS = ["the", "complete", "guide", "new", "classic", "essential", "collection", "stories", "best", "modern", "little", "great"]
COUNTRIES = ["de", "fr", "us", "br", "in", "jp", "ng", "au"]


class SyntheticConfig(BaseModel):
    """Size and structure of a synthetic dataset; the defaults fit a laptop test run."""

    model_config = ConfigDict(extra="forbid")

    num_users: int = Field(1000, ge=1, description="Number of users.")
    num_items: int = Field(500, ge=1, description="Number of items (at least num_clusters).")
    num_clusters: int = Field(10, ge=1, description="Number of latent clusters (topics).")
    mean_events_per_user: float = Field(40.0, gt=0, description="Average events per user.")
    min_events_per_user: int = Field(5, ge=1, description="Every user has at least this many events.")
    explore_probability: float = Field(0.1, ge=0, le=1, description="Chance an event falls outside the home cluster.")
    sequential_probability: float = Field(
        0.7, ge=0, le=1, description="Chance a home event is the next item after the user's last home item."
    )
    zipf_exponent: float = Field(1.0, ge=0, description="Popularity skew within a cluster (0 = uniform).")
    seed: int = Field(0, description="Random seed; the same config always gives the same data.")
    start_time: int = Field(1_600_000_000, description="Earliest possible timestamp (unix seconds).")
    time_span_days: float = Field(365.0, gt=0, description="Users start at a random time within this span.")
    mean_gap_seconds: float = Field(6 * 3600.0, gt=0, description="Average time between a user's events.")
    event_type: str = Field("click", description="event_type of every generated event.")
    shuffle_order: bool = Field(
        False,
        description="Randomly permute each user's events among that user's timestamps, so their order carries "
        "no signal (the items per user stay the same).",
    )

    @model_validator(mode="after")
    def _enough_items(self) -> "SyntheticConfig":
        if self.num_items < self.num_clusters:
            raise ValueError(f"num_items ({self.num_items}) must be at least num_clusters ({self.num_clusters})")
        return self


@dataclass
class SyntheticTruth:
    """The latent structure behind a synthetic dataset (recomputed from the config, cheap).

    ``user_cluster``: (num_users,) int64 home cluster per user index; ``item_cluster``:
    (num_items,) int64; ``cluster_order[c]``: item indices of cluster c in sequence order;
    ``item_successor``: (num_items,) the next item in its cluster's order (wrapping around);
    ``item_weight``: (num_items,) Zipf popularity weight within the item's cluster (sums to 1
    per cluster). User/item index ``i`` has id ``user_ids[i]``/``item_ids[i]``.
    """

    user_ids: list[str]
    item_ids: list[str]
    user_cluster: np.ndarray
    item_cluster: np.ndarray
    cluster_order: list[np.ndarray]
    item_successor: np.ndarray
    item_weight: np.ndarray
    cluster_themes: list[str]
    cluster_words: list[list[str]]

    def user_cluster_of(self, user_id: str) -> int:
        return int(self.user_cluster[_index_from_id(user_id)])

    def item_cluster_of(self, item_id: str) -> int:
        return int(self.item_cluster[_index_from_id(item_id)])


def _id_width(count: int) -> int:
    return len(str(max(count - 1, 0)))


def user_id_of(index: int, num_users: int) -> str:
    return f"u{index:0{_id_width(num_users)}d}"


def item_id_of(index: int, num_items: int) -> str:
    return f"i{index:0{_id_width(num_items)}d}"


def _index_from_id(identifier: str) -> int:
    return int(identifier[1:])


def _cluster_vocabulary(cluster: int) -> tuple[str, list[str]]:
    themes = list(THEMES)
    theme = themes[cluster % len(themes)]
    round_ = cluster // len(themes)
    suffix = "" if round_ == 0 else str(round_ + 1)
    return theme + suffix, [word + suffix for word in THEMES[theme]]


def synthetic_truth(config: SyntheticConfig) -> SyntheticTruth:
    """The clusters, sequence orders and popularity weights that ``generate(config)`` uses."""
    rng = np.random.default_rng([config.seed, 0])
    num_users, num_items, num_clusters = config.num_users, config.num_items, config.num_clusters
    # Even cluster sizes, shuffled so ids say nothing about clusters.
    item_cluster = rng.permutation(np.arange(num_items) % num_clusters).astype(np.int64)
    user_cluster = rng.permutation(np.arange(num_users) % num_clusters).astype(np.int64)
    cluster_order: list[np.ndarray] = []
    item_successor = np.empty(num_items, dtype=np.int64)
    item_weight = np.empty(num_items, dtype=np.float64)
    for cluster in range(num_clusters):
        members = rng.permutation(np.flatnonzero(item_cluster == cluster))
        cluster_order.append(members)
        item_successor[members] = np.roll(members, -1)
        # Popularity ranks independent of the sequence order.
        ranks = rng.permutation(len(members))
        weights = 1.0 / (ranks + 1.0) ** config.zipf_exponent
        item_weight[members] = weights / weights.sum()
    vocabularies = [_cluster_vocabulary(c) for c in range(num_clusters)]
    return SyntheticTruth(
        user_ids=[user_id_of(i, num_users) for i in range(num_users)],
        item_ids=[item_id_of(i, num_items) for i in range(num_items)],
        user_cluster=user_cluster,
        item_cluster=item_cluster,
        cluster_order=cluster_order,
        item_successor=item_successor,
        item_weight=item_weight,
        cluster_themes=[theme for theme, _ in vocabularies],
        cluster_words=[words for _, words in vocabularies],
    )


class _EventSampler:
    """Draws one user's timeline; holds the per-cluster lookup tables as Python lists (fast)."""

    def __init__(self, config: SyntheticConfig, truth: SyntheticTruth) -> None:
        self.config = config
        self.item_cluster = truth.item_cluster.tolist()
        self.successor = truth.item_successor.tolist()
        self.by_popularity: list[list[int]] = []
        self.cumulative: list[np.ndarray] = []
        for members in truth.cluster_order:
            ranked = members[np.argsort(-truth.item_weight[members], kind="stable")]
            self.by_popularity.append(ranked.tolist())
            self.cumulative.append(np.cumsum(truth.item_weight[ranked]))
        self.global_by_popularity = np.argsort(-truth.item_weight, kind="stable").tolist()

    def _popular_unseen(self, cluster: int, uniform: float, seen: set[int]) -> int | None:
        """A Zipf draw in ``cluster``; if already seen, the next less popular unseen item."""
        ranked = self.by_popularity[cluster]
        start = min(int(np.searchsorted(self.cumulative[cluster], uniform)), len(ranked) - 1)
        for offset in range(len(ranked)):
            item = ranked[(start + offset) % len(ranked)]
            if item not in seen:
                return item
        return None

    def _next_unseen(self, item: int, seen: set[int]) -> int | None:
        """The first unseen item after ``item`` in its cluster's sequence order."""
        candidate = self.successor[item]
        while candidate != item:
            if candidate not in seen:
                return candidate
            candidate = self.successor[candidate]
        return None

    def timeline(self, home: int, num_events: int, rng: np.random.Generator) -> tuple[list[int], list[bool]]:
        """(item indices in time order, whether each event is in the home cluster)."""
        config = self.config
        num_clusters = config.num_clusters
        explore = rng.random(num_events) < config.explore_probability
        sequential = rng.random(num_events) < config.sequential_probability
        uniforms = rng.random(num_events).tolist()
        other_clusters = ((home + rng.integers(1, max(num_clusters, 2), size=num_events)) % num_clusters).tolist()
        seen: set[int] = set()
        items: list[int] = []
        at_home: list[bool] = []
        last_home: int | None = None
        for step in range(num_events):
            item = None
            if explore[step] and num_clusters > 1:
                item = self._popular_unseen(other_clusters[step], uniforms[step], seen)
            elif sequential[step] and last_home is not None:
                item = self._next_unseen(last_home, seen)
            if item is None:
                item = self._popular_unseen(home, uniforms[step], seen)
            if item is None:  # home cluster exhausted: the most popular unseen item anywhere
                item = next(i for i in self.global_by_popularity if i not in seen)
            seen.add(item)
            items.append(item)
            is_home = self.item_cluster[item] == home
            at_home.append(is_home)
            if is_home:
                last_home = item
        return items, at_home


def _events_per_user(config: SyntheticConfig, rng: np.random.Generator, size: int) -> np.ndarray:
    extra = max(config.mean_events_per_user - config.min_events_per_user, 0.0)
    counts = config.min_events_per_user + rng.poisson(extra, size=size)
    return np.minimum(counts, config.num_items)  # no repeats, so at most every item once


def _block_events(config: SyntheticConfig, truth: SyntheticTruth, sampler: _EventSampler, block: int) -> Interactions:
    """All events of users ``block*USER_BLOCK ..`` from the block's own random stream."""
    rng = np.random.default_rng([config.seed, 1, block])
    first = block * USER_BLOCK
    users = np.arange(first, min(first + USER_BLOCK, config.num_users))
    counts = _events_per_user(config, rng, len(users))
    # A stream of its own, so shuffling leaves every other draw (and each user's items) unchanged.
    order_rng = np.random.default_rng([config.seed, 4, block]) if config.shuffle_order else None
    span_seconds = config.time_span_days * 86400.0
    user_column: list[str] = []
    item_column: list[int] = []
    time_column: list[np.ndarray] = []
    value_column: list[np.ndarray] = []
    for user, count in zip(users.tolist(), counts.tolist()):
        items, at_home = sampler.timeline(int(truth.user_cluster[user]), count, rng)
        start = config.start_time + rng.uniform(0, span_seconds)
        # At least one second apart, so timestamps strictly increase within a user.
        gaps = 1 + np.floor(rng.exponential(config.mean_gap_seconds, size=count))
        time_column.append((start + np.cumsum(gaps)).astype(np.int64))
        # Ratings: home-cluster events are liked (3-5), explorations less so (1-3).
        values = np.where(at_home, rng.integers(3, 6, size=count), rng.integers(1, 4, size=count))
        if order_rng is not None:
            # Permute the events (item with its rating), not the timestamps, so rows stay in
            # time order per user.
            permutation = order_rng.permutation(count)
            items = [items[i] for i in permutation.tolist()]
            values = values[permutation]
        value_column.append(values)
        user_column.extend([truth.user_ids[user]] * count)
        item_column.extend(items)
    total = len(item_column)
    item_ids = np.asarray(truth.item_ids, dtype=object)
    return Interactions(
        user_id=np.asarray(user_column, dtype=object) if total else np.empty(0, dtype=object),
        item_id=item_ids[np.asarray(item_column, dtype=np.int64)],
        timestamp=np.concatenate(time_column) if time_column else np.empty(0, dtype=np.int64),
        event_type=np.full(total, config.event_type, dtype=object),
        value=(np.concatenate(value_column) if value_column else np.empty(0)).astype(np.float32),
    )


def iter_chunks(config: SyntheticConfig, chunk_size: int = 100_000) -> Iterator[Interactions]:
    """Stream the interactions in chunks of exactly ``chunk_size`` rows (the last may be shorter).

    Memory stays at about one chunk plus one block of users, whatever the total. The rows
    are the same as ``generate(config).interactions``, in the same order: user by user,
    each user's events in time order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    truth = synthetic_truth(config)
    sampler = _EventSampler(config, truth)
    pending: list[Interactions] = []
    pending_rows = 0
    num_blocks = -(-config.num_users // USER_BLOCK)
    for block in range(num_blocks):
        events = _block_events(config, truth, sampler, block)
        pending.append(events)
        pending_rows += len(events)
        if pending_rows < chunk_size:
            continue
        buffered = Interactions.concat(pending)
        start = 0
        while pending_rows - start >= chunk_size:
            yield buffered.take(np.arange(start, start + chunk_size))
            start += chunk_size
        pending = [buffered.take(np.arange(start, len(buffered)))]
        pending_rows = len(buffered) - start
    if pending_rows:
        yield Interactions.concat(pending)


def iter_user_blocks(config: SyntheticConfig) -> Iterator[tuple[np.ndarray, Interactions]]:
    """Each block of :data:`USER_BLOCK` users' events with every row's user index:
    ``((n,) int64, Interactions)``, the same rows as :func:`iter_chunks`, block after block."""
    truth = synthetic_truth(config)
    sampler = _EventSampler(config, truth)
    for block in range(-(-config.num_users // USER_BLOCK)):
        events = _block_events(config, truth, sampler, block)
        # Users come one after another and each has an event, so a change of id is the next user.
        changes = np.concatenate([[0], np.cumsum(events.user_id[1:] != events.user_id[:-1])]) if len(events) else []
        yield block * USER_BLOCK + np.asarray(changes, dtype=np.int64), events


def _title_case(word: str) -> str:
    return word[:1].upper() + word[1:]


def synthetic_items(config: SyntheticConfig, truth: SyntheticTruth | None = None) -> Items:
    """Titles, descriptions and categories built from each item's cluster vocabulary.

    About one word in ten comes from another cluster, so content is informative, not perfect.
    """
    truth = truth or synthetic_truth(config)
    rng = np.random.default_rng([config.seed, 2])
    num_clusters = config.num_clusters
    position = np.empty(config.num_items, dtype=np.int64)
    for members in truth.cluster_order:
        position[members] = np.arange(len(members))

    def topic_words(cluster: int, count: int) -> list[str]:
        """``count`` distinct words of the cluster, each swapped for another cluster's word 10% of the time."""
        own = truth.cluster_words[cluster]
        words = [own[i] for i in rng.choice(len(own), size=count, replace=False)]
        for position in range(count):
            if num_clusters > 1 and rng.random() < 0.1:
                other = truth.cluster_words[int((cluster + rng.integers(1, num_clusters)) % num_clusters)]
                words[position] = other[rng.integers(len(other))]
        return words

    def filler() -> str:
        return FILLER_WORDS[rng.integers(len(FILLER_WORDS))]

    titles, texts, categories = [], [], []
    for item in range(config.num_items):
        cluster = int(truth.item_cluster[item])
        first, second = topic_words(cluster, 2)
        # The part number mirrors the cluster's sequence order, like episodes of a series.
        titles.append(f"{_title_case(filler())} {_title_case(first)} {_title_case(second)}, part {position[item] + 1}")
        a, b, c, d = topic_words(cluster, 4)
        texts.append(f"{_title_case(filler())} {a} and {b}: {c}, {d} and more.")
        own = truth.cluster_words[cluster]
        categories.append([truth.cluster_themes[cluster], own[rng.integers(len(own))]])
    return Items(item_id=list(truth.item_ids), title=titles, text=texts, categories=categories)


def synthetic_users(config: SyntheticConfig, truth: SyntheticTruth | None = None) -> Users:
    """Users with ``interest`` (the home theme 70% of the time) and a noise ``country``."""
    truth = truth or synthetic_truth(config)
    rng = np.random.default_rng([config.seed, 3])
    honest = rng.random(config.num_users) < 0.7
    random_cluster = rng.integers(config.num_clusters, size=config.num_users)
    interest_cluster = np.where(honest, truth.user_cluster, random_cluster)
    return Users(
        user_id=list(truth.user_ids),
        features={
            "interest": [truth.cluster_themes[c] for c in interest_cluster.tolist()],
            "country": [COUNTRIES[c] for c in rng.integers(len(COUNTRIES), size=config.num_users).tolist()],
        },
    )


def generate(config: SyntheticConfig | None = None) -> Dataset:
    """The whole synthetic dataset in memory: interactions, items and users."""
    config = config or SyntheticConfig()
    truth = synthetic_truth(config)
    interactions = Interactions.concat(list(iter_chunks(config, chunk_size=1 << 62)))
    report = LoadReport(rows_read=len(interactions))
    return Dataset(
        name="synthetic",
        interactions=interactions,
        items=synthetic_items(config, truth),
        users=synthetic_users(config, truth),
        report=report,
    )


#: ``write_synthetic`` formats.
SYNTHETIC_FORMATS = ("csv", "parquet")


def write_synthetic(out_dir: str | Path, config: SyntheticConfig | None = None, chunk_size: int = 100_000,
                    file_format: str = "csv", shards: int = 1) -> dict[str, Path]:
    """Write the interactions, ``items``, ``users`` and ``synthetic.json`` (the config).

    ``file_format="csv"``: ``interactions.csv``, ``items.csv``, ``users.csv``. ``"parquet"``:
    ``interactions/part-00000.parquet``... (``shards`` files, each holding whole users:
    user ``u`` of ``U`` is in shard ``u * shards // U``), ``items.parquet`` and
    ``users.parquet``. Interactions are written ``chunk_size`` rows at a time, so memory
    stays flat for any size. The directory loads back with ``load_dataset(out_dir)``.
    Returns the written paths by kind (``interactions`` is the shard directory for Parquet).
    """
    config = config or SyntheticConfig()
    if file_format not in SYNTHETIC_FORMATS:
        raise DataError(f"unknown format {file_format!r}; use one of {', '.join(SYNTHETIC_FORMATS)}")
    if shards < 1 or (shards > 1 and file_format != "parquet"):
        raise DataError(f"{shards} shards: shards are Parquet files, so use format parquet (or 1 shard)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if file_format == "parquet":
        return _write_synthetic_parquet(out, config, chunk_size, shards)
    truth = synthetic_truth(config)
    paths = {
        "interactions": out / "interactions.csv",
        "items": out / "items.csv",
        "users": out / "users.csv",
        "config": out / "synthetic.json",
    }
    with open(paths["interactions"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE, VALUE])
        for chunk in iter_chunks(config, chunk_size):
            writer.writerows(
                zip(chunk.user_id, chunk.item_id, chunk.timestamp.tolist(), chunk.event_type, chunk.value.astype(int).tolist())
            )
    items = synthetic_items(config, truth)
    with open(paths["items"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([ITEM_ID, TITLE, TEXT, CATEGORIES])
        for row in range(len(items)):
            writer.writerow([items.item_id[row], items.title[row], items.text[row], "|".join(items.categories[row])])
    users = synthetic_users(config, truth)
    with open(paths["users"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        features = list(users.features)
        writer.writerow([USER_ID, *features])
        for row in range(len(users)):
            writer.writerow([users.user_id[row], *(users.features[name][row] for name in features)])
    # The config, so the ground truth can be recomputed: synthetic_truth(SyntheticConfig(**json)).
    paths["config"].write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    return paths


def _interaction_schema():
    import pyarrow as pa

    return pa.schema([(USER_ID, pa.string()), (ITEM_ID, pa.string()), (TIMESTAMP, pa.int64()),
                      (EVENT_TYPE, pa.string()), (VALUE, pa.float32())])


def _interaction_table(events: Interactions):
    import pyarrow as pa

    columns = (events.user_id, events.item_id, events.timestamp, events.event_type, events.value)
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, _interaction_schema())],
                                schema=_interaction_schema())


def _write_synthetic_parquet(out: Path, config: SyntheticConfig, chunk_size: int, shards: int) -> dict[str, Path]:
    """:func:`write_synthetic` in Parquet: one shard open at a time (users come in order),
    written a block of users at a time in row groups of at most ``chunk_size`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = min(shards, config.num_users)  # each shard holds at least one user
    directory = out / "interactions"
    directory.mkdir(exist_ok=True)
    for stale in directory.glob("part-*.parquet"):  # an earlier run with more shards
        stale.unlink()
    writer: pq.ParquetWriter | None = None
    current, pending, pending_rows = -1, [], 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending and writer is not None:
            writer.write_table(pa.concat_tables(pending), row_group_size=chunk_size)
        pending, pending_rows = [], 0

    for user_index, events in iter_user_blocks(config):
        shard_of_row = user_index * shards // config.num_users
        for shard in np.unique(shard_of_row).tolist():
            if shard != current:
                flush()
                if writer is not None:
                    writer.close()
                current = shard
                writer = pq.ParquetWriter(directory / f"part-{shard:05d}.parquet", _interaction_schema())
            rows = events.take(np.flatnonzero(shard_of_row == shard))
            pending.append(_interaction_table(rows))
            pending_rows += len(rows)
            if pending_rows >= chunk_size:
                flush()
    flush()
    if writer is not None:
        writer.close()
    truth = synthetic_truth(config)
    items, users = synthetic_items(config, truth), synthetic_users(config, truth)
    paths = {"interactions": directory, "items": out / "items.parquet", "users": out / "users.parquet",
             "config": out / "synthetic.json"}
    pq.write_table(pa.table({ITEM_ID: items.item_id, TITLE: items.title, TEXT: items.text,
                             CATEGORIES: pa.array(items.categories, pa.list_(pa.string()))}), paths["items"])
    pq.write_table(pa.table({USER_ID: users.user_id, **users.features}), paths["users"])
    paths["config"].write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    return paths


#: Short names accepted in ``synthetic:key=value,...`` paths.
SPEC_ALIASES = {
    "users": "num_users",
    "items": "num_items",
    "clusters": "num_clusters",
    "events": "mean_events_per_user",
    "events_per_user": "mean_events_per_user",
}


def is_synthetic_spec(path: str | Path) -> bool:
    text = str(path)
    return text == SPEC_PREFIX or text.startswith(SPEC_PREFIX + ":")


def parse_synthetic_spec(path: str, defaults: dict[str, Any] | None = None) -> SyntheticConfig:
    """``"synthetic:users=2000,items=500,seed=1"`` -> a config (keys: aliases or field names)."""
    if not is_synthetic_spec(path):
        raise DataError(f"not a synthetic spec {path!r}; use 'synthetic:' or 'synthetic:users=2000,seed=1'")
    values: dict[str, Any] = dict(defaults or {})
    body = str(path)[len(SPEC_PREFIX) + 1 :]
    allowed = sorted(set(SPEC_ALIASES) | set(SyntheticConfig.model_fields))
    for part in filter(None, (piece.strip() for piece in body.split(","))):
        key, equals, value = part.partition("=")
        key = key.strip().replace("-", "_")
        field = SPEC_ALIASES.get(key, key)
        if not equals or field not in SyntheticConfig.model_fields:
            raise DataError(
                f"cannot read {part!r} in synthetic spec {path!r}; use key=value with keys from: {', '.join(allowed)}"
            )
        values[field] = value.strip()
    return parse_config(SyntheticConfig, values, what=f"synthetic spec {path!r}", error=DataError)


class SyntheticSource(DataSource):
    """``synthetic:`` or ``synthetic:users=2000,items=500,seed=1``: generated in memory."""

    name = "synthetic"
    description = "Generated data with known clusters and sequences: 'synthetic:users=2000,items=500,seed=1'."
    Options = SyntheticConfig

    def can_load(self, path: str) -> bool:
        return is_synthetic_spec(path)

    def load(self, path: str) -> Dataset:
        return generate(parse_synthetic_spec(path, defaults=self.options.model_dump(exclude_unset=True)))
