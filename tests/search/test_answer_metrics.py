"""Sweeps that pick the winner by its answers (choice_accuracy, exact_match), through the CLI: what the
launch says it will score, what it refuses before any trial, and a winner whose accuracy after `export` +
`train`, reloaded in plain PEFT and scored by hand, is what `train` reported."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives import DataConfig, ModelConfig, load_splits, resolve_model_path
from search.cli import main
from search.store.storage import load_existing_study

SMALL = ["budget.max_steps=12", "budget.eval_every=4", "budget.batch_size=8", "dataset.max_train_examples=240",
         "dataset.max_eval_examples=40", "objective.args.eval_samples=30", "tracking.wandb=off"]


def _launch(tmp_path, *overrides: str, sweep: str = "routing") -> int:
    argv = ["launch", sweep, "--set", f"output_dir={tmp_path / 'runs'}"]
    for item in [*SMALL, *overrides]:
        argv += ["--set", item]
    return main(argv)


def _study(tmp_path, name: str = "routing") -> optuna.Study:
    return load_existing_study(name, f"journal:///{tmp_path / 'runs' / f'{name}.journal'}")


def test_the_launch_says_what_is_scored_and_the_sweep_records_the_inferred_choices(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the tables' columns unabridged
    assert _launch(tmp_path, "n_trials=2", "record_metrics=[exact_match, choice_nll]") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("Task metrics: exact_match, choice_accuracy, choice_nll on 30 of 40 validation rows (drawn with seed 0), "
            "the answer found by 'our (\\\\w+) team', over 4 choices inferred from the answers: account, billing, "
            "returns, shipping") in out
    study = _study(tmp_path)
    assert study.user_attrs["sweep"]["objective"]["args"]["choices"] == ["account", "billing", "returns", "shipping"]
    for trial in study.trials:
        metrics = trial.user_attrs["metrics"]
        assert trial.value == metrics["choice_accuracy"]
        assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["choice_nll"] > 0 and metrics["eval_loss"] > 0
        # every evaluation scored the answers (task_metrics_every: 1)
        assert [e["step"] for e in trial.user_attrs["eval_history"] if "choice_accuracy" in e] == [4, 8, 12]
    # The table puts the loss and the recorded metrics beside the one picked by; the report draws the loss against it.
    capsys.readouterr()
    assert main(["best", str(tmp_path / "runs" / "routing.journal")]) == 0
    header = capsys.readouterr().out
    assert all(name in header for name in ("choice_accuracy", "exact_match", "choice_nll", "eval_loss"))
    assert main(["report", str(tmp_path / "runs" / "routing.journal"), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert (tmp_path / "report" / "loss_vs_metric.png").stat().st_size > 0
    assert "eval_loss against choice_accuracy (Spearman" in page and '"yaxis":{"title":{"text":"choice_accuracy"}' in page


def test_the_winner_scores_the_same_after_export_train_and_a_plain_peft_reload(tmp_path):
    assert _launch(tmp_path, "n_trials=2", "budget.max_steps=24", "budget.eval_every=12") == 0
    study = _study(tmp_path)
    best = study.best_trial
    assert main(["export", str(tmp_path / "runs" / "routing.journal"), "--out", str(tmp_path / "winner")]) == 0
    winner = yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())
    args = winner["objective"]["args"]
    assert args["choices"] == ["account", "billing", "returns", "shipping"] and args["answer_pattern"] == "our (\\w+) team"
    assert args["eval_samples"] == 30
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'final'}"]) == 0
    record = json.loads((tmp_path / "final" / "metrics.json").read_text())
    metrics = record["metrics"]
    # The same trial again: the validation accuracy the study recorded, within a point.
    assert record["reproduction"]["metric"] == "choice_accuracy"
    assert abs(metrics["choice_accuracy"] - best.value) <= 0.01

    # The adapter reloaded in plain PEFT and the test rows scored by hand (the chat template rendered here).
    base = resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "final" / "adapter"))
    model.eval()
    template = args["chat_template"]
    data = DataConfig(**winner["dataset"])
    test = load_splits(data, seed=winner["seed"], columns=["messages"]).test
    right = 0
    for row in test:
        history, reference = row["messages"][:-1], row["messages"][-1]["content"]
        prompt = tokenizer.apply_chat_template(history, chat_template=template, tokenize=False, add_generation_prompt=True)
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for team in args["choices"]:
            answer = re.sub(r"our \w+ team", f"our {team} team", reference)
            full = tokenizer.apply_chat_template([*history, {"role": "assistant", "content": answer}],
                                                 chat_template=template, tokenize=False)
            continuation = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
            scores.append(sum(float(logprobs[len(context) - 1 + k, t]) for k, t in enumerate(continuation)))
        right += f"our {args['choices'][max(range(len(scores)), key=scores.__getitem__)]} team" in reference
    assert abs(right / len(test) - metrics["test_choice_accuracy"]) <= 0.01
    assert len(test) > 30  # the whole test split, not the validation sample


def test_a_pruner_decides_at_the_evaluations_that_have_the_metric(tmp_path):
    assert _launch(tmp_path, "n_trials=4", "objective.args.task_metrics_every=2",
                   "pruner={name: median, args: {n_startup_trials: 1}}") == 0
    for trial in _study(tmp_path).trials:
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        assert set(trial.intermediate_values) <= {8, 12}  # step 4 has no choice_accuracy to decide on
        history = trial.user_attrs["eval_history"]
        assert [e["step"] for e in history if "choice_accuracy" in e] == [e for e in (8, 12) if e <= history[-1]["step"]]


@pytest.mark.parametrize(("sweep", "overrides", "key", "says"), [
    ("routing", ["objective.args.answer_pattern='goes to (\\w+)'"], "objective.args.answer_pattern",
     "the answer pattern matches 0 of 40 validation references (row 0:"),
    ("routing", ["objective.args.choices=[billing, shipping, returns]"], "objective.args.choices",
     "validation answers are none of the choices (row"),
    ("demo", ["metric=choice_accuracy"], "objective.args.choices",  # free-text answers
     "choice_accuracy needs the answers' choices, and the answers take"),
])
def test_data_the_metric_cannot_score_is_refused_before_any_trial(tmp_path, capsys, sweep, overrides, key, says):
    assert _launch(tmp_path, *overrides, sweep=sweep) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert key in err and says in err and "Fix:" in err
    assert not list((tmp_path / "runs").glob("*.journal"))  # nothing created


def test_a_metric_the_task_does_not_compute_is_refused(tmp_path, capsys):
    assert main(["launch", "intents", "--set", "metric=choice_accuracy", "--set", f"output_dir={tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "does not report this metric" in err and "choice_accuracy" in err and "metric.name" in err


def test_ray_refuses_a_metric_it_would_not_find_in_every_report(tmp_path, capsys):
    assert main(["launch", "routing", "--set", "backend=ray", "--set", "objective.args.task_metrics_every=2",
                 "--set", f"output_dir={tmp_path}", "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "objective.args.task_metrics_every" in err and "every report" in err
