from __future__ import annotations

import copy
import decimal
import math
from collections.abc import Mapping
from typing import Annotated
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import TYPE_CHECKING
from typing import Union

from pydantic import AfterValidator
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import JsonValue
from pydantic import model_validator
from pydantic import TypeAdapter
from pydantic import ValidationError

from spaces._errors import ConfigError
from spaces._errors import did_you_mean
from spaces._errors import from_validation_error


if TYPE_CHECKING:
    from optuna.trial import BaseTrial


class _Absent:
    """Marker returned by ``_sample`` when a derived param cannot be computed."""


ABSENT = _Absent()

_SCALAR_HELP = "a string, number, boolean or null"


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `times: true` is a mistake, not a multiplier.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError(f"must be {_SCALAR_HELP}")


def _check_when_value(value: Any) -> Any:
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list can never match")
        return [_check_scalar(item) for item in value]
    return _check_scalar(value)


def _check_number(value: Any) -> Any:
    if _is_number(value) and math.isfinite(value):
        return value
    raise ValueError("must be a finite number")


def _check_number_or_name(value: Any) -> Any:
    if isinstance(value, str) or (_is_number(value) and math.isfinite(value)):
        return value
    raise ValueError("must be a number or the name of a numeric param")


_Scalar = Annotated[Any, AfterValidator(_check_scalar)]
_WhenValue = Annotated[Any, AfterValidator(_check_when_value)]


def values_equal(a: Any, b: Any) -> bool:
    """Equality for conditions: numbers compare with a tolerance so that a stepped float
    like ``0.1 + 0.05`` still matches ``0.15``."""
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def when_values(value: Any) -> list[Any]:
    """The values a ``when`` entry accepts (a list means any of them)."""
    return list(value) if isinstance(value, list) else [value]


