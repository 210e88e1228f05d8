"""lm-evaluation-harness tasks as sweep metrics (objectives/evaluation/harness.py), offline, on task YAMLs and local data
the tests write: a multiple-choice task optimized, a generate-until task recorded, both run in-process on each
trial's live adapter; the winner's score is what lm-eval itself gives the adapter saved by `train` and loaded
from disk; and every way a task cannot run is refused at launch with its key."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from objectives import ModelConfig, resolve_model_path
from objectives.data.sources import ASSETS
from search.cli import main
from search.store.storage import load_existing_study

pytest.importorskip("lm_eval")  # the `lmeval` extra, part of the test install

TEAMS = ["account", "billing", "returns", "shipping"]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Two lm-eval tasks on 40 routing rows in a local JSON-lines file: multiple choice and generate-until."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = []
    with open(ASSETS / "datasets" / "support_routing.jsonl") as f:
        for line in list(f)[:40]:
            messages = json.loads(line)["messages"]
            rows.append({"text": messages[0]["content"], "team": messages[1]["content"].split("our ")[-1].split()[0]})
    (root / "routing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / "routing.jsonl")}},
              "test_split": "test", "doc_to_text": "Question: {{text}}\nAnswer: I have passed your message to our"}
    (root / "routing_mc.yaml").write_text(yaml.safe_dump({
        "task": "routing_mc", **common, "output_type": "multiple_choice", "doc_to_choice": TEAMS,
        "doc_to_target": "{{" + repr(TEAMS) + ".index(team)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    (root / "routing_gen.yaml").write_text(yaml.safe_dump({
        "task": "routing_gen", **common, "output_type": "generate_until", "doc_to_target": " {{team}}",
        "generation_kwargs": {"until": [" team", "</s>"], "max_gen_toks": 6, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}]}))
    return root


def _sweep(write_sweep, task_dir, **changes):
    evaluation = {"tasks": ["routing_mc", "routing_gen"], "include_path": str(task_dir), "limit": 20, "every": 1}
    return write_sweep(**{
        "metric": "lm_eval:routing_mc/acc", "record_metrics": ["lm_eval:routing_gen/exact_match"],
        "evaluation": {**evaluation, **changes.pop("evaluation", {})}, "n_trials": 2, **changes})


def _study(path) -> optuna.Study:
    spec = yaml.safe_load(path.read_text())
    return load_existing_study(spec["name"], f"journal:///{spec['output_dir']}/{spec['name']}.journal")


def test_an_lm_eval_task_is_the_sweep_metric_and_another_is_recorded(write_sweep, task_dir, capsys):
    path = _sweep(write_sweep, task_dir)
    assert main(["launch", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("lm-eval: lm_eval:routing_mc/acc, lm_eval:routing_gen/exact_match, 20 rows per task, every 2 steps and "
            "at the final evaluation") in out
    assert "maximize lm_eval:routing_mc/acc" in out
    for trial in _study(path).trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        history = trial.user_attrs["eval_history"]
        assert [e["step"] for e in history if "lm_eval:routing_mc/acc" in e] == [2, 4]
        metrics = trial.user_attrs["metrics"]
        assert trial.value == metrics["lm_eval:routing_mc/acc"] and metrics["lm_eval:routing_mc/acc"] in {
            k / 20 for k in range(21)}  # a share of the 20 rows
        assert 0.0 <= metrics["lm_eval:routing_gen/exact_match"] <= 1.0 and metrics["eval_loss"] > 0
        assert trial.intermediate_values == {2: history[0]["lm_eval:routing_mc/acc"], 4: metrics["lm_eval:routing_mc/acc"]}


def test_the_winners_score_is_what_lm_eval_gives_its_adapter_loaded_from_disk(write_sweep, task_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    path = _sweep(write_sweep, task_dir, budget={"max_steps": 8, "eval_every": 4, "batch_size": 8,
                                                "eval_batch_size": 16, "max_seq_length": 64},
                  space={"params": {"learning_rate": {"type": "float", "low": 0.02, "high": 0.05, "log": True},
                                    "lora_r": {"type": "fixed", "value": 8}}})
    assert main(["launch", str(path)]) == 0
    journal = str(path.parent / "runs" / "tiny.journal")
    assert main(["export", journal, "--out", str(tmp_path / "winner")]) == 0
    winner = yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())
    assert winner["evaluation"]["tasks"] == ["routing_mc", "routing_gen"]
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'final'}"]) == 0
    trained = json.loads((tmp_path / "final" / "metrics.json").read_text())["metrics"]
    assert trained["lm_eval:routing_mc/acc"] == _study(path).best_value  # the same trial again, the same score
    # lm-eval on its own: the base model and the saved adapter loaded from disk by its HF backend.
    base = resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm"))
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={base},peft={tmp_path / 'final' / 'adapter'}", tasks=["routing_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), limit=20, bootstrap_iters=0,
        device="cpu", batch_size=16)
    assert results["results"]["routing_mc"]["acc,none"] == pytest.approx(trained["lm_eval:routing_mc/acc"])


def test_by_default_the_tasks_run_at_the_final_evaluation_only(write_sweep, task_dir):
    path = _sweep(write_sweep, task_dir, evaluation={"every": 0}, n_trials=1)
    assert main(["launch", str(path)]) == 0
    [trial] = _study(path).trials
    assert [e["step"] for e in trial.user_attrs["eval_history"] if "lm_eval:routing_mc/acc" in e] == [4]
    assert list(trial.intermediate_values) == [4]  # what the pruner saw: the final evaluation only


@pytest.mark.parametrize(("changes", "key", "says"), [
    ({"evaluation": {"tasks": ["routing_mcq", "routing_gen"]}, "metric": "lm_eval:routing_mcq/acc"},
     "evaluation.tasks.0", "lm-eval has no task 'routing_mcq' (close: routing_mc"),
    ({"metric": "lm_eval:routing_mc/exact_match"}, "metric", "lm-eval task 'routing_mc' does not report this metric"),
    ({"metric": "lm_eval:other/acc"}, "metric.name", "lm-eval task 'other' is not run by this sweep"),
    ({"metric": "lm_eval:routing_mc"}, "metric.name", "an lm-eval metric is named lm_eval:TASK/METRIC"),
    ({"evaluation": {"include_path": "/nonexistent/tasks"}}, "evaluation.include_path", "is not a folder"),
])
def test_what_cannot_run_is_refused_at_launch(write_sweep, task_dir, capsys, changes, key, says):
    path = _sweep(write_sweep, task_dir, **changes)
    assert main(["launch", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert key in err and says in err, err
    assert not (path.parent / "runs" / "tiny.journal").exists()


def test_a_hub_task_while_offline_is_refused_with_the_way_out(write_sweep, task_dir, tmp_path, capsys):
    tasks = tmp_path / "hub_tasks"
    tasks.mkdir()
    (tasks / "hub_qa.yaml").write_text(yaml.safe_dump({
        "task": "hub_qa", "dataset_path": "ftsweep-tests/no-such-dataset", "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "exact_match"}]}))
    path = _sweep(write_sweep, task_dir, evaluation={"tasks": ["hub_qa"], "include_path": str(tasks)},
                  metric="lm_eval:hub_qa/exact_match", record_metrics=[])
    assert main(["launch", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "evaluation.tasks.0" in err and "lm-eval task 'hub_qa' could not read its data" in err
    assert "offline" in err and "dataset_path: json" in err


def test_each_documents_score_is_kept_and_the_paired_pruner_reads_it(write_sweep, task_dir, tmp_path):
    from objectives.evaluation.scores import read_scores

    path = _sweep(write_sweep, task_dir, n_trials=3, pruner={"name": "paired", "args": {"n_startup_trials": 1}})
    assert main(["launch", str(path)]) == 0
    study = _study(path)
    for trial in study.trials:
        for step, value in trial.intermediate_values.items():
            scores = read_scores(tmp_path / "runs" / "scores" / "tiny" / f"trial-{trial.number}", step)
            mc = scores["lm_eval:routing_mc/acc"]
            assert mc["rows"] == list(range(20))  # lm-eval's first 20 documents, in every trial
            assert sum(mc["scores"]) / 20 == pytest.approx(value)
            assert len(scores["lm_eval:routing_gen/exact_match"]["scores"]) == 20


def test_ray_refuses_an_lm_eval_metric_it_would_not_find_in_every_report(write_sweep, task_dir, capsys):
    path = _sweep(write_sweep, task_dir, backend="ray", evaluation={"every": 0})
    assert main(["launch", str(path), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "evaluation.every" in err and "computed at the final evaluation only" in err and "every report" in err
