"""A base model's architecture, read from its config alone (objectives/engine/architecture.py): target
modules per architecture, and the launch-time checks of a space against every model it can take."""

from __future__ import annotations

import pytest

from objectives import ObjectiveOptions
from search.sweep import load_sweep
from spaces import ConfigError
from tests.objectives.engine.tiny_models import GPT2, LLAMA, LORA, tiny_objective


def test_target_modules_per_architecture_from_the_sweep_or_peft():
    objective = tiny_objective(options=ObjectiveOptions(target_modules={"gpt2": ["c_attn", "c_proj"]}))
    objective.setup()
    assert sorted(objective.peft_config(LORA).target_modules) == ["q_proj", "v_proj"]  # PEFT's Llama default
    objective.worker.use(GPT2)
    config = objective.peft_config(LORA)
    assert sorted(config.target_modules) == ["c_attn", "c_proj"] and config.fan_in_fan_out
    # The short names of the space map per architecture too.
    assert objective.peft_config({**LORA, "target_modules": "attention_qv"}).target_modules == {"c_attn"}


def test_an_architecture_is_read_from_its_config_alone_before_setup():
    objective = tiny_objective(options=ObjectiveOptions(target_modules={"gpt2": ["c_attn", "c_proj"]}))
    gpt2 = objective.architecture(GPT2)
    assert objective.base_model is None and gpt2.loaded is None  # nothing loaded
    assert gpt2.model_type() == "gpt2" and objective.architecture().model_type() == "llama"
    assert sorted(gpt2.peft_config(LORA).target_modules) == ["c_attn", "c_proj"]
    assert next(gpt2.skeleton().parameters()).device.type == "meta"


# ------------------------------------------------------------------------------------ bad input


def test_a_model_the_space_names_but_that_does_not_exist_is_refused_at_launch(write_sweep, tmp_path):
    path = write_sweep(space={"params": {"learning_rate": {"type": "fixed", "value": 1e-3},
                                         "base_model": {"type": "categorical",
                                                        "choices": [LLAMA, str(tmp_path / "missing")]}}})
    sweep = load_sweep(path)
    with pytest.raises(ConfigError, match="model path does not exist") as error:
        sweep.make_objective().check_space(sweep.space)
    assert "missing" in str(error.value)


def test_a_target_module_one_of_the_models_lacks_is_refused_naming_that_model(write_sweep):
    path = write_sweep(space={"params": {"learning_rate": {"type": "fixed", "value": 1e-3},
                                         "base_model": {"type": "categorical", "choices": [LLAMA, GPT2]},
                                         "target_modules": {"type": "fixed", "value": "q_proj,v_proj"}}})
    sweep = load_sweep(path)
    with pytest.raises(ConfigError) as error:
        sweep.make_objective().check_space(sweep.space)
    assert f"with base_model {GPT2}" in str(error.value) and "q_proj" in str(error.value)


def test_base_model_must_be_categorical(write_sweep):
    path = write_sweep(space={"params": {"learning_rate": {"type": "fixed", "value": 1e-3},
                                         "base_model": {"type": "float", "low": 0.0, "high": 1.0}}})
    sweep = load_sweep(path)
    with pytest.raises(ConfigError, match="base_model must be categorical"):
        sweep.make_objective().check_space(sweep.space)
