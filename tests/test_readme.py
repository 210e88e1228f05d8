"""Every YAML example in the README is valid, and the commands it shows exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from objectives import get_objective
from search.settings import SweepSpec
from search.sweep import load_sweep
from spaces import resolve_space

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_yaml_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_yaml_example_is_valid(block, tmp_path):
    data = yaml.safe_load(block)
    if "name" in data:  # a whole sweep file: validate it, then load it with local model and data
        SweepSpec.model_validate(data)
        data.update(model="bundled:tiny-support-lm", dataset={**data["dataset"], "source": "bundled:support-qa"})
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(data))
        load_sweep(path)
    elif "tracking" in data:  # the W&B section
        from search.settings import TrackingConfig

        assert TrackingConfig.model_validate(data["tracking"]).wandb == "auto"
    elif "retries" in data:  # the retry policy section
        from search.settings import RetryPolicy

        assert RetryPolicy.model_validate(data["retries"]) == RetryPolicy()  # the README shows the defaults
    elif "resources" in data:  # trials across several devices
        from search.settings import ResourceSettings

        assert ResourceSettings.model_validate(data["resources"]).devices_per_trial > 1
    elif "pack" in data:  # packed trials
        from search.settings import PackSettings

        assert PackSettings.model_validate(data["pack"]).slots > 1
    elif "model" in data or "budget" in data:  # model and budget settings (the memory and speed knobs)
        from objectives import ModelConfig, TrainBudget

        if "model" in data:
            ModelConfig.model_validate(data["model"])
        if "budget" in data:
            TrainBudget.model_validate(data["budget"])
    elif "pruner" in data:  # a pruner's settings
        from search.components import check_pruner
        from search.settings import ComponentSpec

        check_pruner(ComponentSpec.model_validate(data["pruner"]))
    elif "dataset" in data:  # a `dataset:` section
        from objectives import DataConfig

        DataConfig.model_validate(data["dataset"])
    else:  # a `space:` example
        space = resolve_space(data["space"], source="README.md")
        steering = [n for n in space.names if space.dependents(n)]
        get_objective("causal_lm").check_params(space.names, auxiliary=steering)


def test_readme_commands_exist():
    from search.cli import COMMANDS

    text = README.read_text()
    for command in re.findall(r"ftsweep (\w[\w-]*)", text):
        assert command in COMMANDS, command
