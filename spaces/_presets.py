from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import field_validator
from pydantic import ValidationError

from spaces._errors import ConfigError
from spaces._errors import did_you_mean
from spaces._errors import from_validation_error
from spaces._errors import join_key
from spaces._params import parse_param
from spaces._space import SearchSpace
from spaces._yaml import load_yaml


PRESETS_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the shipped presets: every ``*.yaml`` under ``spaces/presets/``.

    A file in a subfolder is named by its relative path (``qlora/big.yaml`` -> ``qlora/big``).

    Example:

        >>> from spaces import list_presets
        >>> assert "lora" in list_presets()
    """
    return sorted(p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in _preset_files())


def _preset_files() -> list[Path]:
    return [p for p in PRESETS_DIR.rglob("*.yaml") if p.is_file()]


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; an unknown name is a :class:`ConfigError`.

    Example:

        >>> from spaces import preset_path
        >>> assert preset_path("lora").name == "lora.yaml"
    """
    return _preset_path(name, source=None, key=None)


def _preset_path(name: str, *, source: str | None, key: str | None) -> Path:
    presets = list_presets()
    # Looked up in the scan, never joined onto the folder, so "../x" cannot escape it.
    if name not in presets:
        raise ConfigError(
            "unknown preset",
            source=source,
            key=key,
            value=name,
            allowed=presets,
            hint=did_you_mean(name, presets) or f"Presets are the *.yaml files in {PRESETS_DIR}.",
        )
    return PRESETS_DIR / f"{name}.yaml"


def get_preset(name: str) -> SearchSpace:
    """Load and validate preset ``name``.

    Example:

        >>> from spaces import get_preset
        >>> space = get_preset("lora")
        >>> assert "learning_rate" in space.searched_names
    """
    return _load_preset(name, source=None, key=None)


def _load_preset(name: str, *, source: str | None, key: str | None) -> SearchSpace:
    path = _preset_path(name, source=source, key=key)
    # Errors inside the preset are reported against the preset file, not the sweep file.
    space = SearchSpace.from_dict(load_yaml(path), source=str(path), key="")
    if space.name != name:
        raise ConfigError(
            "a preset's name must match its file name",
            source=str(path),
            key="name",
            value=space.name,
            allowed=[name],
        )
    return space