class _BaseParam(BaseModel):
    # strict: YAML already gives typed values; coercing "4" or true into a bound hides typos.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    type: str
    when: dict[str, _WhenValue] | None = None
    help: str | None = None

    #: Whether Optuna suggests this param (float/int/categorical) or ftsweep computes it.
    searched: ClassVar[bool] = False

    def depends_on(self) -> list[str]:
        """Names this param's condition or value needs, in first-use order."""
        return list(self.when or {})

    def condition_holds(self, values: Mapping[str, Any]) -> bool:
        """Whether every ``when`` entry matches ``values``; an absent param never matches."""
        for ref, accepted in (self.when or {}).items():
            if ref not in values:
                return False
            if not any(values_equal(values[ref], v) for v in when_values(accepted)):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-dumpable mapping, ``type`` first and ``when``/``help`` last, defaults
        left out."""
        data = self.model_dump(by_alias=True, exclude_defaults=True, exclude={"type"})
        tail = {k: data.pop(k) for k in ("when", "help") if k in data}
        return {"type": self.type, **data, **tail}

    def _sample(self, name: str, trial: BaseTrial, values: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _grid(self) -> list[Any]:
        raise NotImplementedError


def _bounds_errors(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ConfigError(
            f"low ({low!r}) is greater than high ({high!r})",
            key="low",
            value=low,
            allowed="a number <= high",
            hint="Fix: swap them.",
        )
    if log and low <= 0:
        raise ConfigError(
            "a log-scaled range needs low > 0",
            key="low",
            value=low,
            allowed="a number > 0 when log is true",
            hint="Fix: raise low or set log: false.",
        )


def _step_grid(low: float, high: float, step: float) -> list[decimal.Decimal]:
    # Decimal on the decimal strings, as Optuna does, so 0.1 steps don't drift.
    d_low, d_high, d_step = (decimal.Decimal(str(v)) for v in (low, high, step))
    n = int((d_high - d_low) // d_step)
    points = [d_low + i * d_step for i in range(n + 1)]
    if points[-1] != d_high:
        raise ConfigError(
            f"the range {low!r}..{high!r} is not a whole number of steps of {step!r}",
            key="high",
            value=high,
            allowed=f"low + k * step, e.g. {_plain(points[-1])}",
            hint=f"Fix: set high to {_plain(points[-1])} (Optuna would silently shrink it).",
        )
    return points


def _plain(d: decimal.Decimal) -> int | float:
    return int(d) if d == d.to_integral_value() and d.as_tuple().exponent >= 0 else float(d)


class FloatParam(_BaseParam):
    """A float sampled with ``trial.suggest_float(name, low, high, step=step, log=log)``.

    Example:

        >>> from spaces import FloatParam
        >>> lr = FloatParam(low=1e-5, high=1e-2, log=True)
        >>> assert lr.to_dict() == {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}
    """

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    searched: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _bounds_errors(self.low, self.high, self.log)
        if self.step is not None:
            if self.step <= 0:
                raise ConfigError(
                    "step must be positive", key="step", value=self.step, allowed="a number > 0"
                )
            if self.log:
                raise ConfigError(
                    "step cannot be combined with log: true (Optuna forbids it)",
                    key="step",
                    value=self.step,
                    hint="Fix: drop step, or set log: false.",
                )
            _step_grid(self.low, self.high, self.step)
        return self

    def _sample(self, name: str, trial: BaseTrial, values: Mapping[str, Any]) -> Any:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def _grid(self) -> list[Any]:
        if self.log:
            raise ConfigError(
                "grid search cannot enumerate a log-scaled float",
                hint="Fix: make it categorical, e.g. choices: [1.0e-5, 1.0e-4, 1.0e-3].",
            )
        if self.step is None:
            raise ConfigError(
                "grid search needs `step` (or a categorical) for a float",
                hint="Fix: add step, e.g. step: 0.05, or make it categorical.",
            )
        return [float(p) for p in _step_grid(self.low, self.high, self.step)]


class IntParam(_BaseParam):
    """An int sampled with ``trial.suggest_int(name, low, high, step=step, log=log)``.

    Example:

        >>> from spaces import IntParam
        >>> r = IntParam(low=4, high=64, log=True)
        >>> assert r.to_dict() == {"type": "int", "low": 4, "high": 64, "log": True}
    """

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = 1

    searched: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _bounds_errors(self.low, self.high, self.log)
        if self.step <= 0:
            raise ConfigError(
                "step must be positive", key="step", value=self.step, allowed="an integer >= 1"
            )
        if self.log and self.step != 1:
            raise ConfigError(
                "step != 1 cannot be combined with log: true (Optuna forbids it)",
                key="step",
                value=self.step,
                allowed="1 when log is true",
                hint="Fix: drop step, or set log: false.",
            )
        _step_grid(self.low, self.high, self.step)
        return self

    def _sample(self, name: str, trial: BaseTrial, values: Mapping[str, Any]) -> Any:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def _grid(self) -> list[Any]:
        if self.log:
            # Enumerating every integer defeats the point of a log scale (4..64 is 61 values).
            raise ConfigError(
                "grid search cannot enumerate a log-scaled int",
                hint="Fix: make it categorical, e.g. choices: [4, 8, 16, 32, 64].",
            )
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(_BaseParam):
    """One of ``choices``, sampled with ``trial.suggest_categorical``.

    Choices are strings, numbers, booleans or null, and must be distinct under ``==``
    (Optuna cannot tell ``1``, ``1.0`` and ``true`` apart).

    Example:

        >>> from spaces import CategoricalParam
        >>> sched = CategoricalParam(choices=["linear", "cosine"])
        >>> assert sched.to_dict() == {"type": "categorical", "choices": ["linear", "cosine"]}
    """

    type: Literal["categorical"] = "categorical"
    choices: list[_Scalar]

    searched: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if not self.choices:
            raise ConfigError(
                "choices is empty",
                key="choices",
                value=[],
                allowed=f"a non-empty list; each item {_SCALAR_HELP}",
            )
        for i, choice in enumerate(self.choices):
            for j in range(i):
                if choice == self.choices[j]:
                    raise ConfigError(
                        f"duplicate choice (equal to choices[{j}] = {self.choices[j]!r})",
                        key=f"choices[{i}]",
                        value=choice,
                        hint="Fix: remove it.",
                    )
        return self

    @property
    def numeric(self) -> bool:
        return all(_is_number(c) for c in self.choices)

    def _sample(self, name: str, trial: BaseTrial, values: Mapping[str, Any]) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def _grid(self) -> list[Any]:
        return list(self.choices)


class FixedParam(_BaseParam):
    """A constant, included in every sample so objectives and conditions can read it.

    Example:

        >>> from spaces import FixedParam
        >>> assert FixedParam(value="lora").to_dict() == {"type": "fixed", "value": "lora"}
    """

    type: Literal["fixed"] = "fixed"
    value: JsonValue

    @property
    def numeric(self) -> bool:
        return _is_number(self.value)

    def _sample(self, name: str, trial: BaseTrial, values: Mapping[str, Any]) -> Any:
        return copy.deepcopy(self.value)  # The caller may mutate its config dict.


class DerivedParam(_BaseParam):
    """``value = <from> * <times> + plus``, computed after its inputs are sampled.

    ``times`` is a number or a param name. ``as: int`` rounds half up (``2.5 -> 3``), unlike
    Python's ``round``. Absent when any input is absent.

    Example:

        >>> from spaces import DerivedParam
        >>> alpha = DerivedParam.model_validate({"from": "lora_r", "times": 2, "as": "int"})
        >>> assert alpha.compute({"lora_r": 8}) == 16
    """

    type: Literal["derived"] = "derived"
    from_: str = Field(alias="from")
    times: Annotated[Any, AfterValidator(_check_number_or_name)] = 1
    plus: Annotated[Any, AfterValidator(_check_number)] = 0
    as_: Literal["int", "float"] = Field("float", alias="as")

    def depends_on(self) -> list[str]:
        refs = [*super().depends_on(), self.from_]
        if isinstance(self.times, str):
            refs.append(self.times)
        return list(dict.fromkeys(refs))

    def compute(self, values: Mapping[str, Any]) -> Any:
        """The value for ``values``, or ``ABSENT`` when an input is missing."""
        inputs = [self.from_] + ([self.times] if isinstance(self.times, str) else [])
        if any(ref not in values for ref in inputs):
            return ABSENT
        times = values[self.times] if isinstance(self.times, str) else self.times
        result = values[self.from_] * times + self.plus
        if self.as_ == "int":
            return math.floor(result + 0.5)
        return float(result)

    def _sample(self, name: str, trial: BaseTrial, values: Mapping[str, Any]) -> Any:
        return self.compute(values)


Param = Annotated[
    Union[FloatParam, IntParam, CategoricalParam, FixedParam, DerivedParam],
    Field(discriminator="type"),
]
"""Any parameter model; ``type`` picks the class."""

PARAM_TYPES: dict[str, type[_BaseParam]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
    "fixed": FixedParam,
    "derived": DerivedParam,
}

_PARAM_ADAPTER: TypeAdapter[Any] = TypeAdapter(Param)


def _model_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def parse_param(data: Any, *, source: str | None, key: str | None) -> _BaseParam:
    """Validate one param mapping; errors are keyed under ``key``."""
    if isinstance(data, _BaseParam):
        return data
    if isinstance(data, Mapping) and not isinstance(data, dict):
        data = dict(data)  # strict mode only takes real dicts.
    try:
        return _PARAM_ADAPTER.validate_python(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        types = list(PARAM_TYPES)
        if error["type"] == "union_tag_not_found":
            raise ConfigError(
                "missing `type`", source=source, key=key, allowed=types
            ) from None
        if error["type"] == "union_tag_invalid":
            bad = data["type"]
            raise ConfigError(
                "unknown type",
                source=source,
                key=f"{key}.type" if key else "type",
                value=bad,
                allowed=types,
                hint=did_you_mean(bad, types),
            ) from None
        if error["type"] == "model_attributes_type":
            raise ConfigError(
                "a param must be a mapping with a `type`",
                source=source,
                key=key,
                value=data,
                allowed=types,
            ) from None
        model = PARAM_TYPES[data["type"]]
        raise from_validation_error(
            exc,
            source=source,
            prefix=key,
            allowed_keys=lambda loc: _model_keys(model) if not loc else None,
            skip_loc=1,  # The union tag (e.g. "float") leads the loc but is not a key in the file.
        ) from None


def finite_values(param) -> list[Any]:
    """The values a fixed or categorical space param can take ([] for any other type).

    Example:
        >>> from spaces import CategoricalParam
        >>> finite_values(CategoricalParam(type="categorical", choices=["lora", "ia3"]))
        ['lora', 'ia3']
    """
    return [param.value] if hasattr(param, "value") else list(getattr(param, "choices", []))
