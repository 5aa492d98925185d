"""The registry of installed backends: a pluggy plugin manager holding every ``pedagle.backends`` entry
point (the contract is `pedagle_core.hooks`) plus the built-in reference backend, and look-ups on it."""

from __future__ import annotations

from typing import Any

import pluggy

from .hooks import ENTRY_POINT_GROUP, PROJECT, BackendSpec, hookimpl


def get_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the pedagle hook specs and every installed backend registered.

    Backends come from the ``pedagle.backends`` entry points; the built-in reference backend is
    registered too when no entry point provided it (source checkouts).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(BackendSpec)
    if load_entry_points:
        _load_entry_points(pm)
    if pm.get_plugin("reference") is None:
        from .engine.backend import ReferenceBackend

        pm.register(ReferenceBackend(), name="reference")
    return pm


class UnavailableBackend:
    """Stands in for a backend whose entry point failed to load: it only reports why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    @hookimpl
    def pedagle_backend_info(self) -> dict[str, Any]:
        return {"name": self.name, "version": "", "capabilities": [], "available": False, "reason": self.reason}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """pm.load_setuptools_entrypoints, except that a class is instantiated before registration and a
    backend that fails to load is registered as an `UnavailableBackend` carrying the error."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            obj = ep.load()
            plugin = obj() if isinstance(obj, type) else obj
        except Exception as e:  # noqa: BLE001 - one broken backend must not hide the others
            plugin = UnavailableBackend(ep.name, f"entry point {ep.value!r} failed to load: "
                                                 f"{type(e).__name__}: {e}")
        pm.register(plugin, name=ep.name)


def get_backend(pm: pluggy.PluginManager, name: str) -> Any:
    """The registered backend called ``name`` (raises KeyError listing the known ones)."""
    plugin = pm.get_plugin(name)
    if plugin is None:
        known = sorted(n for n, _ in pm.list_name_plugin())
        raise KeyError(f"backend {name!r} is not registered; known backends: {known}")
    return plugin


def backend_infos(pm: pluggy.PluginManager | None = None) -> list[dict[str, Any]]:
    """``pedagle_backend_info()`` of every backend (each dict gets its registration name as ``name``
    when the backend gave none)."""
    pm = pm or get_plugin_manager()
    out = []
    for name, plugin in pm.list_name_plugin():
        fn = getattr(plugin, "pedagle_backend_info", None)
        info = dict(fn()) if fn is not None else {}
        info.setdefault("name", name)
        out.append(info)
    return out


__all__ = ["UnavailableBackend", "get_plugin_manager", "get_backend", "backend_infos"]
