"""examples/ci/pipeline.sh end to end, with the project's own commands on tiny settings: a candidate
that beats the champion is published; one that does not, or data with errors, stops the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SWEEP, deep_merge

from search.cli import main

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "ci" / "pipeline.sh"
# The bundled demo sweep, made tiny; a high learning rate so that four steps clearly beat the champion.
TINY = ["--set", "n_trials=2", "--set", "budget.max_steps=4", "--set", "budget.eval_every=2",
        "--set", "dataset.max_train_examples=64", "--set", "dataset.max_eval_examples=16",
        "--set", "tracking.wandb=off", "--set", "space.override.learning_rate={low: 1.0e-2, high: 3.0e-2}"]


def _pipeline(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "WORK": str(cwd / "work"), **env,
               # `ftsweep` of this environment first on PATH, as after `make setup` / pip install.
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=600, check=False)  # the exit status is what the tests look at


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> Path:
    """A weak model in production: one step at a tiny learning rate, on the demo's data and test split."""
    root = tmp_path_factory.mktemp("champion")
    winner = root / "winner.yaml"
    winner.write_text(yaml.safe_dump({
        "name": "prod", "objective": "causal_lm", "model": "bundled:tiny-support-lm",
        "dataset": {"source": "bundled:support-qa", "max_train_examples": 64, "max_eval_examples": 16},
        "params": {"learning_rate": 1e-5, "lora_r": 4, "lora_alpha": 8}, "seed": 0,
        "budget": {"max_steps": 1, "eval_every": 1, "batch_size": 16, "max_seq_length": 64},
    }))
    assert main(["train", str(winner), "--set", f"output_dir={root / 'prod'}"]) == 0
    return root / "prod"


def test_a_better_candidate_is_published_and_becomes_the_next_champion(champion, tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    done = _pipeline(first, "demo", *TINY, CHAMPION=str(champion))
    assert done.returncode == 0, done.stdout + done.stderr
    artifacts = first / "artifacts"
    assert json.loads((artifacts / "data-report.json").read_text())["ok"] is True
    winner = yaml.safe_load((artifacts / "winner" / "winner.yaml").read_text())
    assert winner["provenance"]["study"] == "demo" and winner["budget"]["max_steps"] == 4
    verdict = json.loads((artifacts / "verdict.json").read_text())
    assert verdict["decision"] == "pass" and verdict["metric"] == "eval_loss"
    assert verdict["champion"]["directory"] == str(champion.resolve())
    model = artifacts / "model"
    assert (model / "adapter" / "adapter_config.json").exists() and (model / "run.yaml").exists()
    record = json.loads((model / "metrics.json").read_text())
    assert record["metrics"]["test_loss"] == pytest.approx(verdict["candidate"]["metrics"]["eval_loss"], rel=1e-4)

    # The published model is the champion of the next run; the same candidate cannot beat itself by 100.
    second = tmp_path / "second"
    second.mkdir()
    done = _pipeline(second, "demo", *TINY, CHAMPION=str(model), MARGIN="100")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing published" in done.stderr
    verdict = json.loads((second / "artifacts" / "verdict.json").read_text())
    assert verdict["decision"] == "fail" and verdict["margin"] == {"absolute": 100.0}
    assert not (second / "artifacts" / "model").exists()


def test_data_with_errors_stops_the_pipeline(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}?", "answer": f"answer {i}."}) + "\n"
                            for i in range(40)))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {"dataset": {"source": str(data)}})))
    done = _pipeline(tmp_path, str(sweep))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "artifacts" / "data-report.json").read_text())
    assert not report["ok"] and any(f["level"] == "error" and f["check"] == "columns" for f in report["findings"])
    assert not (tmp_path / "artifacts" / "winner").exists()


def test_existing_results_are_never_overwritten(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "model").mkdir()
    done = _pipeline(tmp_path, "demo")
    assert done.returncode == 2 and "not empty" in done.stderr
    done = _pipeline(tmp_path, "demo", ARTIFACTS=str(tmp_path / "fresh"), CHAMPION=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "not a trained model" in done.stderr
