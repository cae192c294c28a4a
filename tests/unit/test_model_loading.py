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
