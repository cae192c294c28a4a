"""A model directory's item metadata is mapped and read a record at a time, not loaded as a dict
per process; a scorer keeps only the records the catalogue changed on top of it."""

from __future__ import annotations

import json
import pickle
import tracemalloc

import pytest

from rayrec.models import item_records as item_records_module
from rayrec.models.item_records import (FILTERS_FILE, OFFSETS_FILE, ItemRecords, read_item_records, record_matches,
                                        write_item_records)
from rayrec.models.servable import load_model_dir
from rayrec.schema import Vocabulary
from rayrec.serving.graph.model_loading import item_records
from rayrec.serving.schemas import ItemIn
from rayrec.state import open_state_store

from test_serving_logic import Pipeline, StandInModel, click


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    data = generate(SyntheticConfig(num_users=40, num_items=30, num_clusters=2, mean_events_per_user=8))
    return train_in_process(data, tmp_path_factory.mktemp("records") / "model",
                            TrainConfig(epochs=1, model={"dim": 8, "max_len": 10}), log=lambda line: None)


def test_a_trained_models_item_metadata_is_mapped_and_answers_like_the_file(trained_dir, tmp_path):
    model = load_model_dir(trained_dir)
    lines = [json.loads(line) for line in (trained_dir / "items.jsonl").read_text().splitlines()]
    # model.items is still the file's records in row order, as the list was; by id for scorers.
    assert isinstance(model.items, ItemRecords) and model.items == lines and list(model.items) == lines
    assert len(model.items) == len(model.item_ids) and model.items[-1] == lines[-1] and model.items[1:3] == lines[1:3]
    by_id = item_records(model, trained_dir)
    assert by_id is model.items.by_id and list(by_id) == list(model.item_ids)  # a view, not a copy
    for line in lines:
        assert by_id[line["item_id"]] == line and line["item_id"] in by_id
        assert line["title"]  # synthetic items have titles: the records are really read
    assert by_id.get("no-such-item") is None and "no-such-item" not in by_id and 7 not in by_id
    with pytest.raises(KeyError):
        by_id["no-such-item"]
    with pytest.raises(IndexError):
        model.items[len(lines)]
    # A copy (a Ray task argument) maps the file again and answers the same.
    copied = pickle.loads(pickle.dumps(model.items))
    assert copied == lines and dict(copied.by_id.items()) == dict(by_id.items())
    # A directory from before the offsets were written loads the records as a list, as before.
    (trained_dir / OFFSETS_FILE).rename(tmp_path / OFFSETS_FILE)
    try:
        assert load_model_dir(trained_dir).items == lines
    finally:
        (tmp_path / OFFSETS_FILE).rename(trained_dir / OFFSETS_FILE)


def records(count: int):
    return [{"item_id": f"item-{i:06d}", "title": f"A title for item {i}", "text": "Some words about it. " * 8,
             "categories": [f"genre-{i % 20}", "all"]} for i in range(count)]


def test_mapped_records_cost_a_fraction_of_the_loaded_ones(tmp_path):
    many = records(20_000)
    vocabulary = Vocabulary(r["item_id"] for r in many)
    write_item_records(tmp_path, many, vocabulary.ids)

    def peak_mb(read) -> float:
        tracemalloc.start()
        try:
            loaded = read()
            assert loaded[12345]["categories"] == ["genre-5", "all"]
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    mapped = peak_mb(lambda: read_item_records(tmp_path, vocabulary))
    (tmp_path / OFFSETS_FILE).unlink()
    loaded = peak_mb(lambda: read_item_records(tmp_path, vocabulary))
    assert loaded > 10 and mapped < 0.5, (mapped, loaded)  # 20k records: ~18 MB loaded, ~0 mapped


def test_records_not_in_the_vocabularys_order_are_loaded_as_a_list(tmp_path):
    some = records(5)
    write_item_records(tmp_path, some, [r["item_id"] for r in reversed(some)])
    assert not (tmp_path / OFFSETS_FILE).exists()
    assert read_item_records(tmp_path, Vocabulary(r["item_id"] for r in reversed(some))) == some
    write_item_records(tmp_path, some[:4], [r["item_id"] for r in some])  # fewer records than items
    assert not (tmp_path / OFFSETS_FILE).exists()
    assert read_item_records(tmp_path / "elsewhere", Vocabulary()) is None  # no items.jsonl: no metadata


def mixed_records(count: int) -> list[dict]:
    """Attributes of every shape a filter meets: a list (with a repeat and a number in it), a
    string, a number, a flag, a missing and a null value, and a title unique to each item."""
    return [{"item_id": f"item-{i}", "title": f"Title {i}", "categories": [f"genre-{i % 3}", "all", "all", 7],
             "brand": f"brand-{i % 4}", "year": 1990 + i % 5, "in_stock": i % 2 == 0,
             **({"colour": None} if i % 3 == 0 else {"colour": ["red", "blue"][i % 2]})} for i in range(count)]


