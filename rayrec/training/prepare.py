"""From a loaded dataset to the arrays training needs: vocabularies, sequences, item inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from rayrec.data import build_vocabularies, preprocess, user_sequences
from rayrec.data.splits import NO_TARGET, hold_out_last
from rayrec.errors import DataError
from rayrec.models.factory import ItemInputs
from rayrec.plugins import create_component
from rayrec.schema import Dataset, Items, LoadReport, Users, Vocabulary

#: Users need this many interactions to contribute a next-item training example.
MIN_SEQUENCE = 2
#: Users validated at most. Ranking every item for every validation user each epoch costs
#: more than the training itself on large catalogues; a sample of this size measures
#: NDCG@10 well enough to tell the candidate models apart.
MAX_VALIDATION_USERS = 10_000


@dataclass
class PreparedData:
    """Encoded training data. ``sequences[u]`` holds user u's 1-based item indices, oldest first."""

    name: str
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    sequences: list[np.ndarray]
    item_inputs: ItemInputs
    category_vocab: list[str] = field(default_factory=list)
    items: Items | None = None  # metadata aligned to item_vocab, where the data had it
    report: LoadReport = field(default_factory=LoadReport)
    user_features: np.ndarray | None = None  # (U, F) int64 "column=value" codes, 1-based, 0 = none
    user_feature_vocab: list[str] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.item_vocab)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def sequence_chunks(self) -> Iterator[list[np.ndarray]]:
        """Every user's sequence, in user order, a chunk at a time (here: all in one)."""
        yield self.sequences

    def in_memory(self) -> PreparedData:
        """This data with every sequence in this process (it already is)."""
        return self

    def to_payload(self) -> dict[str, Any]:
        """Compact, picklable form for shipping to Ray Train workers through the object store."""
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64)
        return {
            "lengths": lengths,
            "flat": flat,
            "num_items": self.num_items,
            "category_ids": self.item_inputs.category_ids,
            "num_categories": self.item_inputs.num_categories,
            "content": self.item_inputs.content,
            "user_features": self.user_features,
            "num_user_feature_values": len(self.user_feature_vocab),
        }


def user_ordered_chunks(sequence_dataset) -> Iterator[list[np.ndarray]]:
    """Every user's sequence in a :class:`~rayrec.data.ray_data.SequenceDataset`, in user
    order, a batch of users at a time."""
    next_user = 0
    for users, lengths, flat in sequence_dataset.iter_in_user_order():
        if len(users) and (users[0] != next_user or users[-1] != next_user + len(users) - 1):
            raise AssertionError(f"the sequence dataset skips users near user {next_user}")
        next_user += len(users)
        yield np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


@dataclass
class DatasetBackedData(PreparedData):
    """:class:`PreparedData` whose sequences stay in a Ray Dataset (``sequences`` is empty):
    each Ray Train worker reads its shard of them, and the model directory's histories are
    written from them a chunk at a time, so the driver never holds them all."""

    sequence_dataset: Any = None  # rayrec.data.ray_data.SequenceDataset
    interaction_count: int = 0

    @property
    def num_interactions(self) -> int:
        return self.interaction_count

    def sequence_chunks(self) -> Iterator[list[np.ndarray]]:
        return user_ordered_chunks(self.sequence_dataset)

    def in_memory(self) -> PreparedData:
        """A :class:`PreparedData` with every sequence read into this process: what a model
        fitted on one machine (ALS, EASE, a blend's validation shortlists) needs. Called in
        the model search's trials, never on the driver.

        The blocks are fetched as they are (no Ray Data task runs: a trial holding the
        cluster's CPUs would wait for one forever) and put in user order here."""
        import ray

        from rayrec.data.ray_data import sequence_columns

        sequences: list[np.ndarray | None] = [None] * len(self.user_vocab)
        for block in self.sequence_dataset.sequences.to_arrow_refs():
            users, lengths, flat = sequence_columns(ray.get(block))
            for user, sequence in zip(users.tolist(), np.split(flat, np.cumsum(lengths)[:-1]) if len(users) else []):
                sequences[user] = sequence
        missing = sum(sequence is None for sequence in sequences)
        if missing:
            raise AssertionError(f"the sequence dataset lacks {missing} of {len(sequences)} users")
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(PreparedData)}
        return PreparedData(**{**fields, "sequences": sequences})

    def to_payload(self) -> dict[str, Any]:
        """What every worker needs besides its shard of the sequences (the item inputs)."""
        payload = super().to_payload()
        del payload["lengths"], payload["flat"]
        return payload


