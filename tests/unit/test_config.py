"""Config input (rayrec.config): one-line messages naming the file and the field."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayrec.config import parse_config, read_yaml_mapping, validation_problems
from rayrec.data import parse_synthetic_spec
from rayrec.errors import ConfigError, DataError
from rayrec.training.config import load_train_config


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(1, ge=1)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: Inner = Field(default_factory=Inner)
    low: int = 0
    high: int = 1

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


def test_validation_problems_are_one_line_with_field_paths():
    with pytest.raises(Exception) as info:
        Outer(inner={"size": 0, "colour": "red"})
    line = validation_problems(info.value)
    assert "\n" not in line
    assert line.startswith("inner.size: Input should be greater than or equal to 1; inner.colour: Extra inputs")


def test_a_whole_model_problem_has_no_field_and_no_pydantic_prefix():
    with pytest.raises(ConfigError) as info:
        parse_config(Outer, {"low": 3, "high": 2}, what="range", where="file.yaml")
    assert str(info.value) == "file.yaml: invalid range: low (3) must not exceed high (2)"


def test_read_yaml_mapping_names_the_file(tmp_path):
    assert read_yaml_mapping(_write(tmp_path, "empty.yaml", "")) == {}
    assert read_yaml_mapping(_write(tmp_path, "ok.yaml", "a: 1\nb: {c: 2}\n")) == {"a": 1, "b": {"c": 2}}
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        read_yaml_mapping(_write(tmp_path, "bad.yaml", "a: [1,\n"))
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping .* got list"):
        read_yaml_mapping(_write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_training_config_and_synthetic_spec_errors_read_the_same(tmp_path):
    path = _write(tmp_path, "train.yaml", "epochs: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid training config: epochs: Input should be greater"):
        load_train_config(path)
    with pytest.raises(DataError, match=r"^invalid synthetic spec 'synthetic:items=2,clusters=5': num_items .* num_clusters"):
        parse_synthetic_spec("synthetic:items=2,clusters=5")


def _write(directory, name: str, text: str):
    path = directory / name
    path.write_text(text)
    return path
