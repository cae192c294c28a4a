"""Online state (event log, user state, item catalogue) behind a pluggable store.

:func:`open_state_store` picks the registered store whose name (or one of whose ``schemes``)
matches the URL scheme; a plain file path means SQLite. :mod:`rayrec.state.event_log` reads
a store's event log back as training data.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from rayrec.errors import ConfigError, UnknownComponentError
from rayrec.state.base import AppendResult, BaseStateStore, CatalogChange, ModelGeneration, UserState

__all__ = [
    "AppendResult",
    "BaseStateStore",
    "CatalogChange",
    "ModelGeneration",
    "UserState",
    "open_state_store",
    "store_class",
]


def store_class(url: str) -> type[BaseStateStore] | None:
    """The registered state store for ``url``'s scheme (a plain path means SQLite), or None."""
    from rayrec import plugins

    scheme = urlparse(url).scheme if "://" in url else "sqlite"
    registry = plugins.registry()
    for name in registry.names("state_store"):
        cls = registry.get("state_store", name)
        if scheme == name or scheme in getattr(cls, "schemes", ()):
            return cls
    return None


def open_state_store(url: str, **options: Any) -> BaseStateStore:
    """Open the state store named by ``url`` (``sqlite:///path.db``, ``redis://...``, or a path)."""
    from rayrec import plugins

    if not url:
        raise ConfigError("state: empty URL; use sqlite:///path/to/state.db or a file path")
    chosen = store_class(url)
    if chosen is None:
        scheme = urlparse(url).scheme if "://" in url else "sqlite"
        available = ", ".join(plugins.registry().names("state_store")) or "(none)"
        raise UnknownComponentError(f"state URL {url!r}: no state store for scheme {scheme!r}; available: {available}")
    if hasattr(chosen, "from_url"):
        return chosen.from_url(url, **options)
    return chosen({"url": url, **options})
