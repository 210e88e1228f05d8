"""Backends run a resolved sweep and leave every trial in the Optuna study store.

One registry: adding a backend is a module plus a line here. Backends are imported on first use,
so `ray` is only needed by the backend that uses it.

Example:
    >>> from search.backends import available_backends
    >>> "optuna" in available_backends()
    True
"""

from __future__ import annotations

from importlib import import_module

from ._base import Backend, SweepOutcome

BACKENDS: dict[str, str] = {
    "optuna": "search.backends._optuna:OptunaBackend",
    "ray": "search.backends._ray:RayBackend",
}


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def get_backend(name: str) -> type[Backend]:
    from spaces import ConfigError

    if name not in BACKENDS:
        raise ConfigError("unknown backend", key="backend", value=name, allowed=available_backends())
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module), cls)


__all__ = ["BACKENDS", "Backend", "SweepOutcome", "available_backends", "get_backend"]
