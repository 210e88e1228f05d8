"""The preset registry and the shipped presets (new preset files are picked up automatically)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spaces import ConfigError
from spaces import get_preset
from spaces import list_presets
from spaces import load_yaml
from spaces import preset_path
from spaces import SearchSpace
import spaces._presets


@pytest.mark.parametrize("name", list_presets())
def test_preset_is_valid_and_named_after_its_file(name: str) -> None:
    space = get_preset(name)
    assert space.name == name
    assert space.description.strip()
    assert space.searched_names
    assert preset_path(name).is_file()


@pytest.mark.parametrize("name", list_presets())
def test_preset_round_trips(name: str, tmp_path: Path) -> None:
    space = get_preset(name)
    data = space.to_dict()
    assert SearchSpace.from_dict(data) == space
    assert SearchSpace.from_dict(data).to_dict() == data
    # ... and through a YAML file, since that is how spaces get shared.
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert SearchSpace.from_dict(load_yaml(path)) == space


def test_shipped_presets() -> None:
    assert {"lora", "lora-quick"} <= set(list_presets())


def test_lora_preset_contents() -> None:
    params = get_preset("lora").to_dict()["params"]
    lr = {k: v for k, v in params["learning_rate"].items() if k != "help"}
    # LoRA's best learning rate is ~10x full fine-tuning's (1e-5..5e-5): a decade either side of 1e-4..5e-4.
    assert lr == {"type": "float", "low": 2e-5, "high": 5e-3, "log": True}
    assert params["use_rslora"] == {"type": "categorical", "choices": [False, True], "when": {"peft_method": "lora"}}
    assert params["loraplus_lr_ratio"] == {"type": "float", "low": 1.0, "high": 32.0, "log": True,
                                           "when": {"peft_method": "lora"}}
    assert params["lr_scheduler_type"]["choices"] == [
        "linear", "cosine", "cosine_with_restarts", "constant_with_warmup"
    ]
    assert (params["warmup_ratio"]["low"], params["warmup_ratio"]["high"]) == (0.0, 0.2)
    assert (params["weight_decay"]["low"], params["weight_decay"]["high"]) == (0.0, 0.1)
    assert params["peft_method"] == {"type": "fixed", "value": "lora"}
    assert params["lora_r"] == {
        "type": "int", "low": 4, "high": 64, "log": True, "when": {"peft_method": "lora"}
    }
    assert params["lora_alpha_ratio"]["choices"] == [0.5, 1, 2, 4]
    assert params["lora_alpha"] == {
        "type": "derived", "from": "lora_r", "times": "lora_alpha_ratio", "as": "int"
    }
    assert (params["lora_dropout"]["low"], params["lora_dropout"]["high"]) == (0.0, 0.3)
    assert params["target_modules"]["choices"] == ["attention_qv", "attention", "all_linear"]


def test_lora_quick_preset_contents() -> None:
    params = get_preset("lora-quick").to_dict()["params"]
    assert params["learning_rate"] == {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}
    assert params["lr_scheduler_type"]["choices"] == ["linear", "cosine"]
    assert params["lora_r"]["choices"] == [4, 8, 16]
    assert params["lora_alpha"] == {"type": "derived", "from": "lora_r", "times": 2, "as": "int"}
    assert params["peft_method"] == {"type": "fixed", "value": "lora"}
    assert params["target_modules"] == {"type": "fixed", "value": "attention_qv"}


def test_registry_is_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spaces._presets, "PRESETS_DIR", tmp_path)
    (tmp_path / "family").mkdir()
    (tmp_path / "family" / "mine.yaml").write_text(
        "name: family/mine\nparams:\n  lr: {type: float, low: 0.1, high: 1}\n"
    )
    (tmp_path / "notes.txt").write_text("not a preset")
    (tmp_path / "wrong.yaml").write_text(
        "name: right\nparams:\n  lr: {type: float, low: 0.1, high: 1}\n"
    )
    assert list_presets() == ["family/mine", "wrong"]
    assert get_preset("family/mine").names == ["lr"]
    with pytest.raises(ConfigError) as info:
        get_preset("wrong")
    assert str(info.value).startswith(f"{tmp_path / 'wrong.yaml'}: name: ")
    assert "got 'right'" in str(info.value)


@pytest.mark.parametrize("name", ["nope", "../spaces/presets/lora", "lora.yaml"])
def test_unknown_preset(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        preset_path(name)
    assert f"got {name!r}" in str(info.value) and "'lora'" in str(info.value)


def test_error_inside_a_preset_names_the_preset_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spaces._presets, "PRESETS_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text("name: bad\nparams:\n  r: {type: int, low: 8, high: 4}\n")
    with pytest.raises(ConfigError) as info:
        get_preset("bad")
    assert str(info.value).startswith(f"{tmp_path / 'bad.yaml'}: params.r.low: ")
