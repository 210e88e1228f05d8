"""The one registry mechanism every extension point uses: names mapped to lazily imported entries.

An entry is either an object or a ``"package.module:attribute"`` string, imported the first time it
is asked for, so listing what is registered never imports an optional package (Ray, a sampler's
dependency). Registering a name twice is refused, as PEFT's ``register_peft_method`` refuses it.
Each entry declares its capabilities as data (``multi_objective=True``, ``workers=True``, ...), so
callers ask ``registry.supports(name, "multi_objective")`` instead of comparing names.

Example:
    >>> colours = Registry("colour", key="colour")
    >>> colours.register("red", "colorsys:rgb_to_hsv", warm=True)
    >>> colours.register("cyan", "colorsys:rgb_to_hls", aliases=("aqua",))
    >>> colours.names(), colours.canonical("aqua"), colours.supports("red", "warm")
    (['red', 'cyan'], 'cyan', True)
    >>> colours.get("red").__name__
    'rgb_to_hsv'
    >>> colours.get("blue")
    Traceback (most recent call last):
    spaces._errors.ConfigError: colour: unknown colour; got 'blue'; allowed: 'aqua', 'cyan', 'red'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Generic, TypeVar

from ._errors import ConfigError

T = TypeVar("T")


@dataclass
class Entry:
    """One registered name: what it points at (loaded on first use) and what it can do."""

    name: str
    target: Any  # the object, or "module:attribute" until first loaded
    capabilities: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def load(self) -> Any:
        if isinstance(self.target, str) and ":" in self.target:
            module, _, attribute = self.target.partition(":")
            self.target = getattr(import_module(module), attribute)
        return self.target


class Registry(Generic[T]):
    """Names -> entries for one extension point (backends, tasks, samplers, pruners, ...).

    Args:
        kind: what the entries are, for messages ("backend", "sampler").
        key: the sweep-file key that names an entry, for ConfigError ("backend", "sampler.name").
        hint: how to add an entry, shown when a name is unknown.

    Example:
        >>> tasks = Registry("task", key="objective.name")
        >>> tasks.register("echo", "builtins:print", streams=True)
        >>> tasks.get("echo") is print, tasks.having("streams")
        (True, ['echo'])
    """

    def __init__(self, kind: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.kind = kind
        self.key = key or kind
        self.hint = hint
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, target: Any, *, aliases: tuple[str, ...] = (), **capabilities: Any) -> None:
        """Add `name` (and its `aliases`); a name or alias already taken raises ValueError."""
        for taken in (name, *aliases):
            if taken in self._entries or taken in self._aliases:
                raise ValueError(f"{self.kind} '{taken}' is already registered")
        self._entries[name] = Entry(name, target, dict(capabilities), tuple(aliases))
        self._aliases.update({alias: name for alias in aliases})

    def names(self) -> list[str]:
        """The registered names in the order they were registered (aliases not included)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self):
        return iter(self.names())

    def canonical(self, name: str) -> str:
        """The registered name `name` stands for (itself, or what it is an alias of)."""
        return self._aliases.get(name, name)

    def entry(self, name: str, *, source: str | None = None, key: str | None = None) -> Entry:
        """The entry of `name` (an alias works too), or a ConfigError listing the registered names."""
        entry = self._entries.get(self.canonical(name)) if isinstance(name, str) else None
        if entry is None:
            allowed: list[str] = sorted([*self._entries, *self._aliases])
            raise ConfigError(f"unknown {self.kind}", source=source, key=key or self.key, value=name,
                              allowed=allowed, hint=self.hint)
        return entry

    def get(self, name: str, *, source: str | None = None, key: str | None = None) -> T:
        """The object registered as `name`, imported on first use."""
        return self.entry(name, source=source, key=key).load()

    def capabilities(self, name: str) -> dict[str, Any]:
        return dict(self.entry(name).capabilities)

    def supports(self, name: str, capability: str) -> bool:
        """Whether the entry declares `capability` truthy (False for an unknown name)."""
        return name in self and bool(self.entry(name).capabilities.get(capability))

    def having(self, capability: str) -> list[str]:
        """The names whose entries declare `capability`."""
        return [name for name in self.names() if self._entries[name].capabilities.get(capability)]
