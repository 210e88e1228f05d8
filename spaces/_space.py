from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import graphlib
import heapq
from typing import Any
from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import ValidationError

from spaces._errors import ConfigError
from spaces._errors import did_you_mean
from spaces._errors import from_validation_error
from spaces._errors import join_key
from spaces._params import _BaseParam
from spaces._params import ABSENT
from spaces._params import CategoricalParam
from spaces._params import DerivedParam
from spaces._params import FixedParam
from spaces._params import FloatParam
from spaces._params import IntParam
from spaces._params import parse_param
from spaces._params import values_equal
from spaces._params import when_values


if TYPE_CHECKING:
    from optuna.trial import BaseTrial


class _SpaceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = "inline"
    description: str = ""
    # Each param is validated separately so its errors carry the exact key path.
    params: dict[str, Any]


class SearchSpace:
    """A validated, typed hyperparameter search space.

    Build one with :meth:`from_dict` (what a YAML file holds), :func:`~spaces.get_preset` or
    :func:`~spaces.resolve_space`; call :meth:`sample` inside an Optuna objective.

    Example:

        >>> import optuna
        >>> from spaces import SearchSpace
        >>> space = SearchSpace.from_dict(
        ...     {
        ...         "params": {
        ...             "learning_rate": {"type": "float", "low": 1e-5, "high": 0.01, "log": True},
        ...             "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
        ...             "lora_alpha": {"type": "derived", "from": "lora_r", "times": 2},
        ...         }
        ...     }
        ... )
        >>> def objective(trial):
        ...     config = space.sample(trial)
        ...     assert config["lora_alpha"] == 2 * config["lora_r"]
        ...     return config["learning_rate"]
        >>> optuna.create_study().optimize(objective, n_trials=3)
    """

    def __init__(
        self,
        params: Mapping[str, _BaseParam | Mapping[str, Any]],
        *,
        name: str = "inline",
        description: str = "",
    ) -> None:
        self._setup(params, name=name, description=description, source=None, key_for=None)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str | None = None, key: str = "space"
    ) -> SearchSpace:
        """Validate ``{name?, description?, params: {...}}`` into a :class:`SearchSpace`.

        Errors are :class:`~spaces.ConfigError` keyed by the full dotted path inside
        ``source`` (``space.params.lora_r.low`` for ``key="space"``).

        Example:

            >>> from spaces import SearchSpace
            >>> space = SearchSpace.from_dict(
            ...     {"name": "tiny", "params": {"lr": {"type": "float", "low": 0.1, "high": 1}}}
            ... )
            >>> assert space.names == ["lr"]
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                "a search space must be a mapping",
                source=source,
                key=key or None,
                value=data,
                allowed="{name?, description?, params: {...}}",
            )
        try:
            model = _SpaceModel.model_validate(dict(data))
        except ValidationError as exc:
            raise from_validation_error(
                exc,
                source=source,
                prefix=key,
                allowed_keys=lambda loc: list(_SpaceModel.model_fields) if not loc else None,
            ) from None
        space = cls.__new__(cls)
        space._setup(
            model.params,
            name=model.name,
            description=model.description,
            source=source,
            key_for=lambda param: join_key(key, "params", param),
        )
        return space

    @classmethod
    def _build(
        cls,
        params: Mapping[str, Any],
        *,
        name: str,
        description: str,
        source: str | None,
        key_for: Callable[[str], str | None],
    ) -> SearchSpace:
        space = cls.__new__(cls)
        space._setup(params, name=name, description=description, source=source, key_for=key_for)
        return space

    def _setup(
        self,
        params: Mapping[str, Any],
        *,
        name: str,
        description: str,
        source: str | None,
        key_for: Callable[[str], str | None] | None,
    ) -> None:
        if key_for is None:
            key_for = lambda param: join_key("params", param)  # noqa: E731
        self.name = name
        self.description = description
        self._source = source
        self._keys: dict[str, str | None] = {}
        self._params: dict[str, _BaseParam] = {}
        if not params:
            raise ConfigError(
                "params is empty",
                source=source,
                key=key_for(""),
                allowed="at least one param",
            )
        for param_name, raw in params.items():
            key = key_for(param_name)
            if not isinstance(param_name, str) or not param_name:
                raise ConfigError(
                    "a param name must be a non-empty string",
                    source=source,
                    key=key,
                    value=param_name,
                )
            self._keys[param_name] = key
            self._params[param_name] = parse_param(raw, source=source, key=key)
        self._check_references()
        self._order = self._dependency_order()

    def _relocate(self, source: str | None, key_for: Callable[[str], str | None]) -> None:
        self._source = source
        self._keys = {name: key_for(name) for name in self._params}

    def _error(self, param: str, sub: str | None, message: str, **kwargs: Any) -> ConfigError:
        key = join_key(self._keys[param], sub)
        return ConfigError(message, source=self._source, key=key, **kwargs)

    def _check_references(self) -> None:
        names = list(self._params)
        for name, param in self._params.items():
            for ref, accepted in (param.when or {}).items():
                sub = f"when.{ref}"
                if ref == name:
                    raise self._error(
                        name, sub, "a condition cannot refer to the param itself", value=ref
                    )
                if ref not in self._params:
                    raise self._error(
                        name,
                        sub,
                        "condition refers to an unknown param",
                        value=ref,
                        allowed=names,
                        hint=did_you_mean(ref, names),
                    )
                for value in when_values(accepted):
                    self._check_can_match(name, sub, ref, value)
            if isinstance(param, DerivedParam):
                self._check_numeric_ref(name, "from", param.from_)
                if isinstance(param.times, str):
                    self._check_numeric_ref(name, "times", param.times)

    def _check_can_match(self, name: str, sub: str, ref: str, value: Any) -> None:
        target = self._params[ref]
        if isinstance(target, CategoricalParam):
            if not any(values_equal(value, c) for c in target.choices):
                raise self._error(
                    name, sub, f"condition can never hold: not a choice of {ref!r}",
                    value=value, allowed=target.choices,
                )
        elif isinstance(target, FixedParam):
            if not values_equal(value, target.value):
                raise self._error(
                    name, sub, f"condition can never hold: {ref!r} is fixed",
                    value=value, allowed=[target.value],
                )
        elif isinstance(target, FloatParam) and target.step is None:
            raise self._error(
                name, sub, f"condition on continuous float {ref!r} would need an exact match",
                value=value, hint=f"Fix: make {ref!r} categorical, or give it a step.",
            )
        elif isinstance(target, (IntParam, FloatParam)):
            if isinstance(target, IntParam):
                ok = (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                    and target.low <= value <= target.high
                    and (value - target.low) % target.step == 0
                )
            else:
                ok = any(values_equal(value, point) for point in target._grid())
            if not ok:
                raise self._error(
                    name, sub, f"condition can never hold: not a value {ref!r} can take",
                    value=value, allowed=f"a value of {ref!r} in {target.low}..{target.high}",
                )
        # Derived values are not enumerable; any scalar may match.

    def _check_numeric_ref(self, name: str, field: str, ref: str) -> None:
        names = list(self._params)
        if ref == name:
            raise self._error(name, field, "a derived param cannot use itself", value=ref)
        if ref not in self._params:
            raise self._error(
                name, field, "refers to an unknown param",
                value=ref, allowed=names, hint=did_you_mean(ref, names),
            )
        target = self._params[ref]
        numeric = isinstance(target, (FloatParam, IntParam, DerivedParam)) or (
            isinstance(target, (CategoricalParam, FixedParam)) and target.numeric
        )
        if not numeric:
            raise self._error(
                name, field, f"{ref!r} is not numeric",
                value=ref,
                allowed="a float, int or derived param, or a categorical/fixed one with numbers",
            )

    def _dependency_order(self) -> list[str]:
        # graphlib finds cycles; the heap keeps declaration order wherever dependencies allow.
        graph = {name: param.depends_on() for name, param in self._params.items()}
        sorter = graphlib.TopologicalSorter(graph)
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1])
            if len(cycle) > 1 and cycle[1] not in graph[cycle[0]]:
                cycle.reverse()  # Print it as "a needs b needs ... needs a".
            raise self._error(
                cycle[0], None, "dependency cycle: " + " -> ".join(cycle),
                hint="Fix: break the cycle in `when`/`from`/`times`.",
            ) from None
        index = {name: i for i, name in enumerate(self._params)}
        heap = [(index[n], n) for n in sorter.get_ready()]
        heapq.heapify(heap)
        order = []
        while heap:
            _, name = heapq.heappop(heap)
            order.append(name)
            sorter.done(name)
            for ready in sorter.get_ready():
                heapq.heappush(heap, (index[ready], ready))
        return order

    # -- inspection ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """All param names in dependency order (a param comes after what it depends on)."""
        return list(self._order)

    @property
    def searched_names(self) -> list[str]:
        """Names of params Optuna suggests (float, int, categorical), in dependency order."""
        return [name for name in self._order if self._params[name].searched]

    def params(self) -> dict[str, _BaseParam]:
        """A new ``{name: param model}`` dict in dependency order (the models are frozen)."""
        return {name: self._params[name] for name in self._order}

    def dependents(self, name: str) -> list[str]:
        """Params whose condition or derivation refers to ``name``."""
        return [n for n, p in self._params.items() if name in p.depends_on()]

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def __len__(self) -> int:
        return len(self._params)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace(name={self.name!r}, params={self.names!r})"

    # -- use ----------------------------------------------------------------------------------

    def sample(self, trial: BaseTrial) -> dict[str, Any]:
        """Sample one configuration, define-by-run, in dependency order.

        Searched params whose ``when`` holds are suggested on ``trial`` (an Optuna ``Trial``
        or ``FixedTrial``); fixed and derived values are included too. Params whose
        condition fails, and derived params with an absent input, are left out.

        Example:

            >>> from optuna.trial import FixedTrial
            >>> from spaces import get_preset
            >>> config = get_preset("lora-quick").sample(
            ...     FixedTrial({"learning_rate": 1e-3, "lr_scheduler_type": "cosine",
            ...                 "lora_r": 8, "lora_dropout": 0.05})
            ... )
            >>> assert config["lora_alpha"] == 16 and config["peft_method"] == "lora"
        """
        values: dict[str, Any] = {}
        for name in self._order:
            param = self._params[name]
            if not param.condition_holds(values):
                continue
            value = param._sample(name, trial, values)
            if value is not ABSENT:
                values[name] = value
        return values

    def grid(self) -> dict[str, list[Any]]:
        """The search space for ``optuna.samplers.GridSampler``.

        Categoricals give their choices, ints ``range(low, high + 1, step)``, stepped floats
        their grid points; fixed and derived params are not searched and are left out.
        A continuous or log-scaled float, or a log-scaled int, is a :class:`ConfigError`.

        Conditional params are included as if always active: GridSampler enumerates the full
        Cartesian product, so grid points that differ only in an inactive param run as
        duplicate trials. ``optuna.samplers.BruteForceSampler`` handles conditional spaces
        without duplicates (and needs no grid).

        Example:

            >>> import optuna
            >>> from spaces import SearchSpace
            >>> space = SearchSpace.from_dict(
            ...     {"params": {"r": {"type": "categorical", "choices": [4, 8]},
            ...                 "dropout": {"type": "float", "low": 0, "high": 0.1, "step": 0.05}}}
            ... )
            >>> study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid()))
            >>> study.optimize(lambda t: space.sample(t)["dropout"], n_trials=10)
            >>> assert len(study.trials) == 6
        """
        grid = {}
        for name in self.searched_names:
            try:
                grid[name] = self._params[name]._grid()
            except ConfigError as exc:
                raise exc._nested(source=self._source, prefix=self._keys[name]) from None
        return grid

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-dumpable data that :meth:`from_dict` turns back into an equal space.

        Params keep their declaration order.
        """
        return {
            "name": self.name,
            "description": self.description,
            "params": {name: param.to_dict() for name, param in self._params.items()},
        }
