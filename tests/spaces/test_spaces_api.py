"""SearchSpace / param model API; every public object carries a runnable (doctest) example."""

from __future__ import annotations

import inspect

import optuna
import pydantic
import pytest

import spaces
from spaces import CategoricalParam
from spaces import ConfigError
from spaces import DerivedParam
from spaces import FloatParam
from spaces import get_preset
from spaces import SearchSpace


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_public_api_has_runnable_examples() -> None:
    # The examples themselves run as doctests (pytest --doctest-modules, see pyproject.toml).
    objects = {name: getattr(spaces, name) for name in spaces.__all__}
    objects.update({f"SearchSpace.{name}": getattr(SearchSpace, name) for name in ("from_dict", "sample", "grid")})
    for required in ["ConfigError", "SearchSpace", "SearchSpace.from_dict", "SearchSpace.sample",
                     "SearchSpace.grid", "resolve_space", "load_yaml", "get_preset", "list_presets", "preset_path",
                     "Registry"]:
        assert ">>> " in (inspect.getdoc(objects[required]) or ""), f"{required} has no doctest example"


def test_space_from_param_objects() -> None:
    space = SearchSpace(
        {
            "lr": FloatParam(low=1e-4, high=1e-2, log=True),
            "r": CategoricalParam(choices=[4, 8]),
            "alpha": {"type": "derived", "from": "r", "times": 2, "as": "int"},
        },
        name="py",
    )
    assert space.names == ["lr", "r", "alpha"] and space.name == "py"
    assert "alpha" in space and "beta" not in space and len(space) == 3
    assert isinstance(space.params()["alpha"], DerivedParam)
    assert space.dependents("r") == ["alpha"]


def test_params_are_frozen() -> None:
    param = get_preset("lora").params()["learning_rate"]
    with pytest.raises(pydantic.ValidationError):
        param.low = 0.5  # type: ignore[misc]


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^x\.yaml: space: a search space must be a mapping"):
        SearchSpace.from_dict(["lr"], source="x.yaml")  # type: ignore[arg-type]


def test_error_without_source_or_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpace({"r": {"type": "int", "low": 8, "high": 4}})
    assert str(info.value).startswith("params.r.low: low (8) is greater than high (4)")
    assert info.value.source is None and info.value.value == 8


def test_int_param_accepts_only_ints() -> None:
    # Strict on purpose: `low: 4.0` or `low: "4"` is most likely a typo for another param type.
    with pytest.raises(ConfigError, match="valid integer"):
        SearchSpace({"r": {"type": "int", "low": 4.0, "high": 8}})
    with pytest.raises(ConfigError, match="valid boolean"):
        SearchSpace({"r": {"type": "int", "low": 4, "high": 8, "log": "yes"}})
