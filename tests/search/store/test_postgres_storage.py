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
from search.settings import RetryPolicy
from search.store import record
from search.store.recovery import retry_stale_trial
from search.store.storage import open_storage


def test_a_trial_that_stops_beating_on_postgres_is_failed_and_queued_again(postgres_db_url):
    # ftsweep's heartbeat storage and stale-trial callback (search/store), not Optuna alone: the orphaned
    # trial is failed by another worker and its params are queued again as a retry.
    policy = RetryPolicy(heartbeat_interval=1, grace_period=2)
    storage = open_storage(postgres_db_url, heartbeat=policy, on_stale=retry_stale_trial(policy))
    study = optuna.create_study(study_name="quadratic", storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's hint that ask/tell do not beat by themselves
        orphan = study.ask({"x": optuna.distributions.FloatDistribution(-2, 2)})
    storage.record_heartbeat(orphan._trial_id)  # one beat, then the worker "dies"

    other_worker = optuna.load_study(study_name="quadratic", storage=open_storage(postgres_db_url, heartbeat=policy,
                                                                                  on_stale=retry_stale_trial(policy)))
    deadline = time.monotonic() + 30
    while other_worker.get_trials()[orphan.number].state == TrialState.RUNNING:
        assert time.monotonic() < deadline, "the silent trial was never failed"
        optuna.storages.fail_stale_trials(other_worker)
        time.sleep(0.2)
    trials = other_worker.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    [retry] = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs[record.RETRY_OF] == orphan.number
    assert retry.user_attrs[record.RETRY_CAUSE] == record.PREEMPTED
    assert retry.system_attrs["fixed_params"] == orphan.params  # the same x, fixed for its re-run


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


def as_users_write_it(url: str, scheme: str = "postgresql") -> str:
    """The fixture's `postgresql+psycopg2://` URL without a driver, as users write it."""
    assert url.startswith("postgresql+psycopg2://")
    return url.replace("postgresql+psycopg2://", f"{scheme}://", 1)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_url_without_a_driver_opens_with_the_installed_one(postgres_db_url, scheme):
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3 and refuses postgres://; ftsweep[postgres] installs
    # psycopg2. open_storage names the installed driver, with and without the heartbeat (RDBStorage).
    url = as_users_write_it(postgres_db_url, scheme)
    study = optuna.create_study(study_name="plain", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", -2, 2) ** 2, n_trials=2)

    policy = RetryPolicy(heartbeat_interval=1, grace_period=2)
    storage = open_storage(url, heartbeat=policy, on_stale=retry_stale_trial(policy))
    assert storage.engine.dialect.driver in ("psycopg2", "psycopg")
    again = optuna.load_study(study_name="plain", storage=storage)
    again.optimize(lambda trial: trial.suggest_float("x", -2, 2) ** 2, n_trials=1)
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE] * 3


def test_a_sweep_runs_on_postgres_and_the_password_never_leaks(postgres_db_url, write_sweep, tmp_path, capfd,
                                                               logged):
    url = as_users_write_it(postgres_db_url)  # postgresql://, no driver named: the launch picks the installed one
    path = write_sweep(n_trials=2)  # output under tmp_path/runs; the storage only on the command line
    assert main(["launch", str(path), "--set", f"storage={url}"]) == 0
    launched = capfd.readouterr()
    assert "Done: 2 complete" in launched.out
    assert "postgresql://ftsweep:***@127.0.0.1" in launched.out  # where the study lives, without its password

    assert main(["status", "tiny", "--storage", url, "--json"]) == 0
    status = capfd.readouterr()
    assert json.loads(status.out)["counts"]["complete"] == 2

    # A wrong password is an error message, not an echo of the URL.
    wrong = url.replace(PASSWORD_SENTINEL, PASSWORD_SENTINEL + "-wrong")
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
