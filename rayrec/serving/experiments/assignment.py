"""Which arm a user sees: a stable hash of the user (or session) id and the experiment's salt.

The hash depends on nothing but those strings, so every replica on every machine, and every
request, puts a user in the same arm; a new salt reshuffles everybody.
"""

from __future__ import annotations

import hashlib
from typing import Sequence


def unit_position(unit_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by ``unit_id`` and ``salt`` (SHA-256, not Python's
    ``hash``, which differs between processes)."""
    digest = hashlib.sha256(f"{salt}\x00{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_arm(unit_id: str, salt: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm of ``unit_id``: arms ``(name, share)`` cover [0, 1) in order, by their shares."""
    position = unit_position(unit_id, salt)
    upper = 0.0
    for name, share in arms:
        upper += share
        if position < upper:
            return name
    return next(name for name, share in reversed(arms) if share > 0)  # shares summing to 1 - epsilon
