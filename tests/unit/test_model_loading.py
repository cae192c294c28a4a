"""One model loader, ``rayrec.models.servable.load_model_dir``, for every kind, the toy model included."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import rayrec
from rayrec.errors import ModelError
from rayrec.models.servable import load_model_dir, model_kind
from rayrec.testing import ToyModel, write_toy_model

PACKAGE = Path(rayrec.__file__).parent


def test_the_toy_model_is_a_model_kind_the_one_loader_dispatches_on(tmp_path):
    model_dir = write_toy_model(tmp_path / "toy", num_items=40, dim=8, num_users=5)
    assert model_kind(model_dir) == "toy"
    model = load_model_dir(model_dir)
    assert isinstance(model, ToyModel) and model.version == "toy-1" and len(model.item_ids) == 40
    np.testing.assert_array_equal(model.item_embeddings, np.load(model_dir / "item_embeddings.npy"))
    assert model.training_history("user0") and model.training_history("nobody") == []


def test_a_missing_directory_is_a_model_error_naming_it(tmp_path):
    with pytest.raises(ModelError, match="missing.*does not exist"):
        load_model_dir(tmp_path / "missing")


def test_serving_has_no_toy_special_case_and_calls_the_one_loader():
    serving = PACKAGE / "serving"
    for path in [*(serving / "graph").rglob("*.py"), *(serving / "stages").rglob("*.py"), serving / "app.py"]:
        source = path.read_text()
        assert "toy" not in source.lower(), f"{path} mentions the toy model"
        called = {node.func.id for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert "load_model" not in called, f"{path} calls load_model, not load_model_dir"


def test_the_old_loaders_and_the_old_toy_module_still_work_and_say_what_to_use(tmp_path):
    model_dir = write_toy_model(tmp_path / "toy", num_items=10, dim=4, num_users=2)
    from rayrec.models.trained import load_model as trained_load_model
    from rayrec.serving.graph.model_loading import load_model as serving_load_model

    for old in (trained_load_model, serving_load_model):
        with pytest.deprecated_call(match="rayrec.models.servable.load_model_dir"):
            assert isinstance(old(model_dir), ToyModel)

    import importlib
    import sys

    sys.modules.pop("rayrec.serving.toy_model", None)
    with pytest.deprecated_call(match="from rayrec.testing"):
        old_module = importlib.import_module("rayrec.serving.toy_model")
    assert old_module.write_toy_model is write_toy_model
    assert json.loads((old_module.write_toy_model(tmp_path / "old") / "config.json").read_text())["model_kind"] == "toy"


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    data = generate(SyntheticConfig(num_users=40, num_items=30, num_clusters=2, mean_events_per_user=8))
    return train_in_process(data, tmp_path_factory.mktemp("histories") / "model",
                            TrainConfig(epochs=1, model={"dim": 8, "max_len": 10}), log=lambda line: None), data


def test_training_histories_are_memory_mapped_not_held_per_user(trained_dir):
    """Each serving replica maps one file instead of holding a list of one array per user."""
    model_dir, data = trained_dir
    model = load_model_dir(model_dir)
    assert isinstance(model._histories.items, np.memmap)
    from rayrec.models.vocabulary_files import MappedVocabulary

    assert isinstance(model.user_vocab, MappedVocabulary)  # and so are the user ids
    from rayrec.training.prepare import prepare

    prepared = prepare(data)
    for user, sequence in zip(prepared.user_vocab.ids, prepared.sequences):
        assert model.training_history(user) == prepared.item_vocab.decode(sequence - 1)


def test_a_model_directory_with_the_older_histories_file_still_loads(trained_dir, tmp_path):
    import shutil

    from rayrec.models.histories import ITEMS_FILE, OFFSETS_FILE

    model_dir, _ = trained_dir
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    items, offsets = np.load(old / ITEMS_FILE), np.load(old / OFFSETS_FILE)
    np.savez_compressed(old / "histories.npz", lengths=np.diff(offsets), items=items)
    (old / ITEMS_FILE).unlink()
    (old / OFFSETS_FILE).unlink()
    new_model, old_model = load_model_dir(model_dir), load_model_dir(old)
    assert len(old_model._histories) == len(new_model._histories)
    for user in range(len(new_model._histories)):
        np.testing.assert_array_equal(old_model._histories[user], new_model._histories[user])
    # A directory from before the user ids were also written as arrays reads them from the JSON.
    for path in old.glob("user_vocab.*.npy"):
        path.unlink()
    older = load_model_dir(old)
    assert type(older.user_vocab).__name__ == "Vocabulary" and older.user_vocab.ids == new_model.user_vocab.ids
    assert [older.training_history(u) for u in older.user_vocab.ids] == \
        [new_model.training_history(u) for u in new_model.user_vocab.ids]
    (old / "histories.npz").unlink()
    with pytest.raises(ModelError, match="missing history_items.npy and history_offsets.npy"):
        load_model_dir(old)
