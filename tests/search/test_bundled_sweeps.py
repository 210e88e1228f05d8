"""The bundled example sweeps the README points to, each run through the CLI (fewer trials and steps),
with what each one is there to show checked on its study."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.sweep import bundled_sweeps


README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = ["budget.max_steps=8", "budget.eval_every=4", "budget.batch_size=8", "dataset.max_train_examples=128",
         "dataset.max_eval_examples=32", "tracking.wandb=off"]


def _launch(name: str, tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / name
    argv = ["launch", name, "--set", f"output_dir={out}"]
    for item in [*SMALL, *overrides]:
        argv += ["--set", item]
    assert main(argv) == 0
    return out / f"{name}.journal"


def _json(capsys, *argv):
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_every_bundled_sweep_the_readme_launches_is_tested_here():
    launched = set(re.findall(r"ftsweep launch (\w[\w-]*)", README.read_text())) & set(bundled_sweeps())
    tested = {"demo", "intents", "generation", "pareto", "models", "fairness", "augmented", "routing"}
    assert launched <= tested and set(bundled_sweeps()) <= tested


def test_intents_reports_accuracy_precision_recall_and_f1(tmp_path, capsys):
    study = _launch("intents", tmp_path, "n_trials=2")
    best = _json(capsys, "best", str(study), "--json")[0]
    metrics = _json(capsys, "show", str(study), str(best["number"]), "--json")["metrics"]
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro",
                 "f1_micro"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert best["value"] == metrics["f1_macro"]


def test_routing_picks_the_winner_by_choice_accuracy_and_records_the_loss_beside_it(tmp_path, capsys):
    study = _launch("routing", tmp_path, "n_trials=2", "objective.args.eval_samples=16")
    best = _json(capsys, "best", str(study), "--json")[0]
    metrics = _json(capsys, "show", str(study), str(best["number"]), "--json")["metrics"]
    assert best["value"] == metrics["choice_accuracy"] and 0.0 <= metrics["choice_accuracy"] <= 1.0
    assert metrics["eval_loss"] > 0 and 0.0 <= metrics["exact_match"] <= 1.0 and metrics["choice_nll"] > 0


def test_generation_records_bleu_and_rouge(tmp_path, capsys):
    study = _launch("generation", tmp_path, "n_trials=1", "objective.args.generation_samples=4")
    details = _json(capsys, "show", str(study), "0", "--json")
    for entry in details["eval_history"]:
        assert 0.0 <= entry["bleu"] <= 100.0
        assert all(0.0 <= entry[name] <= 1.0 for name in ("rouge1", "rouge2", "rougeL"))
    assert details["value"] == details["metrics"]["eval_loss"]


def test_pareto_exports_its_front(tmp_path, capsys):
    study = _launch("pareto", tmp_path, "n_trials=4")
    front = _json(capsys, "best", str(study), "--json")
    assert front and all(len(row["values"]) == 2 for row in front)
    out = tmp_path / "front"
    assert main(["export", str(study), "--pareto", "--out", str(out)]) == 0
    summary = json.loads((out / "pareto.json").read_text())
    assert sorted(t["number"] for t in summary["trials"]) == sorted(row["number"] for row in front)
    assert all((out / t["directory"] / "adapter_config.json").exists() for t in summary["trials"])


def test_models_sweeps_both_architectures_with_regularization(tmp_path, capsys):
    # Seeded random sampling draws both models within 3 trials (the seed fixes the draws).
    study = _launch("models", tmp_path, "n_trials=3", "sampler=random", "pruner=none")
    rows = _json(capsys, "best", str(study), "--json")
    assert {row["params"]["base_model"] for row in rows} == {"bundled:tiny-support-lm", "bundled:tiny-support-gpt2"}
    for row in rows:
        history = _json(capsys, "show", str(study), str(row["number"]), "--json")["eval_history"]
        assert all("train_eval_gap" in entry for entry in history)
    winner = tmp_path / "winner"
    assert main(["export", str(study), "--out", str(winner)]) == 0
    spec = yaml.safe_load((winner / "winner.yaml").read_text())
    assert spec["model"]["name_or_path"] == next(r for r in rows if r["number"] == rows[0]["number"])["params"]["base_model"]


def test_fairness_trades_f1_against_the_group_gap(tmp_path, capsys):
    from objectives.data.fairness import FAIRNESS_METRICS

    study = _launch("fairness", tmp_path, "n_trials=2", "sampler=random", "dataset.max_eval_examples=120")
    details = _json(capsys, "show", str(study), "0", "--json")
    assert details["values"] == [details["metrics"]["f1_macro"], details["metrics"]["accuracy_group_gap"]]
    assert set(FAIRNESS_METRICS) <= set(details["metrics"])
    (name, value), = details["constraints"].items()
    assert name == "demographic_parity_difference <= 0.5"
    assert value == pytest.approx(details["metrics"]["demographic_parity_difference"] - 0.5)


def test_augmented_trains_on_more_rows_than_it_evaluates_on(tmp_path, capsys):
    study = _launch("augmented", tmp_path, "n_trials=2", "sampler=random", "pruner=none")
    rows = _json(capsys, "best", str(study), "--json")
    assert len(rows) == 2 and all(any(k.startswith("aug_") for k in row["params"]) for row in rows)
