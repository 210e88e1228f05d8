"""status / best / show / export / train / --enqueue on a real study with complete, pruned and failed trials."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import TINY_SWEEP, deep_merge
from search.backends import get_backend
from search.cli import main
from search.sweep import load_run, load_sweep
from search.store.storage import open_storage


SPACE = {"params": {
    # 1e38 diverges at once: a FAIL trial with a reason, next to complete and pruned ones.
    "learning_rate": {"type": "categorical", "choices": [3e-3, 1e-2, 2e-2, 1e38]},
    "lora_r": {"type": "categorical", "choices": [4, 8]},
    "lora_alpha": {"type": "derived", "from": "lora_r", "times": 2, "as": "int"},
}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished 8-trial grid sweep; returns (sweep file, study)."""
    root = tmp_path_factory.mktemp("swept")
    data = deep_merge(TINY_SWEEP, {
        "name": "inspect", "space": SPACE, "sampler": "grid", "n_trials": 8, "output_dir": str(root / "runs"),
        "pruner": {"name": "percentile", "args": {"percentile": 25.0, "n_startup_trials": 2}},
        "budget": {"max_steps": 6, "eval_every": 2},
    })
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    return path, optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def _json(capsys, *argv) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_the_study_has_every_state(swept):
    states = {t.state for t in swept[1].get_trials()}
    assert {TrialState.COMPLETE, TrialState.FAIL} <= states


def test_status_counts_and_best(swept, capsys):
    path, study = swept
    status = _json(capsys, "status", str(path), "--json")
    assert sum(status["counts"].values()) == status["total"] == 8
    assert status["counts"]["failed"] == 2
    assert status["best"] == {"number": study.best_trial.number, "value": study.best_value}
    assert status["trials_per_hour"] > 0


def test_best_is_sorted_and_limited(swept, capsys):
    path, study = swept
    rows = _json(capsys, "best", str(path), "--top", "3", "--json")
    values = [r["value"] for r in rows]
    assert values == sorted(values) and values[0] == study.best_value
    assert len(rows) == min(3, sum(t.state == TrialState.COMPLETE for t in study.get_trials()))
    assert rows[0]["params"]["lora_alpha"] == 2 * rows[0]["params"]["lora_r"]


def test_show_has_curve_and_failure_reason(swept, capsys):
    path, study = swept
    failed = next(t for t in study.get_trials() if t.state == TrialState.FAIL)
    details = _json(capsys, "show", str(path), str(failed.number), "--json")
    assert details["state"] == "fail" and details["fail_reason"].startswith("TrialDiverged")
    best = _json(capsys, "show", str(path), str(study.best_trial.number), "--json")
    assert sorted(best["learning_curve"], key=int) == ["2", "4", "6"]
    assert best["metrics"]["eval_loss"] == pytest.approx(study.best_value)


def test_unknown_study_and_trial_list_what_exists(swept, capsys):
    path, _ = swept
    assert main(["show", str(path), "99"]) == 2
    assert "0..7" in capsys.readouterr().err
    db = path.parent / "runs" / "inspect.db"
    assert main(["best", f"{db}:nope"]) == 2
    assert "inspect" in capsys.readouterr().err
    assert main(["status", "../etc"]) == 2
    assert "path separators" in capsys.readouterr().err


