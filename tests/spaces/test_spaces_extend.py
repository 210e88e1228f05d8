"""resolve_space: preset names, extended presets and inline spaces."""

from __future__ import annotations

from typing import Any

from optuna.trial import FixedTrial
import pytest

from spaces import ConfigError
from spaces import get_preset
from spaces import resolve_space


LR = {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}


def test_preset_name() -> None:
    assert resolve_space("lora") == get_preset("lora")


def test_inline_space() -> None:
    space = resolve_space({"params": {"lr": LR}})
    assert space.name == "inline" and space.names == ["lr"]
    named = resolve_space({"name": "mine", "description": "d", "params": {"lr": LR}})
    assert (named.name, named.description) == ("mine", "d")


def test_override_replaces_definition() -> None:
    space = resolve_space({"preset": "lora", "override": {"learning_rate": LR}})
    assert space.params()["learning_rate"].to_dict() == LR  # The preset's `help` is gone too.
    assert space.name == "lora-custom"
    assert "overrode learning_rate" in space.description


@pytest.mark.parametrize(
    ("name", "change"),
    [("learning_rate", {"high": 1e-3}), ("lora_r", {"high": 32}), ("lora_r", {"when": None})],
)
def test_override_without_type_merges_into_preset_definition(name: str, change: dict) -> None:
    space = resolve_space({"preset": "lora", "override": {name: change}})
    preset = get_preset("lora").params()[name].to_dict()
    expected = {k: v for k, v in {**preset, **change}.items() if v is not None}
    assert space.params()[name].to_dict() == expected


def test_override_changes_type_and_dependents_still_work() -> None:
    space = resolve_space(
        {"preset": "lora", "override": {"lora_r": {"type": "categorical", "choices": [8, 16]}}}
    )
    config = space.sample(
        FixedTrial({"learning_rate": 1e-3, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
                    "weight_decay": 0.0, "lora_r": 16, "lora_alpha_ratio": 2,
                    "lora_dropout": 0.1, "target_modules": "attention", "use_rslora": False,
                    "loraplus_lr_ratio": 1.0})
    )
    assert config["lora_alpha"] == 32


def test_add_and_remove() -> None:
    space = resolve_space(
        {
            "preset": "lora",
            "add": {"label_smoothing_factor": {"type": "float", "low": 0, "high": 0.1}},
            "remove": ["lora_dropout"],
            "name": "lora-ls",
        }
    )
    assert "label_smoothing_factor" in space.searched_names
    assert "lora_dropout" not in space
    assert space.name == "lora-ls"
    assert space.names[-1] == "label_smoothing_factor"
    # to_dict() keeps the preset's declaration order, so the dumped space reads like the file.
    preset_order = [n for n in get_preset("lora").to_dict()["params"] if n != "lora_dropout"]
    assert list(space.to_dict()["params"]) == [*preset_order, "label_smoothing_factor"]


def test_remove_dependency_together_with_dependent() -> None:
    space = resolve_space({"preset": "lora", "remove": ["lora_alpha_ratio", "lora_alpha"]})
    assert "lora_alpha" not in space and "lora_r" in space


def test_remove_accepts_a_single_name() -> None:
    assert "lora_dropout" not in resolve_space({"preset": "lora", "remove": "lora_dropout"})


def test_override_can_free_a_dependency_for_removal() -> None:
    space = resolve_space(
        {
            "preset": "lora",
            "override": {"lora_alpha": {"type": "derived", "from": "lora_r", "times": 2}},
            "remove": ["lora_alpha_ratio"],
        }
    )
    assert space.params()["lora_alpha"].times == 2


def test_to_dict_of_extended_space_round_trips_as_inline() -> None:
    space = resolve_space({"preset": "lora", "remove": ["lora_dropout"]})
    assert resolve_space(space.to_dict()) == space


# (id, space value, key path in the message, text that must appear)
TYPO_CASES: list[tuple[str, Any, str, str]] = [
    ("unknown-preset", "lroa", "sweep.yaml: space: ", "'lroa'"),
    ("unknown-preset-extended", {"preset": "qlora"}, "space.preset: ", "'qlora'"),
    ("override-unknown", {"preset": "lora", "override": {"learning_rat": LR}},
     "space.override.learning_rat: ", "Did you mean 'learning_rate'?"),
    ("add-existing", {"preset": "lora", "add": {"learning_rate": LR}},
     "space.add.learning_rate: ", "use `override`"),
    ("remove-unknown", {"preset": "lora", "remove": ["lora_dropot"]},
     "space.remove[0]: ", "'lora_dropot'"),
    ("remove-dependency", {"preset": "lora", "remove": ["lora_dropout", "lora_r"]},
     "space.remove[1]: ", "'lora_alpha' depends on it"),
    ("override-and-remove", {"preset": "lora", "override": {"lora_dropout": LR},
                             "remove": ["lora_dropout"]},
     "space.override.lora_dropout: ", "both overridden and removed"),
    ("bad-override-value", {"preset": "lora", "override": {"learning_rate": {"low": 0.1}}},
     "space.override.learning_rate.low: ", "got 0.1"),
    ("bad-added-param", {"preset": "lora", "add": {"x": {"type": "float", "low": 1}}},
     "space.add.x.high: ", "missing required key 'high'"),
    ("override-breaks-preset-condition", {"preset": "lora",
                                          "override": {"peft_method": {"value": "full"}}},
     "space.preset[lora].params.lora_r.when.peft_method: ", "can never hold"),
    ("unknown-extension-key", {"preset": "lora", "overide": {}},
     "space.overide: ", "Did you mean 'override'?"),
    ("preset-with-params", {"preset": "lora", "params": {}}, "space.params: ", "`add`"),
    ("neither", {"parms": {}}, "space: ", "needs `preset` or `params`"),
    ("not-a-mapping", ["lora"], "space: ", "got ['lora']"),
    ("remove-everything", {"preset": "lora-quick", "remove": [
        "learning_rate", "lr_scheduler_type", "peft_method", "lora_r", "lora_alpha",
        "lora_dropout", "target_modules"]}, "space.remove: ", "empty space"),
]


@pytest.mark.parametrize(
    ("value", "key", "needle"), [c[1:] for c in TYPO_CASES], ids=[c[0] for c in TYPO_CASES]
)
def test_resolve_errors(value: Any, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_space(value, source="sweep.yaml")
    message = str(info.value)
    assert message.startswith("sweep.yaml: ") and key in message and needle in message, message
