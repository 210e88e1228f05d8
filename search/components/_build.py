"""Shared by the sampler and pruner registries: build an Optuna class from a name and YAML args."""

from __future__ import annotations

import inspect
from typing import Any

from spaces import ConfigError


def construct(kind: str, name: str, cls: type, args: dict[str, Any], *, source: str | None, extra: dict[str, Any]):
    """`cls(**extra, **args)` with a ConfigError that lists the accepted arguments on a bad one."""
    params = inspect.signature(cls.__init__).parameters
    accepted = sorted(p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD)
    for arg in args:
        if arg not in accepted:
            raise ConfigError(
                f"{name} {kind} has no argument '{arg}'", source=source, key=f"{kind}.args.{arg}",
                allowed=accepted,
            )
    kwargs = {k: v for k, v in extra.items() if k in accepted}
    kwargs.update(args)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid arguments for the {name} {kind}: {exc}", source=source, key=f"{kind}.args",
                          value=args) from exc
