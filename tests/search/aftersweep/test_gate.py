"""`ftsweep gate`: a candidate is promoted only when it beats the champion on the same held-out test
set. The adapters are trained for real (`ftsweep train`): a champion of one step at a tiny learning
rate, a candidate of twelve steps that is clearly better."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import yaml

from search.cli import main
from search.aftersweep.gate import decide
from search.cli.gate import GATE
from spaces import ConfigError


DATASET = {"source": "bundled:support-qa", "max_train_examples": 128, "max_eval_examples": 16}
BUDGET = {"eval_every": 1, "batch_size": 8, "eval_batch_size": 16, "max_seq_length": 64}


def _winner(root, name: str, *, steps: int, lr: float, **changes) -> str:
    """A winner.yaml as `ftsweep export` writes it (with the sweep's metric in its provenance)."""
    data = {
        "name": name, "objective": "causal_lm", "model": "bundled:tiny-support-lm", "dataset": DATASET,
        "params": {"learning_rate": lr, "lora_r": 8, "lora_alpha": 16, "target_modules": "attention_qv"},
        "budget": {**BUDGET, "max_steps": steps, "eval_every": steps}, "seed": 0,
        "provenance": {"metric": "eval_loss", "direction": "minimize"}, **changes,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"champion", "candidate"}: directories `ftsweep train` wrote; plus the candidate's winner.yaml."""
    root = tmp_path_factory.mktemp("gate")
    trained = {}
    for name, steps, lr in (("champion", 1, 1e-5), ("candidate", 12, 2e-2)):
        winner = _winner(root, name, steps=steps, lr=lr)
        assert main(["train", winner, "--set", f"output_dir={root / name}"]) == 0
        trained[name] = root / name
    trained["candidate_yaml"] = root / "candidate.yaml"
    return trained


def _gate(*argv: str) -> tuple[int, str]:
    """Run the command as `ftsweep gate` does: bad input (ConfigError) is exit 2 with its message."""
    parser = argparse.ArgumentParser()
    GATE.add_arguments(parser)
    try:
        return GATE.run(parser.parse_args(list(argv))), ""
    except ConfigError as exc:
        return 2, str(exc)


def _test_loss(directory) -> float:
    return json.loads((directory / "metrics.json").read_text())["metrics"]["test_loss"]


def test_a_better_candidate_passes_and_the_verdict_says_why(runs, tmp_path, capsys):
    out = tmp_path / "verdict.json"
    code, _ = _gate("--candidate", str(runs["candidate"]), "--champion", str(runs["champion"]), "--out", str(out),
                    "--max-metric", "trainable_params=100000")
    assert code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "PASS" in printed and "eval_loss (minimize) *" in printed
    verdict = json.loads(out.read_text())
    assert verdict["decision"] == "pass" and verdict["exit_code"] == 0
    assert (verdict["metric"], verdict["direction"]) == ("eval_loss", "minimize")  # the sweep's, from provenance
    cand, champ = verdict["candidate"]["metrics"], verdict["champion"]["metrics"]
    # Each side is evaluated on the held-out test split: what `ftsweep train` measured there.
    assert cand["eval_loss"] == pytest.approx(_test_loss(runs["candidate"]), rel=1e-4)
    assert champ["eval_loss"] == pytest.approx(_test_loss(runs["champion"]), rel=1e-4)
    assert verdict["improvement"] == pytest.approx(champ["eval_loss"] - cand["eval_loss"])
    assert verdict["improvement"] > 0.1 and verdict["margin"] == {"absolute": 0.0}
    assert {"perplexity", "latency_ms", "trainable_params"} <= set(cand)
    test_set = verdict["test_set"]
    assert test_set["rows"] == 16 and len(test_set["fingerprint"]) == 16
    assert test_set["settings"]["seed"] == 0 and test_set["settings"]["dataset.test_fraction"] == 0.1
    assert verdict["candidate"]["examples"] == verdict["champion"]["examples"] == 16
    assert verdict["constraints"] == [{"metric": "trainable_params", "max": 100000.0,
                                       "value": cand["trainable_params"], "satisfied": True}]
    assert "is more than the margin" in verdict["reasons"][0] and verdict["notes"] == []


def test_a_worse_candidate_fails(runs, tmp_path):
    out = tmp_path / "verdict.json"
    code, _ = _gate("--candidate", str(runs["champion"]), "--champion", str(runs["candidate"]), "--out", str(out))
    assert code == 1
    verdict = json.loads(out.read_text())
    assert verdict["decision"] == "fail" and verdict["improvement"] < 0
    assert "not more than the margin" in verdict["reasons"][0]


def test_the_margin_must_be_exceeded(runs):
    candidate, champion = str(runs["candidate"]), str(runs["champion"])
    assert _gate("--candidate", candidate, "--champion", champion, "--margin", "5")[0] == 1
    # About 45% lower loss: enough for a 10% relative margin, not for 90%.
    assert _gate("--candidate", candidate, "--champion", champion, "--relative-margin", "0.9")[0] == 1
    assert _gate("--candidate", candidate, "--champion", champion, "--relative-margin", "0.1")[0] == 0


def test_a_failed_constraint_fails_the_gate(runs, tmp_path):
    out = tmp_path / "verdict.json"
    code, _ = _gate("--candidate", str(runs["candidate"]), "--champion", str(runs["champion"]), "--out", str(out),
                    "--max-metric", "trainable_params=10", "--min-metric", "test_perplexity=1.0")
    assert code == 1
    verdict = json.loads(out.read_text())
    assert verdict["improvement"] > 0  # better, yet refused
    assert [(c["metric"], c["satisfied"]) for c in verdict["constraints"]] == [
        ("trainable_params", False), ("perplexity", True)]
    assert any("trainable_params <= 10" in r and "NOT met" in r for r in verdict["reasons"])


def test_a_champion_whose_test_loss_moved_since_training_is_noted(runs, tmp_path):
    champion = tmp_path / "champion"
    shutil.copytree(runs["champion"], champion)
    record = json.loads((champion / "metrics.json").read_text())
    record["metrics"]["test_loss"] += 0.5  # as if its data had changed since `ftsweep train`
    (champion / "metrics.json").write_text(json.dumps(record))
    out = tmp_path / "verdict.json"
    assert _gate("--candidate", str(runs["candidate"]), "--champion", str(champion), "--out", str(out))[0] == 0
    notes = json.loads(out.read_text())["notes"]
    assert len(notes) == 1 and notes[0].startswith("the champion's test loss was")


def _edited_copy(source, target, change) -> str:
    """A copy of a trained run whose run.yaml is edited by `change(dict)`."""
    shutil.copytree(source, target)
    data = yaml.safe_load((target / "run.yaml").read_text())
    change(data)
    (target / "run.yaml").write_text(yaml.safe_dump(data))
    return str(target)


@pytest.mark.parametrize("field, change, fix", [
    ("seed", lambda d: d.update(seed=1), "--set seed=0"),
    # 1% of the data is 12 rows; 16 are held out at 10% (larger shares share those first 16 rows).
    ("dataset.test_fraction", lambda d: d["dataset"].update(test_fraction=0.01), "--set dataset.test_fraction=0.1"),
    ("dataset.max_eval_examples", lambda d: d["dataset"].update(max_eval_examples=8),
     "--set dataset.max_eval_examples=16"),
])
def test_different_test_sets_are_refused(runs, tmp_path, field, change, fix):
    candidate = _edited_copy(runs["candidate"], tmp_path / "candidate", change)
    code, message = _gate("--candidate", candidate, "--champion", str(runs["champion"]))
    assert code == 2
    assert "different test sets" in message and f"{field} is" in message and fix in message


def test_a_different_data_file_is_refused(runs, tmp_path):
    from objectives.data.sources import ASSETS

    data = tmp_path / "qa.jsonl"  # the same examples in another order: another test split
    data.write_text("\n".join(reversed((ASSETS / "datasets" / "support_qa.jsonl").read_text().splitlines())) + "\n")
    candidate = _edited_copy(runs["candidate"], tmp_path / "candidate", lambda d: d["dataset"].update(source=str(data)))
    code, message = _gate("--candidate", candidate, "--champion", str(runs["champion"]))
    assert code == 2 and "dataset.source is" in message and str(data) in message


def test_the_same_file_by_another_path_is_the_same_test_set(runs, tmp_path, monkeypatch):
    from objectives.data.sources import ASSETS

    shutil.copy(ASSETS / "datasets" / "support_qa.jsonl", tmp_path / "qa.jsonl")
    monkeypatch.chdir(tmp_path)
    relative = _edited_copy(runs["candidate"], tmp_path / "a", lambda d: d["dataset"].update(source="qa.jsonl"))
    absolute = _edited_copy(runs["candidate"], tmp_path / "b",
                            lambda d: d["dataset"].update(source=str(tmp_path / "qa.jsonl")))
    from search.aftersweep.gate import held_out, resolve_side

    a, b = resolve_side(relative, "candidate"), resolve_side(absolute, "champion")
    first, second = held_out(a.run, a.objective_cls), held_out(b.run, b.objective_cls)
    assert first.fingerprint == second.fingerprint and first.settings == second.settings


def test_a_winner_yaml_candidate_is_trained_first(runs, tmp_path):
    work, out = tmp_path / "work", tmp_path / "verdict.json"
    code, _ = _gate("--candidate", str(runs["candidate_yaml"]), "--champion", str(runs["champion"]),
                    "--work-dir", str(work), "--out", str(out))
    assert code == 0
    assert (work / "candidate" / "adapter" / "adapter_config.json").exists()
    verdict = json.loads(out.read_text())
    assert verdict["candidate"]["trained_by_gate"] and verdict["candidate"]["directory"] == str(work / "candidate")
    # Its test set is checked before anything is trained: --set seed=1 is refused at once.
    code, message = _gate("--candidate", str(runs["candidate_yaml"]), "--champion", str(runs["champion"]),
                          "--work-dir", str(tmp_path / "never"), "--set", "seed=1")
    assert code == 2 and "seed is 1 for the candidate and 0 for the champion" in message
    assert not (tmp_path / "never").exists()


def test_a_classifier_is_gated_on_its_own_metrics_and_a_fairness_bound(tmp_path):
    winner = tmp_path / "intents.yaml"
    winner.write_text(yaml.safe_dump({
        "name": "intents", "objective": "sequence_classification", "model": "bundled:tiny-support-lm",
        "dataset": {"source": "bundled:support-intents-groups", "group_column": "customer_group",
                    "max_train_examples": 64, "max_eval_examples": 48},
        "params": {"learning_rate": 2e-2, "lora_r": 8, "lora_alpha": 16}, "seed": 0,
        "budget": {"max_steps": 4, "eval_every": 4, "batch_size": 8, "eval_batch_size": 48, "max_seq_length": 48},
    }))
    assert main(["train", str(winner), "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    out = tmp_path / "verdict.json"
    # A run against itself is no improvement: not promoted, whatever the bound says.
    code, _ = _gate("--candidate", str(tmp_path / "run"), "--champion", str(tmp_path / "run" / "adapter"),
                    "--metric", "f1_macro", "--max-metric", "accuracy_group_gap=1.0", "--out", str(out))
    assert code == 1
    verdict = json.loads(out.read_text())
    assert verdict["direction"] == "maximize" and verdict["improvement"] == 0
    assert verdict["constraints"][0]["satisfied"] is True
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    # Scored on the test split, its groups included: what `ftsweep train` measured there.
    for name in ("accuracy", "f1_macro", "precision_micro", "eval_loss", "accuracy_group_gap"):
        test_name = "test_loss" if name == "eval_loss" else f"test_{name}"
        assert verdict["candidate"]["metrics"][name] == pytest.approx(trained[test_name], rel=1e-4)
    code, message = _gate("--candidate", str(tmp_path / "run"), "--champion", str(tmp_path / "run"),
                          "--metric", "perplexity")
    assert code == 2 and "does not report this metric" in message and "f1_macro" in message


def test_a_fairness_bound_needs_a_group_column(runs, tmp_path):
    other = _edited_copy(runs["champion"], tmp_path / "cls", lambda d: d.update(
        objective={"name": "sequence_classification"}, dataset={"source": "bundled:support-intents"}))
    code, message = _gate("--candidate", other, "--champion", other, "--max-metric", "accuracy_group_gap=0.1")
    assert code == 2 and "group column" in message


@pytest.mark.parametrize("argv, expected", [
    (["--metric", "bogus"], "does not report this metric"),
    (["--metric", "peak_memory_mb"], "does not measure this metric"),
    (["--max-metric", "latency_ms"], "NAME=NUMBER"),
    (["--min-metric", "nope=1"], "does not report this metric"),
    (["--margin", "-1"], "cannot be negative"),
])
def test_bad_gate_arguments(runs, argv, expected):
    code, message = _gate("--candidate", str(runs["candidate"]), "--champion", str(runs["champion"]), *argv)
    assert code == 2 and expected in message


def test_bad_sides_are_refused(runs, tmp_path):
    code, message = _gate("--candidate", str(tmp_path / "nowhere"), "--champion", str(runs["champion"]))
    assert code == 2 and "--candidate" in message
    other = _edited_copy(runs["champion"], tmp_path / "cls",
                         lambda d: d["objective"].update(name="sequence_classification"))
    code, message = _gate("--candidate", str(runs["candidate"]), "--champion", other)
    assert code == 2 and "not comparable" in message
    code, message = _gate("--candidate", str(runs["candidate"]), "--champion", str(runs["champion"]),
                          "--set", "seed=1")
    assert code == 2 and "already trained" in message


def test_decide_in_both_directions():
    assert decide(0.8, 0.7, direction="maximize")[:2] == (True, pytest.approx(0.1))
    assert decide(0.7, 0.7, direction="maximize")[0] is False  # equal is not better
    assert decide(0.5, 0.6, direction="minimize", margin=0.2)[0] is False
    assert decide(0.5, 1.0, direction="minimize", relative_margin=0.4) == (True, 0.5, pytest.approx(0.4))
    assert decide(float("nan"), 1.0, direction="minimize")[0] is False
