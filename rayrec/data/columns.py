"""Converting raw columns to the schema's types, marking the rows that cannot be converted.

Every function takes an (n,) array as read (strings from text files, typed arrays from Parquet)
and returns the converted (n,) array plus an (n,) boolean ``bad`` mask; the caller skips and
reports the bad rows. Whole columns are converted at once when they are clean (fast), and only
fall back to a per-value loop to find the bad ones.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np


def _id_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        if value.is_integer():
            return str(int(value))  # 7.0 from a float Parquet column means id "7"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def parse_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids as an (n,) object array of stripped str; empty or missing ids are bad.

    Ids are opaque: ``"007"`` stays ``"007"``. Integer columns (Parquet) become their decimal
    text; floats with integral values (ints that went through a float column) drop the ``.0``.
    """
    if values.dtype.kind in "iu":
        return values.astype(str).astype(object), np.zeros(len(values), dtype=bool)
    ids = parse_labels(values)
    return ids, ids == ""


def timestamp_from_text(text) -> int | None:
    """Unix seconds from one value: a number (seconds) or an ISO-8601 datetime; else None.

    Datetimes without a timezone are taken as UTC. Fractional seconds are floored.
    """
    if text is None:
        return None
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return int(text)
    if isinstance(text, (float, np.floating)):
        return int(math.floor(text)) if math.isfinite(text) else None
    if isinstance(text, datetime):
        moment = text
    else:
        text = str(text).strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            return int(math.floor(number)) if math.isfinite(number) else None
        try:
            # Python 3.11 parses most ISO-8601 forms, including a trailing "Z".
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(math.floor(moment.timestamp()))


def parse_timestamps(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds as (n,) int64 from numbers, numeric strings or ISO-8601 strings.

    Bad rows (anything else, missing values) get timestamp 0 and ``bad=True``.
    """
    n = len(values)
    no_bad = np.zeros(n, dtype=bool)
    kind = values.dtype.kind
    if kind in "iu":
        return values.astype(np.int64), no_bad
    if kind == "f":
        bad = ~np.isfinite(values)
        return np.where(bad, 0, np.floor(np.where(bad, 0, values))).astype(np.int64), bad
    if kind == "M":
        bad = np.isnat(values)
        seconds = values.astype("datetime64[s]").astype(np.int64)
        return np.where(bad, 0, seconds), bad
    # Text: whole-column conversions first (fast), the per-value loop only when they fail.
    try:
        return values.astype(np.int64), no_bad
    except (ValueError, TypeError, OverflowError):
        pass
    try:
        as_float = values.astype(np.float64)
        if np.isfinite(as_float).all():
            return np.floor(as_float).astype(np.int64), no_bad
    except (ValueError, TypeError, OverflowError):
        pass
    parsed = [timestamp_from_text(value) for value in values]
    bad = np.fromiter((value is None for value in parsed), dtype=bool, count=n)
    timestamps = np.fromiter((0 if value is None else value for value in parsed), dtype=np.int64, count=n)
    return timestamps, bad


def _float_or_nan(value) -> float | None:
    """A float, NaN for a missing/empty value, or None when the value is not a number."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def parse_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Event values (ratings, weights) as (n,) float32; empty means NaN, non-numbers are bad."""
    n = len(values)
    if values.dtype.kind in "iuf":
        return values.astype(np.float32), np.zeros(n, dtype=bool)
    try:
        return values.astype(np.float32), np.zeros(n, dtype=bool)
    except (ValueError, TypeError):
        pass
    parsed = [_float_or_nan(value) for value in values]
    bad = np.fromiter((value is None for value in parsed), dtype=bool, count=n)
    numbers = np.fromiter((0.0 if value is None else value for value in parsed), dtype=np.float32, count=n)
    return numbers, bad


def parse_labels(values: np.ndarray) -> np.ndarray:
    """Free categorical text (event types, user features) as an (n,) object array of str."""
    out = np.empty(len(values), dtype=object)
    try:
        out[:] = [value.strip() for value in values.tolist()]  # all str: the fast, common case
    except AttributeError:
        out[:] = [_id_text(value) for value in values.tolist()]
    return out


def split_categories(value, separator: str = "|") -> list[str]:
    """``"a|b"`` (or a list, from JSON/Parquet) -> ``["a", "b"]``, dropping empty entries."""
    if value is None:
        return []
    if isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [str(part).strip() for part in value if part is not None]
    else:
        parts = [part.strip() for part in str(value).split(separator)]
    return [part for part in parts if part]
