"""Plugin discovery and the component registry.

Plugins come from three places, in this order: rayrec's built-ins (``rayrec.builtin``), the
``rayrec`` entry-point group of installed packages, and plugins registered at run time with
:func:`register_plugin`. ``RAYREC_LOAD_PLUGINS`` restricts which installed plugins load:
unset loads all, an empty string loads none, ``a,b`` loads only those entry-point names.
Built-ins always load.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import pluggy

from rayrec import hookspecs
from rayrec.components import COMPONENT_KINDS, Component
from rayrec.errors import PluginError, UnknownComponentError

ENTRY_POINT_GROUP = "rayrec"
LOAD_PLUGINS_ENV = "RAYREC_LOAD_PLUGINS"

#: Built-in plugin modules, registered through the very hooks third parties use.
BUILTIN_PLUGINS = (
    "rayrec.builtin.candidate_sources",
    "rayrec.builtin.data_sources",
    "rayrec.builtin.encoders",
    "rayrec.builtin.scorers",
    "rayrec.builtin.state_stores",
)

# hook name -> component kind it registers
_REGISTRATION_HOOKS = {
    "register_feature_extractors": "feature_extractor",
    "register_encoders": "encoder",
    "register_scorers": "scorer",
    "register_candidate_sources": "candidate_source",
    "register_feedback_handlers": "feedback_handler",
    "register_data_sources": "data_source",
    "register_state_stores": "state_store",
}

pm = pluggy.PluginManager("rayrec")
pm.add_hookspecs(hookspecs)

_loaded = False
_registry_cache: "Registry | None" = None


def _load_entry_point_plugins() -> None:
    selected = os.environ.get(LOAD_PLUGINS_ENV)
    if selected is not None:
        wanted = {name.strip() for name in selected.split(",") if name.strip()}
        if not wanted:
            return
        for name in sorted(wanted):
            # Loading by name through pluggy keeps the distribution info for `rayrec plugins`.
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        return
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)


def load_plugins() -> pluggy.PluginManager:
    """Load built-in and installed plugins once; return the plugin manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for module_name in BUILTIN_PLUGINS:
        if pm.get_plugin(module_name) is None:
            module = importlib.import_module(module_name)
            pm.register(module, name=module_name)
    _load_entry_point_plugins()
    # A hookimpl whose name matches no hookspec (a typo) must fail loudly, not be ignored.
    pm.check_pending()
    return pm


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object or module at run time; returns its name in the manager."""
    load_plugins()
    if pm.is_registered(plugin):
        raise PluginError(
            f"plugin {plugin!r} is already registered as {pm.get_name(plugin)!r} (installed plugins "
            f"load through entry points; set {LOAD_PLUGINS_ENV}='' to load none of them)"
        )
    registered_name = pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(name=registered_name)
        raise
    _invalidate()
    return registered_name


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    pm.unregister(name=name)
    _invalidate()


def _invalidate() -> None:
    global _registry_cache
    _registry_cache = None


@dataclass
class RegisteredComponent:
    kind: str
    cls: type[Component]
    plugin: str


@dataclass
class Registry:
    """All registered components, grouped by kind and keyed by name."""

    by_kind: dict[str, dict[str, RegisteredComponent]] = field(default_factory=dict)

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind.get(kind, {}))

    def get(self, kind: str, name: str) -> type[Component]:
        components = self.by_kind.get(kind, {})
        if name not in components:
            available = ", ".join(self.names(kind)) or "(none)"
            raise UnknownComponentError(
                f"unknown {kind.replace('_', ' ')} {name!r}; available: {available}"
            )
        return components[name].cls

    def plugin_of(self, kind: str, name: str) -> str:
        return self.by_kind[kind][name].plugin

    def __iter__(self) -> Iterator[RegisteredComponent]:
        for kind in self.by_kind:
            yield from self.by_kind[kind].values()


def _public_name(base: type) -> str:
    """Where a plugin imports ``base`` from: ``rayrec.components.Scorer``, ``rayrec.state.BaseStateStore``."""
    return f"{base.__module__.removesuffix('.base')}.{base.__qualname__}"


def _plugin_name(plugin: Any) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))


def registry() -> Registry:
    """Collect components from every registration hook of every loaded plugin."""
    global _registry_cache
    if _registry_cache is not None:
        return _registry_cache
    load_plugins()
    result = Registry(by_kind={kind: {} for kind in COMPONENT_KINDS})
    for hook_name, kind in _REGISTRATION_HOOKS.items():
        base = COMPONENT_KINDS[kind]
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = _plugin_name(impl.plugin)

            def register(cls: type[Component], _plugin=plugin_name, _kind=kind, _base=base) -> None:
                if not (isinstance(cls, type) and issubclass(cls, _base)):
                    raise PluginError(
                        f"plugin {_plugin!r} registered {cls!r} as a {_kind.replace('_', ' ')}, "
                        f"but it does not inherit from {_public_name(_base)}"
                    )
                if not cls.name:
                    raise PluginError(f"plugin {_plugin!r} registered {cls.__name__} without a name")
                existing = result.by_kind[_kind].get(cls.name)
                if existing is not None:
                    raise PluginError(
                        f"duplicate {_kind.replace('_', ' ')} name {cls.name!r}: registered by "
                        f"plugin {existing.plugin!r} and by plugin {_plugin!r}; rename one of them"
                    )
                result.by_kind[_kind][cls.name] = RegisteredComponent(_kind, cls, _plugin)

            impl.function(register=register)
    _registry_cache = result
    return result


def get_component(kind: str, name: str) -> type[Component]:
    """The component class of ``kind`` registered as ``name`` (error lists the known names)."""
    return registry().get(kind, name)


def create_component(kind: str, name: str, options: dict[str, Any] | None = None) -> Component:
    """Instantiate a registered component with validated options."""
    return get_component(kind, name)(options or {})


def plugin_listing() -> list[dict[str, Any]]:
    """Every loaded plugin with the components it registers (for ``rayrec plugins``)."""
    from rayrec.components import options_schema

    reg = registry()
    rows: dict[str, dict[str, Any]] = {}
    for plugin in pm.get_plugins():
        name = _plugin_name(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = None
        for plugin_obj, distribution in pm.list_plugin_distinfo():
            if plugin_obj is plugin:
                dist = f"{distribution.project_name} {distribution.version}"
        rows[name] = {"name": name, "distribution": dist, "hooks": hooks, "components": []}
    for component in reg:
        rows[component.plugin]["components"].append(
            {
                "kind": component.kind,
                "name": component.cls.name,
                "description": component.cls.description,
                "options": options_schema(component.cls),
            }
        )
    for row in rows.values():
        row["components"].sort(key=lambda c: (c["kind"], c["name"]))
    return sorted(rows.values(), key=lambda r: (not r["name"].startswith("rayrec.builtin"), r["name"]))
