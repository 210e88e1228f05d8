from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import difflib
import enum
import reprlib
from typing import Any
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from pydantic import ValidationError


class _Missing(enum.Enum):
    # An enum member so the sentinel survives pickling as the same object (Ray ships
    # exceptions between processes).
    MISSING = enum.auto()


_MISSING = _Missing.MISSING

# Values can be whole mappings (a param definition); keep messages to one readable line.
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 10
_repr.maxdict = 6


class ConfigError(ValueError):
    """A bad configuration value. Every config error in ftsweep (spaces, sweep files, objectives)
    is one of these.

    ``str(err)`` reads ``"<source>: <key>: <message>; got <value!r>; allowed: <allowed> <hint>"``;
    each part is left out when not given.

    Example:

        >>> from spaces import ConfigError
        >>> err = ConfigError(
        ...     "low (64) is greater than high (4)",
        ...     source="sweep.yaml",
        ...     key="space.params.lora_r.low",
        ...     value=64,
        ...     allowed="a number <= high",
        ...     hint="Fix: swap them.",
        ... )
        >>> assert str(err) == (
        ...     "sweep.yaml: space.params.lora_r.low: low (64) is greater than high (4); "
        ...     "got 64; allowed: a number <= high. Fix: swap them."
        ... )
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        key: str | None = None,
        value: object = _MISSING,
        allowed: object = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.key = key
        self.value = value
        self.allowed = allowed
        self.hint = hint
        super().__init__(str(self))

    @property
    def has_value(self) -> bool:
        """Whether a bad value was recorded (``None`` is a legitimate bad value)."""
        return self.value is not _MISSING

    def __str__(self) -> str:
        # Computed on demand so that _nested() copies and attribute edits stay consistent.
        text = ": ".join(part for part in (self.source, self.key, self.message) if part)
        if self.has_value:
            text += f"; got {_repr.repr(self.value)}"
        if self.allowed is not None:
            text += f"; allowed: {_format_allowed(self.allowed)}"
        if self.hint:
            text += f". {self.hint}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce calls cls(*args) and would lose the keyword-only attributes.
        return (_rebuild, (self.message, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "key": self.key,
            "value": self.value,
            "allowed": self.allowed,
            "hint": self.hint,
        }

    def _nested(self, *, source: str | None = None, prefix: str | None = None) -> ConfigError:
        """A copy located inside ``prefix`` (a dotted key path) of ``source``."""
        fields = self._fields()
        fields["key"] = join_key(prefix, self.key)
        if source is not None and self.source is None:
            fields["source"] = source
        return ConfigError(self.message, **fields)


def _rebuild(message: str, fields: dict[str, Any]) -> ConfigError:
    return ConfigError(message, **fields)


def _format_allowed(allowed: object) -> str:
    if isinstance(allowed, str):
        return allowed
    if isinstance(allowed, (Sequence, set, frozenset)):
        items = sorted(allowed, key=str) if isinstance(allowed, (set, frozenset)) else allowed
        return ", ".join(repr(item) for item in items)
    return repr(allowed)


def join_key(*parts: object) -> str | None:
    """Join key-path parts: strings with ``.``, list indices as ``[i]``; empty parts skipped."""
    text = ""
    for part in parts:
        if part is None or part == "":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text and not str(part).startswith("[") else str(part)
    return text or None


def did_you_mean(word: object, candidates: Sequence[str]) -> str | None:
    """A ``Did you mean ...?`` hint for a likely typo, or ``None``."""
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f"Did you mean {matches[0]!r}?" if matches else None


def from_validation_error(
    exc: ValidationError,
    *,
    source: str | None,
    prefix: str | None,
    allowed_keys: Callable[[list[Any]], list[str] | None] | None = None,
    skip_loc: int = 0,
) -> ConfigError:
    """Turn the first error of a pydantic ``ValidationError`` into a :class:`ConfigError`.

    ``allowed_keys(loc)`` returns the keys valid at ``loc`` (for unknown-key errors);
    ``skip_loc`` drops leading loc items that are not keys in the file (a union tag).
    """
    # One precise error beats a wall of them; the next run reports the next one. A misspelt
    # key shows up as "missing low" *and* "unknown lowr"; the latter can say "did you mean".
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(error["loc"])[skip_loc:]
    kind = error["type"]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):
        # Raised by our own validators with a key relative to the model being validated.
        return original._nested(source=source, prefix=join_key(prefix, *loc))

    key = join_key(prefix, *loc)
    if kind == "extra_forbidden":
        allowed = allowed_keys(loc[:-1]) if allowed_keys else None
        return ConfigError(
            f"unknown key {loc[-1]!r}",
            source=source,
            key=key,
            allowed=allowed,
            hint=did_you_mean(loc[-1], allowed or []),
        )
    if kind == "missing":
        return ConfigError(f"missing required key {loc[-1]!r}", source=source, key=key)
    # Pydantic's own wording ("Input should be a valid integer") is clear once the key is known.
    message = str(original) if original is not None else error["msg"]
    return ConfigError(message, source=source, key=key, value=error["input"])