def test_filters_are_answered_from_the_exported_index_as_a_scan_answers_them(tmp_path, monkeypatch):
    monkeypatch.setattr(item_records_module, "MAX_INDEXED_VALUES", 8)  # so the titles (20 values) are not indexed
    many = mixed_records(20)
    vocabulary = Vocabulary(r["item_id"] for r in many)
    write_item_records(tmp_path, many, vocabulary.ids)
    by_id = read_item_records(tmp_path, vocabulary).by_id
    assert set(by_id._indexed) == {"categories", "brand", "year", "in_stock", "colour"}  # read, not scanned
    assert by_id.attribute_names() == {"title", "categories", "brand", "year", "in_stock", "colour"}
    asked = [(key, value) for key in ("categories", "brand", "year", "in_stock", "colour", "title")
             for value in {str(v) for r in many for v in (r.get(key) if isinstance(r.get(key), list) else [r.get(key)])}
             | {"no-such-value", "7", "None"}]
    for key, value in asked:
        scanned = [row for row, record in enumerate(many) if record_matches(record, key, value)]
        assert by_id.matching_rows(key, value).tolist() == scanned, (key, value)
    assert by_id.matching_rows("categories", "all").tolist() == list(range(20))  # "all" listed twice: once
    assert by_id.matching_rows("year", "1992").tolist() == [2, 7, 12, 17]
    assert by_id.matching_rows("in_stock", "True").tolist() == list(range(0, 20, 2))
    assert by_id.matching_rows("title", "Title 3").tolist() == [3]  # not indexed: found by a scan


def test_a_filter_index_written_for_other_records_is_not_used(tmp_path):
    many = mixed_records(6)
    vocabulary = Vocabulary(r["item_id"] for r in many)
    write_item_records(tmp_path, many, vocabulary.ids)
    index = (tmp_path / FILTERS_FILE).read_text()
    changed = [{**record, "brand": "other"} for record in many]
    write_item_records(tmp_path, changed, vocabulary.ids)
    (tmp_path / FILTERS_FILE).write_text(index)  # the old records' index beside the new records
    by_id = read_item_records(tmp_path, vocabulary).by_id
    assert by_id.matching_rows("brand", "other").tolist() == list(range(6))
    assert by_id.matching_rows("brand", "brand-1").tolist() == []
    write_item_records(tmp_path, many, list(reversed(vocabulary.ids)))  # not in row order: no index either
    assert not (tmp_path / FILTERS_FILE).exists()


class MappedStandIn(StandInModel):
    """The serving tests' stand-in with its metadata in a mapped items.jsonl, as a trained model has."""

    def __init__(self, directory) -> None:
        super().__init__()
        self.item_vocab = Vocabulary(self.item_ids)
        write_item_records(directory, StandInModel.item_records(self).values(), self.item_ids)
        self.items = read_item_records(directory, self.item_vocab)
        assert isinstance(self.items, ItemRecords)

    def item_records(self):
        return self.items.by_id


def test_a_scorer_filters_and_describes_from_mapped_records_and_the_catalogues_changes(tmp_path):
    model, store = MappedStandIn(tmp_path), open_state_store(str(tmp_path / "state.db"))
    try:
        pipeline = Pipeline(model, store)
        store.append_events([click("dan", "c0")])
        assert set(pipeline.ids(user_id="dan", k=30, filters={"categories": "Horror"})) == {f"c{i}" for i in range(1, 10)}
        assert pipeline.scorer.item("b3")["title"] == "b3"
        # A trained item moves to another category, a new one arrives, a trained one is deleted:
        # the filters and the metadata follow, in this replica and in another one.
        pipeline.scorer.put_item("c5", ItemIn(title="Now a comedy", categories=["Comedy"]))
        pipeline.scorer.put_item("new-horror", ItemIn(title="Fresh", categories=["Horror"], text="boo"))
        pipeline.scorer.delete_item("c7")
        for replica in (pipeline, Pipeline(model, store)):
            horror = set(replica.ids(user_id="dan", k=30, filters={"categories": ["Horror"]}))
            assert horror == {f"c{i}" for i in (1, 2, 3, 4, 6, 8, 9)} | {"new-horror"}
            assert "c5" in replica.ids(user_id="dan", k=30, filters={"categories": ["Comedy"]})
            assert replica.scorer.item("c5")["title"] == "Now a comedy"
            assert replica.scorer.item("new-horror")["text"] == "boo"
            assert replica.scorer.records["a0"]["categories"] == ["Comedy"]  # untouched ones come from the file
            assert len(replica.scorer.records.changed) == 2  # only the changes are held (c5, new-horror)
    finally:
        store.close()
