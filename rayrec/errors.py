"""Errors shown to users. Each message says what was wrong, where, and what to do."""

from __future__ import annotations


class RayrecError(Exception):
    """Base class: the CLI prints these as ``Error: <message>`` without a traceback."""


class PluginError(RayrecError):
    """A plugin registered something invalid (wrong base class, duplicate name)."""


class UnknownComponentError(RayrecError, KeyError):
    """A component name was asked for that no plugin registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DataError(RayrecError):
    """Input data is missing, malformed or empty; the message names the file and line/column."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, column: str | None = None):
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.line = line
        self.column = column


class ModelError(RayrecError):
    """A model directory is missing files, inconsistent or corrupt."""


class ConfigError(RayrecError):
    """A configuration file or option is invalid; the message names the field."""


def validation_problems(exc) -> str:
    """A pydantic ``ValidationError`` as one line; kept here for code that imports it from
    this module, the function is :func:`rayrec.config.validation_problems`."""
    from rayrec.config import validation_problems as one_line

    return one_line(exc)