def validation_split(sequences: list[np.ndarray], *, zero_based: bool = False,
                     max_users: int = MAX_VALIDATION_USERS) -> tuple[list[np.ndarray], np.ndarray]:
    """The validation split of every model ``rayrec train`` considers: training sequences and
    (U,) int64 validation targets, by :func:`rayrec.data.splits.hold_out_last` with one item.

    ``sequences`` are 1-based. Validation users are those with at least two items, or a
    fixed random ``max_users`` of them; their last item is held out, and the others train on
    their whole sequence. The result is 1-based with target 0 for none, or with
    ``zero_based`` 0-based with target -1 (the form the order-free fits and
    :func:`rayrec.evaluation.protocol.evaluate_ranking` take).
    """
    if zero_based:
        sequences = [s - 1 for s in sequences]
    train, held_out = hold_out_last(sequences, 1, max_users=max_users, missing=NO_TARGET if zero_based else 0)
    return train, held_out[:, 0].copy()


def sequences_from_payload(payload: dict[str, Any]) -> list[np.ndarray]:
    return np.split(payload["flat"], np.cumsum(payload["lengths"])[:-1]) if len(payload["lengths"]) else []


def _aligned_items(items: Items | None, item_vocab: Vocabulary) -> Items | None:
    if items is None:
        return None
    position = {item_id: i for i, item_id in enumerate(items.item_id)}
    records = []
    for item_id in item_vocab.ids:
        at = position.get(item_id)
        records.append(items.record(at) if at is not None else {"item_id": item_id, "title": "", "text": "", "categories": []})
    return Items(
        item_id=[r["item_id"] for r in records],
        title=[r["title"] for r in records],
        text=[r["text"] for r in records],
        categories=[list(r["categories"]) for r in records],
    )


def category_matrix(items: Items | None, num_items: int, category_vocab: list[str] | None = None,
                    max_categories: int = 16) -> tuple[np.ndarray | None, list[str]]:
    """(N + 1, C) int64 category indices per item (1-based, 0 = none) and the category names."""
    if items is None or not any(items.categories):
        return None, []
    if category_vocab is None:
        category_vocab = sorted({c for cats in items.categories for c in cats})
    index = {name: i + 1 for i, name in enumerate(category_vocab)}
    width = max(1, min(max_categories, max(len(c) for c in items.categories)))
    matrix = np.zeros((num_items + 1, width), dtype=np.int64)
    for row, cats in enumerate(items.categories):
        codes = [index[c] for c in cats if c in index][:width]
        matrix[row + 1, : len(codes)] = codes
    return matrix, category_vocab


def user_feature_matrix(users: Users | None, user_vocab: Vocabulary) -> tuple[np.ndarray | None, list[str]]:
    """(U, F) int64 codes of each user's categorical features as "column=value" (1-based, 0 =
    missing), aligned to ``user_vocab``, and the names of the codes."""
    if users is None or not users.features:
        return None, []
    columns = sorted(users.features)
    names = sorted({f"{column}={value}" for column in columns for value in users.features[column] if value != ""})
    code = {name: i + 1 for i, name in enumerate(names)}
    row_of = {user_id: i for i, user_id in enumerate(users.user_id)}
    matrix = np.zeros((len(user_vocab), len(columns)), dtype=np.int64)
    for row, user_id in enumerate(user_vocab.ids):
        at = row_of.get(user_id)
        if at is not None:
            for col, column in enumerate(columns):
                matrix[row, col] = code.get(f"{column}={users.features[column][at]}", 0)
    return matrix, names


def item_content(items: Items | None, extractors: list[dict[str, Any]], num_items: int) -> np.ndarray | None:
    """(N + 1, T) float32 content vectors from the configured feature extractors, concatenated."""
    if not extractors:
        return None
    if items is None:
        raise DataError("item feature extractors are configured, but the data has no items file (use --items FILE)")
    records = items.records()
    blocks = []
    for spec in extractors:
        extractor = create_component("feature_extractor", spec["name"], spec.get("options"))
        vectors = np.asarray(extractor.extract(records), dtype=np.float32)
        if vectors.shape[0] != num_items:
            raise DataError(f"feature extractor {spec['name']!r} returned {vectors.shape[0]} rows for {num_items} items")
        blocks.append(vectors)
    content = np.concatenate(blocks, axis=1)
    return np.vstack([np.zeros((1, content.shape[1]), np.float32), content])


def prepare(dataset: Dataset, *, rating_threshold: float | None = None, kcore: int | None = None,
            item_feature_extractors: list[dict[str, Any]] | None = None,
            use_categories: bool = True) -> PreparedData:
    """Clean, encode and order ``dataset`` for next-item training."""
    dataset = preprocess(dataset, rating_threshold=rating_threshold, kcore=kcore)
    if len(dataset.interactions) == 0:
        raise DataError(f"dataset {dataset.name!r} has no interactions left after preprocessing")
    user_vocab, item_vocab = build_vocabularies(dataset.interactions)
    sequences = [s + 1 for s in user_sequences(dataset.interactions, user_vocab, item_vocab)]
    items = _aligned_items(dataset.items, item_vocab)
    category_ids, category_vocab = category_matrix(items, len(item_vocab)) if use_categories else (None, [])
    content = item_content(items, item_feature_extractors or [], len(item_vocab))
    user_features, user_feature_vocab = user_feature_matrix(dataset.users, user_vocab)
    return PreparedData(
        name=dataset.name,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        sequences=sequences,
        item_inputs=ItemInputs(category_ids=category_ids, num_categories=len(category_vocab), content=content),
        category_vocab=category_vocab,
        items=items,
        report=dataset.report,
        user_features=user_features,
        user_feature_vocab=user_feature_vocab,
    )


