"""Configuration input, in one place: YAML files read into mappings, and pydantic validation
errors turned into one-line messages that name the file and the field.

Every config reader uses these (``rayrec train --config``, data-source options, synthetic
specs), so a mistake reads the same wherever it is made: ``FILE: invalid WHAT: field: problem``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rayrec.errors import ConfigError, RayrecError

ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


def validation_problems(exc: ValidationError) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message; ...``.

    Pydantic's ``"Value error, "`` prefix is dropped; a problem of the whole model (a model
    validator's) has no field path, so its message stands alone.
    """
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping at the top level of the YAML file ``path`` (``{}`` for an empty file).

    Raises :class:`ConfigError` naming the file when it is missing, is not valid YAML, or holds
    something other than a mapping of options.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, got {type(raw).__name__}")
    return raw


def parse_config(model: type[ConfigModel], values: dict[str, Any], *, what: str, where: str | Path | None = None,
                 error: type[RayrecError] = ConfigError) -> ConfigModel:
    """``model(**values)``, or ``error`` in one line: ``where: invalid what: field: problem; ...``.

    ``where`` names the source (a file path, a spec string), ``what`` the thing configured
    (``"training config"``, ``"options for data source 'x'"``).
    """
    try:
        return model(**values)
    except ValidationError as exc:
        prefix = f"{where}: " if where is not None else ""
        raise error(f"{prefix}invalid {what}: {validation_problems(exc)}") from None