class _Extension(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    preset: str
    override: dict[str, dict[str, Any]] = {}
    add: dict[str, Any] = {}
    remove: list[str] = []
    name: str | None = None
    description: str | None = None

    @field_validator("remove", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `remove: lora_dropout` reads fine.


_FORMS = "a preset name, {preset: ..., override/add/remove: ...} or {params: ...}"


def resolve_space(
    value: str | Mapping[str, Any], *, source: str | None = None, key: str = "space"
) -> SearchSpace:
    """Turn what a sweep file's ``space:`` holds into a :class:`SearchSpace`.

    * ``space: lora`` -- a preset by name.
    * ``space: {preset: lora, override: {...}, add: {...}, remove: [...]}`` -- a preset,
      extended. ``override`` replaces a preset param; without a ``type`` it is merged into the
      preset's definition instead (``override: {learning_rate: {high: 1.0e-3}}``). ``add`` adds
      new params, ``remove`` drops params. Optional ``name``/``description`` rename the result
      (default name ``<preset>-custom``).
    * ``space: {params: {...}}`` -- an inline space (optional ``name``/``description``).

    Errors are :class:`ConfigError` keyed under ``key`` in ``source``.

    Example:

        >>> from spaces import resolve_space
        >>> space = resolve_space(
        ...     {
        ...         "preset": "lora",
        ...         "override": {"learning_rate": {"high": 1.0e-3}},
        ...         "add": {"label_smoothing_factor": {"type": "float", "low": 0, "high": 0.1}},
        ...         "remove": ["lora_dropout"],
        ...     }
        ... )
        >>> assert "label_smoothing_factor" in space and "lora_dropout" not in space
    """
    if isinstance(value, str):
        space = _load_preset(value, source=source, key=key)
        # Valid as shipped; what can still fail (grid()) is the sweep's choice, so point there.
        space._relocate(source, lambda name: f"{key}[{value}].params.{name}")
        return space
    if not isinstance(value, Mapping):
        raise ConfigError(
            "expected a preset name or a mapping",
            source=source,
            key=key,
            value=value,
            allowed=_FORMS,
        )
    if "preset" in value:
        if "params" in value:
            raise ConfigError(
                "`preset` and `params` cannot be combined",
                source=source,
                key=join_key(key, "params"),
                hint="Fix: put new params under `add` and changed ones under `override`.",
            )
        return _extend(value, source=source, key=key)
    if "params" not in value:
        raise ConfigError(
            "a space mapping needs `preset` or `params`",
            source=source,
            key=key,
            value=dict(value),
            allowed=_FORMS,
        )
    return SearchSpace.from_dict(value, source=source, key=key)


def _extend(value: Mapping[str, Any], *, source: str | None, key: str) -> SearchSpace:
    try:
        ext = _Extension.model_validate(dict(value))
    except ValidationError as exc:
        raise from_validation_error(
            exc,
            source=source,
            prefix=key,
            allowed_keys=lambda loc: list(_Extension.model_fields) if not loc else None,
        ) from None

    base = _load_preset(ext.preset, source=source, key=join_key(key, "preset"))
    base_params = base._params  # Declaration order, so to_dict() reads like the preset file.
    base_names = list(base_params)

    def unknown(name: str, what: str, where: str | None) -> ConfigError:
        # A typo here would otherwise silently search the preset's range (or add a new param).
        return ConfigError(
            f"preset {ext.preset!r} has no param {name!r} to {what}",
            source=source,
            key=where,
            value=name,
            allowed=base_names,
            hint=did_you_mean(name, base_names)
            or ("Fix: use `add` for a new param." if what == "override" else None),
        )

    for i, name in enumerate(ext.remove):
        if name not in base_params:
            raise unknown(name, "remove", join_key(key, "remove", i))
        if name in ext.override:
            raise ConfigError(
                "param is both overridden and removed",
                source=source,
                key=join_key(key, "override", name),
                value=name,
                hint="Fix: drop one of the two.",
            )
    for name in ext.override:
        if name not in base_params:
            raise unknown(name, "override", join_key(key, "override", name))
    for name in ext.add:
        if name in base_params:
            raise ConfigError(
                f"preset {ext.preset!r} already has this param",
                source=source,
                key=join_key(key, "add", name),
                value=name,
                hint="Fix: use `override` to change it.",
            )

    # Every param, parsed, with the key where its definition lives.
    keys: dict[str, str | None] = {}
    params: dict[str, Any] = {}
    for name, param in base_params.items():
        if name in ext.remove:
            continue
        if name in ext.override:
            raw = ext.override[name]
            if "type" not in raw:
                # A partial override edits the preset's definition (keeping `when`, `help`...).
                raw = {**param.to_dict(), **raw}
            keys[name] = join_key(key, "override", name)
            params[name] = parse_param(raw, source=source, key=keys[name])
        else:
            keys[name] = f"{join_key(key, 'preset')}[{ext.preset}].params.{name}"
            params[name] = param
    for name, raw in ext.add.items():
        keys[name] = join_key(key, "add", name)
        params[name] = parse_param(raw, source=source, key=keys[name])

    for i, removed in enumerate(ext.remove):
        dependents = [n for n, p in params.items() if removed in p.depends_on()]
        if dependents:
            raise ConfigError(
                f"cannot remove {removed!r}: {', '.join(map(repr, dependents))} depends on it",
                source=source,
                key=join_key(key, "remove", i),
                value=removed,
                hint=f"Fix: also remove or override {', '.join(dependents)}.",
            )
    if not params:
        raise ConfigError(
            "removing every param leaves an empty space",
            source=source,
            key=join_key(key, "remove"),
        )

    edits = (("overrode", ext.override), ("added", ext.add), ("removed", ext.remove))
    changes = [f"{verb} {', '.join(names)}" for verb, names in edits if names]
    description = ext.description
    if description is None:
        extended = f"Extended: {'; '.join(changes)}." if changes else ""
        description = f"{base.description} {extended}".strip()
    return SearchSpace._build(
        params,
        name=ext.name or f"{ext.preset}-custom",
        description=description,
        source=source,
        key_for=keys.__getitem__,
    )
