"""The CLI as a user runs it."""

from __future__ import annotations

import re

import pytest

from search.cli import main
from spaces import ConfigError


# The commands the README and the cluster scripts tell users to run (README "Commands").
DOCUMENTED = ["launch", "validate-data", "worker", "submit", "select", "gate", "status", "best", "show", "importance",
              "report", "dashboard", "export", "train", "spaces"]


def test_every_documented_command_has_help_and_a_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    for name in DOCUMENTED:
        assert re.search(rf"^    {name}(\s|$)", listed, re.M), f"`ftsweep --help` does not list {name}"
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        described = capsys.readouterr().out
        assert described.startswith(f"usage: ftsweep {name}") and len(described.splitlines()) > 3, described


def test_launch_help_names_the_default_storage_the_launch_uses(capsys, tmp_path):
    from search.store.storage import default_storage_url

    with pytest.raises(SystemExit):
        main(["launch", "--help"])
    described = " ".join(capsys.readouterr().out.split())
    assert default_storage_url(tmp_path, "demo").endswith("/demo.journal")  # what the help says, checked
    assert "else the journal file <output_dir>/<study>.journal" in described
    assert "SQLite" not in described


def test_debug_is_accepted_before_and_after_the_command(capsys):
    for argv in (["--debug", "spaces"], ["spaces", "--debug"]):
        assert main(argv) == 0
        assert "lora-quick" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        main(["spaces", "show", "lorax", "--debug"])  # --debug re-raises instead of the one-line error


def test_spaces_lists_and_shows_presets(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert "lora-quick" in out and "lora" in out
    assert main(["spaces", "show", "lora"]) == 0
    shown = capsys.readouterr().out
    for name in ("learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay", "lora_r", "lora_alpha",
                 "lora_dropout", "target_modules"):
        assert name in shown


def test_spaces_show_unknown_preset_lists_presets(capsys):
    assert main(["spaces", "show", "lorax"]) == 2
    err = capsys.readouterr().err
    assert "lorax" in err and "lora-quick" in err


def test_dry_run_validates_samples_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["launch", "demo", "--dry-run", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 sampled configurations" in out
    assert "learning_rate" in out and "training and" in out
    assert "nothing written" in out
    assert not (tmp_path / "runs").exists()


def test_launch_prints_the_top_trials(write_sweep, capsys):
    assert main(["launch", str(write_sweep()), "--set", "n_trials=2"]) == 0
    out = capsys.readouterr().out
    assert "Top 2 trials" in out and "Done: 2 complete" in out


def test_the_default_study_file_is_a_journal_found_by_file_and_by_name(write_sweep, tmp_path, monkeypatch, capsys):
    path = write_sweep(n_trials=2, budget={"max_steps": 4, "eval_every": 2}, output_dir="runs/tiny")
    monkeypatch.chdir(tmp_path)
    assert main(["launch", str(path)]) == 0
    assert (tmp_path / "runs" / "tiny" / "tiny.journal").exists()
    capsys.readouterr()
    for ref in ("runs/tiny/tiny.journal", "runs/tiny/tiny.journal:tiny", "tiny"):
        assert main(["best", ref, "--json"]) == 0, ref
        assert '"number"' in capsys.readouterr().out


def test_a_sqlite_study_of_an_earlier_version_stays_the_default_and_resumes(write_sweep, tmp_path):
    import optuna

    from search.sweep import load_sweep

    sweep = load_sweep(write_sweep(n_trials=3, budget={"max_steps": 4, "eval_every": 2}))
    legacy = sweep.output_dir / "tiny.db"
    legacy.parent.mkdir(parents=True)
    old = optuna.create_study(study_name="tiny", storage=f"sqlite:///{legacy}")
    old.enqueue_trial({})  # a study an earlier ftsweep left behind
    assert load_sweep(write_sweep(n_trials=3)).storage_url == f"sqlite:///{legacy}"
    assert main(["launch", str(write_sweep(n_trials=3, budget={"max_steps": 4, "eval_every": 2}))]) == 0
    assert not (sweep.output_dir / "tiny.journal").exists()
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{legacy}").get_trials()) == 3
