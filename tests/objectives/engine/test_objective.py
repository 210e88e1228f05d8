"""The objective the sweep engine runs (objectives/engine/objective.py): classes per registered task or
your own Task, and the checks a sweep file gets before anything loads."""

from __future__ import annotations

import pytest

from objectives import TASKS, Objective, get_objective
from objectives.tasks.causal_lm import CausalLMTask
from spaces import ConfigError


class ShoutedAnswers(CausalLMTask):
    """A user's own task: causal_lm under another name (importable as tests.objectives.engine...)."""

    name = "shouted_answers"


def test_each_registered_task_has_one_objective_class():
    assert sorted(TASKS.names()) == ["causal_lm", "sequence_classification"]
    for name in TASKS.names():
        cls = get_objective(name)
        assert issubclass(cls, Objective) and cls is get_objective(name) and cls.task_class is TASKS.get(name)
        assert (cls.name, cls.metrics, cls.peft_task_type) == (name, cls.task_class.metrics, cls.task_class.peft_task_type)


def test_your_own_task_or_objective_class_by_import_path():
    path = f"{__name__}:ShoutedAnswers"
    cls = get_objective(path)
    assert cls.task_class is ShoutedAnswers and cls.name == "shouted_answers" and cls is get_objective(path)
    # A subclass of an objective class (to change what a trial does) is taken as it is.
    subclass = type("Logged", (get_objective("causal_lm"),), {"__module__": __name__})
    globals()["Logged"] = subclass
    try:
        assert get_objective(f"{__name__}:Logged") is subclass
    finally:
        del globals()["Logged"]


@pytest.mark.parametrize(("name", "words"), [
    ("causal", "unknown objective"),
    ("objectives.nowhere:Task", "cannot import objective"),
    ("objectives.settings:DataConfig", "not a Task subclass"),
])
def test_bad_objective_names_are_refused_with_the_fix(name, words):
    with pytest.raises(ConfigError, match=words) as caught:
        get_objective(name)
    assert caught.value.key == "objective.name"
    if words == "unknown objective":
        assert "causal_lm" in str(caught.value) and "package.module:ClassName" in str(caught.value)


def test_unknown_space_parameter_is_rejected_before_any_trial():
    cls = get_objective("causal_lm")
    with pytest.raises(ConfigError) as err:
        cls.check_params(["learning_rate", "lora_rank"], source="s.yaml")
    assert "lora_rank" in str(err.value) and "s.yaml" in str(err.value) and "lora_r" in str(err.value)
    cls.check_params(["learning_rate", "lora_alpha_ratio"], auxiliary=["lora_alpha_ratio"])
    # A task's own parameters: group balancing is classification's.
    get_objective("sequence_classification").check_params(["group_balance"])
    with pytest.raises(ConfigError, match="group_balance"):
        cls.check_params(["group_balance"])


def test_unknown_metric_lists_the_objectives_metrics():
    with pytest.raises(ConfigError, match="perplexity"):
        get_objective("causal_lm").check_metric("accuracy")
    assert get_objective("causal_lm").check_metric("latency_ms") == "minimize"  # a cost every objective measures