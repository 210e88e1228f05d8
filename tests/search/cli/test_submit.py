"""`ftsweep submit` without a cluster: the script it writes, the storages it refuses, a clear error
without sbatch. The runs on a real SLURM cluster are in test_submit_slurm.py (slow tier)."""

from __future__ import annotations

import re

from search.cli import main
from search.cli.submit import REPO_SCRIPT, worker_script

SECRET = "pw-SUBMIT-4d2e"


def test_the_manual_script_is_the_template_with_its_defaults():
    # scripts/cluster/slurm_workers.sbatch is generated: regenerate it with
    #   python -c "from search.cli.submit import *; REPO_SCRIPT.write_text(worker_script())"
    assert REPO_SCRIPT.read_text() == worker_script()
    headers = re.findall(r"^#SBATCH (\S+)", REPO_SCRIPT.read_text(), re.M)
    # Portable: no GPUs, one CPU, no time or partition; a requeued task appends to its log.
    assert headers == ["--job-name=ftsweep-worker", "--cpus-per-task=1", "--requeue", "--open-mode=append",
                       "--output=ftsweep-worker-%A_%a.log"]
    assert "sbatch --array=0-7 --gpus=1 --cpus-per-task=8" in REPO_SCRIPT.read_text()


def test_dry_run_prints_the_script_with_the_options_and_no_secret(write_sweep, capsys, monkeypatch):
    monkeypatch.setenv("FTSWEEP_STORAGE", f"postgresql://ftsweep:{SECRET}@db.example:5432/optuna")
    path = write_sweep(n_trials=6)
    assert main(["submit", str(path), "--array", "4", "--partition", "gpu", "--time", "1:00:00",
                 "--gpus-per-worker", "2", "--cpus-per-worker", "8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    headers = re.findall(r"^#SBATCH (\S+)", out, re.M)
    assert headers[:2] == ["--job-name=ftsweep-tiny", "--cpus-per-task=8"]
    assert {"--array=0-3", "--partition=gpu", "--time=1:00:00", "--gpus=2", "--requeue",
            "--open-mode=append"} <= set(headers)
    assert f"--output={path.parent / 'runs' / 'slurm'}/tiny-%A_%a.log" in headers
    assert "-m search.cli worker \"$STUDY\"" in out
    assert "sbatch --parsable --export=ALL" in out and "Dry run: nothing prepared or submitted" in out
    assert SECRET not in out and "***" in out
    assert not (path.parent / "runs").exists()  # nothing written


def test_a_cpu_only_submit_asks_for_no_gpu(write_sweep, capsys, monkeypatch):
    monkeypatch.setenv("FTSWEEP_STORAGE", "postgresql://ftsweep@db.example/optuna")
    assert main(["submit", str(write_sweep()), "--array", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gpus" not in out and "#SBATCH --cpus-per-task=1" in out


def test_sqlite_is_refused_and_a_journal_file_warned_about(write_sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FTSWEEP_STORAGE", raising=False)
    path = write_sweep()
    assert main(["submit", str(path), "--array", "2", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "SQLite takes one worker process" in capsys.readouterr().err
    assert main(["submit", str(path), "--array", "2", "--dry-run"]) == 0  # the default journal file
    captured = capsys.readouterr()
    assert "journal file" in captured.err and "shared filesystem" in captured.err


def test_without_sbatch_the_error_says_where_to_run(write_sweep, capsys, monkeypatch):
    monkeypatch.setenv("FTSWEEP_STORAGE", "postgresql://ftsweep@db.example/optuna")
    monkeypatch.setenv("PATH", "/nonexistent")
    path = write_sweep()
    assert main(["submit", str(path), "--array", "2"]) == 2
    err = capsys.readouterr().err
    assert "sbatch is not on PATH" in err and "start_slurm.sh" in err
    assert not (path.parent / "runs" / "slurm").exists()


def test_array_must_be_positive(write_sweep, capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["submit", str(write_sweep()), "--array", "0"])
    assert "positive" in capsys.readouterr().err