def load_training_data(interactions: str | Sequence[str], items: str | None, users: str | None, config,
                       echo: Callable[[str], None] = print, ray_data: bool = False) -> PreparedData:
    """Load the data at these paths (one or several interactions inputs, combined by
    :func:`rayrec.data.load_datasets`, which drops erased users from all of them) and
    :func:`prepare` it as ``config`` (a :class:`rayrec.training.config.TrainConfig`) says,
    telling ``echo`` what preprocessing did.

    ``ray_data``: when every input is Parquet (or big CSV/TSV), read and preprocess it with Ray Data instead
    (:func:`prepare_with_ray_data`); the caller says whether the training that follows can
    take a :class:`DatasetBackedData` (Ray Train workers reading their shards and the model
    search's trials can; in-process training needs every sequence in this process)."""
    from rayrec.data import load_datasets
    from rayrec.data.ray_data import UnparsableRows, ray_data_input

    paths = [interactions] if isinstance(interactions, (str, Path)) else list(interactions)
    source = ray_data_input(paths, config.data.ray_data_min_delimited_mb * 2**20)
    data = None
    if source is not None and ray_data and config.data.ray_data:
        echo(f"data: reading {source.describe()} with Ray Data; each training worker reads its own shard of the "
             "users")
        try:
            data = prepare_with_ray_data(source, items, users, config)
        except UnparsableRows as exc:
            echo(f"data: some rows do not split into the header's fields ({exc}); reading the input in memory, "
                 "which names each such line")
    if data is None:
        if source is not None and config.data.ray_data and not ray_data:
            echo(f"data: reading {source.describe()} in memory, as in-process training needs every sequence "
                 "here; without --in-process they are read with Ray Data")
        if source is not None and not source.local:
            raise DataError("the in-memory reader reads local files only; train on a URI without --in-process "
                            "(Ray Data reads it)", path=str(paths[0]))
        # The in-memory loaders take local paths; a file:// URI names one.
        paths = [str(p)[len("file://"):] if str(p).startswith("file://") else p for p in paths]
        dataset = load_datasets(paths, items=items, users=users)
        data = prepare(dataset, rating_threshold=config.data.rating_threshold, kcore=config.data.kcore,
                       item_feature_extractors=[f.model_dump() for f in config.item_features])
    for line in data.report.lines():
        echo(f"data: {line}")
    echo(f"data: {len(data.user_vocab):,} users, {data.num_items:,} items, {data.num_interactions:,} interactions")
    return data


def prepare_with_ray_data(source, items: str | None, users: str | None, config) -> DatasetBackedData:
    """Every user's sequence built by Ray Data from ``source`` (a
    :class:`rayrec.data.ray_data.FileInput`), and the item and user metadata (the
    ``--items``/``--users`` files, else those next to the shards) read here: they grow with
    the catalogue and the users, not with the interactions."""
    from rayrec.data import load_items_file, load_users_file
    from rayrec.data.ray_data import read_sequences
    from rayrec.training.trainer import ensure_ray

    ensure_ray((config.num_workers or 1) * (config.cpus_per_worker or 1))
    sequences = read_sequences(source, rating_threshold=config.data.rating_threshold, kcore=config.data.kcore)
    report = sequences.report
    items_path, users_path = items or source.items_path, users or source.users_path
    item_table = load_items_file(items_path, report=report) if items_path else None
    user_table = load_users_file(users_path, report=report) if users_path else None
    aligned = _aligned_items(item_table, sequences.item_vocab)
    category_ids, category_vocab = category_matrix(aligned, len(sequences.item_vocab))
    content = item_content(aligned, [f.model_dump() for f in config.item_features], len(sequences.item_vocab))
    user_features, user_feature_vocab = user_feature_matrix(user_table, sequences.user_vocab)
    return DatasetBackedData(
        name=sequences.name, user_vocab=sequences.user_vocab, item_vocab=sequences.item_vocab, sequences=[],
        item_inputs=ItemInputs(category_ids=category_ids, num_categories=len(category_vocab), content=content),
        category_vocab=category_vocab, items=aligned, report=report, user_features=user_features,
        user_feature_vocab=user_feature_vocab, sequence_dataset=sequences,
        interaction_count=sequences.num_interactions)


def with_item_features(data: PreparedData, config) -> PreparedData:
    """``data`` with the content vectors of ``config.item_features`` (a selection candidate's
    feature extractors); ``data`` itself when it already has content or none is configured."""
    if data.item_inputs.content is not None or not config.item_features:
        return data
    content = item_content(data.items, [f.model_dump() for f in config.item_features], data.num_items)
    inputs = dataclasses.replace(data.item_inputs, content=content)
    return dataclasses.replace(data, item_inputs=inputs)
