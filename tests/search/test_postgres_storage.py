"""Studies on a real PostgreSQL server (scripts/cluster/start_postgres.sh, via the conftest fixtures).

Skipped where no PostgreSQL can start, unless FTSWEEP_REQUIRE_POSTGRES=1 (CI sets it).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import optuna
import pytest
from _postgres import PASSWORD_SENTINEL
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.cli import main


def test_rdb_storage_with_heartbeat_runs_trials_and_fails_stale_ones(postgres_db_url):
    storage = RDBStorage(postgres_db_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="quadratic", storage=storage)
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=4)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 4
    assert study.best_value < 1.0

    # A worker that dies mid-trial stops beating; another worker's fail_stale_trials ends its trial.
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's hint that ask/tell do not beat by themselves
        orphan = study.ask()
    storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    other_worker = optuna.load_study(study_name="quadratic", storage=RDBStorage(postgres_db_url))
    assert other_worker.get_trials()[orphan.number].state == TrialState.FAIL


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


@pytest.fixture
def logged():
    """Every log record of ftsweep, Optuna and SQLAlchemy (at their default levels) while the test runs."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("", "optuna", "sqlalchemy")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.integration
def test_a_sweep_runs_on_postgres_and_the_password_never_leaks(postgres_db_url, write_sweep, tmp_path, capfd,
                                                               logged):
    path = write_sweep(n_trials=2)  # output under tmp_path/runs; the storage only on the command line
    assert main(["launch", str(path), "--set", f"storage={postgres_db_url}"]) == 0
    launched = capfd.readouterr()
    assert "Done: 2 complete" in launched.out
    assert "ftsweep:***@127.0.0.1" in launched.out  # where the study lives, without its password

    assert main(["status", "tiny", "--storage", postgres_db_url, "--json"]) == 0
    status = capfd.readouterr()
    assert json.loads(status.out)["counts"]["complete"] == 2

    # A wrong password is an error message, not an echo of the URL.
    wrong = postgres_db_url.replace(PASSWORD_SENTINEL, PASSWORD_SENTINEL + "-wrong")
    assert main(["status", "tiny", "--storage", wrong]) != 0
    refused = capfd.readouterr()
    assert "password authentication failed" in " ".join(refused.err.split())  # rich wraps long lines

    for captured in (launched, status, refused):
        assert PASSWORD_SENTINEL not in captured.out + captured.err
    assert not [m for m in logged if PASSWORD_SENTINEL in m]
    for file in Path(tmp_path).rglob("*"):
        if file.is_file():
            assert PASSWORD_SENTINEL.encode() not in file.read_bytes(), file

    storage = RDBStorage(postgres_db_url)
    study = optuna.load_study(study_name="tiny", storage=storage)
    stored = [study.user_attrs, storage.get_study_system_attrs(study._study_id)]
    for trial in study.get_trials():
        assert trial.state == TrialState.COMPLETE
        stored += [trial.user_attrs, trial.system_attrs]
    assert study.user_attrs["sweep"]["name"] == "tiny"
    assert PASSWORD_SENTINEL not in json.dumps(stored, default=str)
