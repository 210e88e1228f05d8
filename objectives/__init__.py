"""Trial functions: set up once per worker, then one short PEFT fine-tune per trial.

The registry below is the one place objectives are listed: adding one is a module plus a line.

Example:
    >>> from objectives import available_objectives
    >>> available_objectives()
    ['causal_lm', 'sequence_classification']
"""

from __future__ import annotations

from importlib import import_module

from ._base import Objective, Reporter, TrialDiverged
from ._config import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget
from ._sources import bundled_datasets, bundled_models, load_splits, resolve_model_path

# name -> "module:Class". Modules are imported on first use, so listing objectives stays cheap.
OBJECTIVES: dict[str, str] = {
    "causal_lm": "objectives.causal_lm:CausalLMObjective",
    "sequence_classification": "objectives.sequence_classification:SequenceClassificationObjective",
}


def available_objectives() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective(name: str) -> type[Objective]:
    """The objective class registered under `name`, or your own as "package.module:ClassName".

    Your own class must subclass `Objective` and be importable wherever trials run (on a Ray cluster:
    on every node). Unknown names raise ConfigError.

    Example:
        >>> get_objective("causal_lm").__name__
        'CausalLMObjective'
        >>> get_objective("objectives.causal_lm:CausalLMObjective").__name__
        'CausalLMObjective'
    """
    from spaces import ConfigError

    if name in OBJECTIVES:
        module, cls = OBJECTIVES[name].split(":")
        return getattr(import_module(module), cls)
    if ":" not in name:
        raise ConfigError("unknown objective", key="objective.name", value=name, allowed=available_objectives(),
                          hint='Fix: use a registered name, or your own class as "package.module:ClassName".')
    module, _, cls = name.partition(":")
    try:
        found = getattr(import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import objective ({exc})", key="objective.name", value=name,
                          hint="Fix: make the module importable (installed, or on PYTHONPATH) and check the class name.") from None
    if not (isinstance(found, type) and issubclass(found, Objective)):
        raise ConfigError("not an Objective subclass", key="objective.name", value=name,
                          hint="Fix: subclass objectives.Objective (or CausalLMObjective / SequenceClassificationObjective).")
    return found


__all__ = [
    "OBJECTIVES",
    "DataConfig",
    "ModelConfig",
    "Objective",
    "ObjectiveOptions",
    "Reporter",
    "TrainBudget",
    "TrialDiverged",
    "available_objectives",
    "bundled_datasets",
    "bundled_models",
    "get_objective",
    "load_splits",
    "resolve_model_path",
]
