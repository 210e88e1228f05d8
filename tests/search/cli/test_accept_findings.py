"""Accepting a data finding: a data-check error stops a launch and says how to go on; accepted (in the sweep
file or with --accept) the launch runs, and the study records what was accepted, shown by `status` and `show`."""

from __future__ import annotations

import json

import pytest

from objectives.data.checks import ACCEPTABLE_CHECKS
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import load_existing_study
from search.sweep import load_sweep


def _leaky_data(tmp_path):
    """A train and a validation file where 3 of 16 validation prompts are also training prompts."""
    rows = [{"prompt": f"Where is order {1000 + i}?", "response": f"Order {1000 + i} ships in {i % 7 + 1} days."}
            for i in range(80)]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:64]))
    held_out = rows[64:77] + [{**r, "response": "Another answer."} for r in rows[:3]]
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    return folder


def test_a_leak_stops_the_launch_and_the_error_says_how_to_accept_it(write_sweep, tmp_path, capsys):
    path = write_sweep(dataset={"source": str(_leaky_data(tmp_path)), "max_train_examples": None, "test_fraction": 0.0})
    assert main(["launch", str(path)]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert "[leakage]: 3 of 16 validation examples" in error
    assert "Or go on with it as it is: dataset.checks: {leakage: warn} in the sweep file, or --accept leakage" in error
    assert not list(tmp_path.rglob("*.journal"))  # stopped before the study was made
    assert main(["validate-data", str(path)]) == 1


@pytest.mark.parametrize("how", ["sweep file", "command line"])
def test_an_accepted_leak_is_recorded_in_the_study_and_shown(write_sweep, tmp_path, capsys, how):
    data = {"source": str(_leaky_data(tmp_path)), "max_train_examples": None, "test_fraction": 0.0}
    if how == "sweep file":
        path, flags = write_sweep(dataset={**data, "checks": {"leakage": "warn"}}), []
    else:
        path, flags = write_sweep(dataset=data), ["--accept", "leakage"]
    assert main(["validate-data", str(path), *flags, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [leak] = [f for f in report["findings"] if f["check"] == "leakage"]
    assert (leak["level"], leak["accepted"], leak["count"]) == ("warning", True, 3)

    assert main(["launch", str(path), *flags]) == 0
    sweep = load_sweep(path)
    study = load_existing_study(sweep.study_name, sweep.storage_url)
    [recorded] = study.user_attrs["accepted_findings"]
    assert (recorded["check"], recorded["split"], recorded["count"]) == ("leakage", "validation", 3)
    assert study.user_attrs["sweep"]["dataset"]["checks"] == {"leakage": "warn"}
    capsys.readouterr()

    assert main(["status", sweep.study_name, "--storage", sweep.storage_url]) == 0
    out = capsys.readouterr().out
    assert "Data findings accepted at launch" in out and "accepted leakage (validation): 3 of 16" in out
    assert main(["show", sweep.study_name, "0", "--storage", sweep.storage_url]) == 0
    assert "accepted leakage (validation)" in capsys.readouterr().out
    assert main(["status", sweep.study_name, "--storage", sweep.storage_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accepted_findings"] == [recorded]


def test_a_relaunch_without_the_finding_records_none(write_sweep, tmp_path):
    # The study records what the latest launch accepted: once the data is fixed, nothing.
    folder = _leaky_data(tmp_path)
    data = {"source": str(folder), "max_train_examples": None, "test_fraction": 0.0}
    path = write_sweep(dataset=data, n_trials=1)
    assert main(["launch", str(path), "--accept", "leakage"]) == 0
    lines = (folder / "validation.jsonl").read_text().splitlines()
    (folder / "validation.jsonl").write_text("\n".join(lines[:13]) + "\n")
    assert main(["launch", str(write_sweep(dataset=data, n_trials=2))]) == 0
    sweep = load_sweep(path)
    assert load_existing_study(sweep.study_name, sweep.storage_url).user_attrs["accepted_findings"] == []


@pytest.mark.parametrize(("name", "why"), [("leak", "there is no data check named 'leak'"),
                                           ("columns", "the 'columns' check cannot be accepted")])
def test_an_accepted_check_that_does_not_exist_or_cannot_be_accepted_is_refused(write_sweep, capsys, name, why):
    path = write_sweep(dataset={"source": "bundled:support-qa", "checks": {name: "warn"}})
    assert main(["validate-data", str(path)]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert f"dataset.checks.{name}: {why}" in error and "allowed: 'empty', " in error and "'leakage'. Fix" in error
    assert main(["launch", str(write_sweep(dataset={"source": "bundled:support-qa"})), "--accept", name]) == EXIT_BAD_INPUT
    assert why in " ".join(capsys.readouterr().err.split())


def test_every_check_that_can_stop_a_launch_can_be_accepted_but_those_that_cannot_read_the_data():
    assert set(ACCEPTABLE_CHECKS) == {"empty", "duplicates", "near_duplicates", "label_conflicts", "formatting",
                                      "lengths", "prompt_lengths", "labels", "groups", "leakage"}