def test_empty_study_gives_a_message_not_a_traceback(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="empty", storage=storage)
    assert main(["best", "empty", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "no completed trial" in err and "Traceback" not in err
    assert main(["status", "empty", "--storage", storage]) == 0


def test_export_writes_loadable_files(swept, tmp_path):
    from peft import PeftConfig
    from transformers import TrainingArguments

    path, study = swept
    out = tmp_path / "winner"
    assert main(["export", str(path), "--out", str(out)]) == 0
    config = PeftConfig.from_pretrained(str(out))
    best = study.best_trial.user_attrs["config"]
    assert config.r == best["lora_r"] and config.lora_alpha == best["lora_alpha"]
    kwargs = json.loads((out / "training_args.json").read_text())
    kwargs["output_dir"] = str(tmp_path / "args-out")
    args = TrainingArguments(**kwargs)
    assert args.learning_rate == pytest.approx(best["learning_rate"]) and args.max_steps == 6
    run, _ = load_run(out / "winner.yaml")
    assert run.provenance["trial"] == study.best_trial.number and run.provenance["value"] == study.best_value
    assert run.provenance["versions"]["optuna"] == optuna.__version__


def test_export_refuses_incomplete_trials_and_existing_dirs(swept, tmp_path, capsys):
    path, study = swept
    failed = next(t for t in study.get_trials() if t.state == TrialState.FAIL).number
    assert main(["export", str(path), "--trial", str(failed), "--out", str(tmp_path / "a")]) == 2
    assert "--allow-incomplete" in capsys.readouterr().err
    assert main(["export", str(path), "--trial", str(failed), "--out", str(tmp_path / "a"), "--allow-incomplete"]) == 0
    assert main(["export", str(path), "--out", str(tmp_path / "a")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(path), "--out", str(tmp_path / "a"), "--force"]) == 0


def test_export_top_k_writes_a_folder_per_trial(swept, tmp_path):
    path, study = swept
    assert main(["export", str(path), "--top", "2", "--out", str(tmp_path / "top")]) == 0
    folders = sorted(p.name for p in (tmp_path / "top").iterdir())
    assert len(folders) == 2 and f"trial-{study.best_trial.number}" in folders


def test_train_reproduces_the_trial_and_saves_a_loadable_adapter(swept, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, study = swept
    out = tmp_path / "winner"
    assert main(["export", str(path), "--out", str(out)]) == 0
    run_dir = tmp_path / "final"
    assert main(["train", str(out / "winner.yaml"), "--set", f"output_dir={run_dir}"]) == 0
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["reproduction"]["comparable"]
    assert record["reproduction"]["relative_error"] < 0.02
    assert record["metrics"]["test_loss"] > 0  # the held-out test split was evaluated
    run, _ = load_run(run_dir / "run.yaml")
    assert run.params == load_run(out / "winner.yaml")[0].params
    from objectives import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(run.model))
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    assert main(["train", str(out / "winner.yaml"), "--set", f"output_dir={run_dir}"]) == 2  # refuses to overwrite


def test_enqueue_runs_the_winner_first(swept, tmp_path):
    path, study = swept
    out = tmp_path / "winner"
    assert main(["export", str(path), "--out", str(out)]) == 0
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {
        "name": "warm", "space": SPACE, "sampler": "random", "n_trials": 1, "output_dir": str(tmp_path / "runs")})))
    assert main(["launch", str(fresh), "--enqueue", str(out / "winner.yaml")]) == 0
    warm = optuna.load_study(study_name="warm", storage=open_storage(load_sweep(fresh).storage_url))
    assert warm.trials[0].params == study.best_trial.params


def test_secrets_never_reach_output_or_exports(swept, tmp_path, capsys, monkeypatch):
    sentinel = "S3NTINEL-pw-7431"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    path, _ = swept
    code = main(["launch", str(path), "--set", f"storage=postgresql://sweeper:{sentinel}@127.0.0.1:9/optuna"])
    output = capsys.readouterr()
    assert code != 0
    assert sentinel not in output.out + output.err
    assert "sweeper:***@127.0.0.1" in output.out + output.err
    out = tmp_path / "exported"
    assert main(["export", str(path), "--out", str(out)]) == 0
    for file in out.iterdir():
        text = file.read_text()
        assert sentinel not in text and "sqlite" not in text


def test_multi_objective_best_is_the_pareto_front(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'mo.db'}"
    study = optuna.create_study(study_name="mo", storage=storage, directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1 - t.suggest_float("y", 0, 1) ** 2), n_trials=12)
    rows = _json(capsys, "best", "mo", "--storage", storage, "--json")
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in study.best_trials)
    assert all(len(r["values"]) == 2 for r in rows)
    assert main(["best", "mo", "--storage", storage]) == 0
    assert "Pareto front" in capsys.readouterr().out


def test_output_paths_cannot_escape_the_chosen_directory(tmp_path):
    from search.results.export import safe_join
    from spaces import ConfigError

    assert safe_join(tmp_path, "trial-3") == tmp_path.resolve() / "trial-3"
    for bad in ("../outside", "/etc/passwd", "a/../../b"):
        with pytest.raises(ConfigError, match="escapes"):
            safe_join(tmp_path, bad)
