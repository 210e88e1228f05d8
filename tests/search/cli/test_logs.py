"""What a log file gets (a SLURM or CI log, `nohup`, `ftsweep best demo > file`): whole tables and lines,
one plain line per finished trial, no control codes; `--width` and $COLUMNS still set the width."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.results.tables import SHORT_NAMES, format_value
from search.store import record
from search.store.storage import open_storage
from search.sweep import load_sweep
from tests.conftest import TINY_SWEEP, deep_merge

REPO = Path(__file__).resolve().parents[3]
# The full LoRA space: a top-trials table of about 160 columns, which rich squeezed into 80.
WIDE_SWEEP = {"space": "lora", "n_trials": 3}
# What would make rich treat a file as a terminal or pick a width of its own.
TERMINAL_HINTS = ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")


def run_cli(*argv: str, stdout) -> subprocess.CompletedProcess:
    """`python -m search.cli ARGV` from this checkout, its stdout going to `stdout` (a file or a pipe)."""
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_HINTS}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "search.cli", *argv], cwd=REPO, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=600)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """A sweep launched by the real command with its stdout in a file: (sweep file, the log's text, study)."""
    root = tmp_path_factory.mktemp("logged-launch")
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {**WIDE_SWEEP, "output_dir": str(root / "runs")})))
    log = root / "launch.log"
    with open(log, "w") as out:
        done = run_cli("launch", str(path), stdout=out)
    assert done.returncode == 0, done.stderr
    sweep = load_sweep(path)
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    return path, log.read_text(), study


@pytest.fixture
def no_terminal_hints(monkeypatch):
    for name in TERMINAL_HINTS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def table_cells(text: str) -> dict[int, dict[str, str]]:
    """The rows of the rich table in `text`: {trial number: {column header: cell}}. A row wrapped onto
    several lines, or a squeezed header, fails here."""
    lines = text.splitlines()
    header = [cell.strip() for cell in next(line for line in lines if line.startswith("┃")).strip("┃").split("┃")]
    rows = {}
    for line in lines:
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            assert len(cells) == len(header), line
            rows[int(cells[0])] = dict(zip(header, cells))
    return rows


def assert_every_trial_whole(text: str, study: optuna.Study) -> None:
    """Each trial's row shows its value and every searched param exactly as `format_value` writes them."""
    rows = table_cells(text)
    trials = study.get_trials()
    assert sorted(rows) == sorted(t.number for t in trials)
    for trial in trials:
        row = rows[trial.number]
        config = record.config_of(trial)
        assert row["eval_loss"] == format_value(trial.value)
        for name in trial.params:
            assert row[SHORT_NAMES.get(name, name)] == format_value(config[name]), (name, row)
        assert row["time"] == f"{trial.user_attrs[record.DURATION]:.1f}s"
    assert not [line for line in text.splitlines() if line[:1] in "┃│" and "…" in line]


def test_a_logged_launch_has_one_plain_line_per_trial_and_whole_tables(launched):
    _, log, study = launched
    assert "\x1b[" not in log and "\r" not in log and "ETA" not in log  # no bar, no redraws, no colours
    for trial in study.get_trials():
        [line] = [line for line in log.splitlines() if re.match(rf"\s*trial\s+{trial.number} ", line)]
        params = ", ".join(f"{SHORT_NAMES.get(k, k)}={format_value(v)}" for k, v in trial.params.items())
        assert f" complete eval_loss={format_value(trial.value)}  {params}  " in line, line
        assert line.endswith(f"{trial.user_attrs[record.DURATION]:.1f}s"), line
    best = format_value(study.best_value)
    assert re.search(rf"^tiny: 3/3 trials · pruned 0 · failed 0 · best eval_loss {best} · \d+:\d\d:\d\d$", log, re.M)
    assert_every_trial_whole(log, study)  # the launch summary's table
    assert re.search(r"^Done: 3 complete\. This launch ran 3 trial\(s\)\. Study: tiny in journal:///\S+$", log, re.M)


def test_best_through_a_pipe_shows_every_value_whole(launched):
    path, _, study = launched
    done = run_cli("best", str(path), stdout=subprocess.PIPE)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) > 100  # the table's natural width, not 80
    assert_every_trial_whole(done.stdout, study)


def test_status_off_a_terminal_prints_whole_lines(launched, no_terminal_hints, capsys):
    path, _, study = launched
    assert main(["status", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Study tiny: 3 trials — 3 complete, 0 pruned, 0 failed, 0 running, 0 waiting, 0 paused, 0 resumed"
    assert lines[1] == f"Best eval_loss: {format_value(study.best_value)} (trial {study.best_trial.number})"


def test_columns_and_width_set_the_width(launched, no_terminal_hints, capsys):
    path, _, _ = launched

    def widest(*argv: str) -> int:
        assert main([*argv]) == 0
        return max(len(line) for line in capsys.readouterr().out.splitlines())

    assert widest("best", str(path)) > 100
    no_terminal_hints.setenv("COLUMNS", "60")
    assert widest("best", str(path)) <= 60
    assert widest("--width", "120", "best", str(path)) <= 120  # --width wins over $COLUMNS
    assert 60 < widest("best", str(path), "--width", "90") <= 90  # after the command name too


def test_width_must_be_a_positive_number(capsys):
    for bad in ("0", "-3", "wide"):
        with pytest.raises(SystemExit) as exit_:
            main(["--width", bad, "spaces"])
        assert exit_.value.code == 2
        assert "--width" in capsys.readouterr().err
