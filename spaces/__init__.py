"""Typed hyperparameter search spaces, with presets shipped as YAML.

A space is a mapping of params, each with a ``type``::

    name: my-space            # optional
    description: ...          # optional
    params:
      learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}  # low, high, log, step
      lora_r:        {type: int, low: 4, high: 64, log: true,              # low, high, log, step=1
                      when: {peft_method: lora}}                           # every entry must match
      lr_scheduler_type: {type: categorical, choices: [linear, cosine]}
      peft_method:   {type: fixed, value: lora}
      lora_alpha:    {type: derived, from: lora_r, times: 2, plus: 0, as: int}

Every param may have ``when: {other: value_or_list_of_values}`` and ``help: text``.
Presets are the ``*.yaml`` files in ``spaces/presets/``; adding one is dropping a file there.

Example:

    >>> import optuna
    >>> from spaces import resolve_space
    >>> space = resolve_space({"preset": "lora-quick", "remove": ["lora_dropout"]})
    >>> study = optuna.create_study()
    >>> study.optimize(lambda trial: space.sample(trial)["learning_rate"], n_trials=5)
"""

from spaces._errors import ConfigError
from spaces._errors import from_validation_error
from spaces._params import CategoricalParam
from spaces._params import DerivedParam
from spaces._params import FixedParam
from spaces._params import FloatParam
from spaces._params import IntParam
from spaces._params import Param
from spaces._params import finite_values
from spaces._params import when_values
from spaces._presets import get_preset
from spaces._presets import list_presets
from spaces._presets import preset_path
from spaces._presets import resolve_space
from spaces._registry import Registry
from spaces._space import SearchSpace
from spaces._yaml import load_yaml


__all__ = [
    "CategoricalParam",
    "ConfigError",
    "DerivedParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "Registry",
    "SearchSpace",
    "finite_values",
    "from_validation_error",
    "get_preset",
    "list_presets",
    "load_yaml",
    "preset_path",
    "resolve_space",
    "when_values",
]
