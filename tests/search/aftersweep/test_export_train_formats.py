"""The export contract, for every data layout a sweep can train on: a sweep's best trial, exported and trained
unchanged through the CLI, reproduces the trial's value, and winner.yaml names the data format the trial
read (never `auto`, which a later change in detection could read differently)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import deep_merge

from search.cli import main
from search.sweep import find_sweep_file

pytestmark = pytest.mark.slow  # six sweeps, exports and final fits: about a minute on 2 cores

REPO_ROOT = Path(__file__).resolve().parents[3]
OWN_DATA = REPO_ROOT / "examples" / "own-data"

# Each layout: the sweep that trains on it (an example of examples/own-data, or a bundled sweep), and the
# `dataset.format` winner.yaml must then say (None: sequence_classification reads one layout, so has none).
LAYOUTS = {
    "messages": (OWN_DATA / "chat.yaml", "messages"),
    "sharegpt": (OWN_DATA / "sharegpt.yaml", "sharegpt"),
    "alpaca": (OWN_DATA / "alpaca.yaml", "alpaca"),
    "prompt_completion": (OWN_DATA / "prompt-completion.yaml", "prompt_completion"),
    "prompt_response": (find_sweep_file("demo"), "prompt_response"),  # bundled support-qa
    "classification": (find_sweep_file("intents"), None),  # bundled support-intents
}

# One short trial per sweep. eval_loss for every task: a classifier's f1 after 4 steps may be 0, and a zero
# value has no relative error to reproduce. No pruner: the single trial must run its whole budget.
TINY = {"n_trials": 1, "pruner": "none", "metric": "eval_loss", "tracking": {"wandb": "off"},
        "budget": {"max_steps": 4, "eval_every": 2},
        "dataset": {"max_train_examples": 64, "max_eval_examples": 16}}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_exported_winner_names_its_data_format_and_reproduces_the_trial(layout, tmp_path, monkeypatch, capsys):
    sweep_file, expected_format = LAYOUTS[layout]
    # The examples name their data relative to the repository root: a copy of it under tmp_path keeps the
    # repository's files untouched (datasets may write caches beside them).
    shutil.copytree(OWN_DATA, tmp_path / "examples" / "own-data")
    monkeypatch.chdir(tmp_path)
    sweep = deep_merge(yaml.safe_load(sweep_file.read_text()), {**TINY, "output_dir": str(tmp_path / "runs")})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))

    assert main(["launch", str(path)]) == 0
    winner = tmp_path / "winner"
    assert main(["export", str(path), "--out", str(winner)]) == 0
    exported = yaml.safe_load((winner / "winner.yaml").read_text())
    assert exported["dataset"]["format"] == (expected_format or "auto")

    final = tmp_path / "final"
    capsys.readouterr()
    assert main(["train", str(winner / "winner.yaml"), "--set", f"output_dir={final}"]) == 0
    assert "Trial value" in capsys.readouterr().out
    reproduction = json.loads((final / "metrics.json").read_text())["reproduction"]
    assert reproduction["metric"] == "eval_loss" and reproduction["comparable"]
    assert reproduction["relative_error"] < 0.01, reproduction
