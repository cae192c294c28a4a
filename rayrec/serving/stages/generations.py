"""Per-replica model slots: every request is pinned to one model generation end to end.

The preprocessor reads the live generation from the state store and every later stage uses
the model of *that* generation, so a request never mixes the user tower of one model with
the item vectors of another during a reload. Each replica keeps the last ``keep``
generations loaded; a generation it has not loaded yet (a replica started later, or one the
reload broadcast missed) is loaded on first use, so a reload never fails a request.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

from rayrec.errors import ModelError
from rayrec.state.base import BaseStateStore, ModelGeneration

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Generations a replica never unloads to make room: the live one and experiment arms.
PINNED_STATUSES = ("active", "arm")


class ModelSlots(Generic[T]):
    """Stage logic by model generation, built with ``build(generation_record)``."""

    def __init__(self, store: BaseStateStore, build: Callable[[ModelGeneration], T], keep: int = 2) -> None:
        self.store = store
        self.build = build
        self.keep = keep
        self._slots: OrderedDict[int, T] = OrderedDict()
        self._lock = threading.Lock()

    def live_generation(self) -> int:
        live = self.store.model_generation()
        if live is None:
            raise ModelError("no model is live in the state store; start the app with a model directory")
        return live.generation

    def has(self, generation: int) -> bool:
        return generation in self._slots

    def get(self, generation: int | None = None) -> T:
        """The logic for ``generation`` (the live one when None), loading it if needed."""
        if generation is None:
            generation = self.live_generation()
        logic = self._slots.get(generation)
        if logic is not None:
            return logic
        return self.load(generation)

    def load(self, generation: int) -> T:
        with self._lock:
            if generation in self._slots:
                return self._slots[generation]
            record = self.store.model_generation(generation)
            if record is None:
                raise ModelError(f"unknown model generation {generation}")
            logger.info("loading model generation %d from %s", generation, record.model_dir)
            logic = self.build(record)
            self._slots[generation] = logic
            # Keep the newest generations (in-flight requests may still use the previous one),
            # and always the live one and a running experiment's arms, however many there are.
            while len(self._slots) > self.keep:
                evictable = [g for g in self._slots if g != generation and not self._pinned(g)]
                if not evictable:
                    break
                self._slots.pop(min(evictable))
            return logic

    def _pinned(self, generation: int) -> bool:
        record = self.store.model_generation(generation)
        return record is not None and record.status in PINNED_STATUSES

    def loaded(self) -> list[int]:
        return sorted(self._slots)
