"""Backends run a resolved sweep and leave every trial in the Optuna study store.

The registry is `search.components.BACKENDS` (lazy `module:Class` entries with capabilities), so a
sweep file's `backend:` is checked when it loads without importing Ray. Adding a backend is a module
here plus one line there; the backend contract tests (tests/search/backends/) run every entry.

Example:
    >>> get_backend("optuna").__name__
    'OptunaBackend'
"""

from __future__ import annotations

from ..components import BACKENDS
from ._base import Backend, SweepOutcome


def available_backends() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name` (imported on first use); ConfigError for an unknown name."""
    return BACKENDS.get(name)


__all__ = ["BACKENDS", "Backend", "SweepOutcome", "available_backends", "get_backend"]
