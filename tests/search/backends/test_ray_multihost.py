"""A sweep over two Ray hosts (network namespaces on this machine, tests/_netns.py), launched with the real CLI
inside the head host: token authentication, trials on both hosts, a results folder one host cannot see, and a
worker host lost mid-trial (its link cut, or its raylet killed). The study's journal file and the Ray results
folder are on the filesystem both hosts share, as NFS would be on a real cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.store.record import FAILURE_CAUSE, PREEMPTED, RETRY_OF
from search.store.storage import JOURNAL, open_storage
from search.sweep import load_sweep

pytestmark = pytest.mark.slow
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[3]


def _launch(cluster, path: Path, tmp_path: Path, *, token: str | None = "file") -> subprocess.Popen:
    """`ftsweep launch SWEEP --ray-address HEAD` in the head host. HOME is empty, so this machine's own
    ~/.ray/auth_token is not sent: the launch has the cluster's token from RAY_AUTH_TOKEN_PATH (token="file"),
    `token` itself in RAY_AUTH_TOKEN, or none (None). RAY_AUTH_MODE is left for ftsweep to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    (tmp_path / "home").mkdir(exist_ok=True)
    env["HOME"] = str(tmp_path / "home")
    if token == "file":
        env["RAY_AUTH_TOKEN_PATH"] = str(cluster.token_file)
    elif token is not None:
        env["RAY_AUTH_TOKEN"] = token
    log = (tmp_path / "launch.log").open("w")
    return subprocess.Popen(cluster.head.command(sys.executable, "-m", "search.cli", "launch", str(path),
                                                 "--ray-address", cluster.address),
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(driver: subprocess.Popen, tmp_path: Path, timeout: float = 600) -> str:
    try:
        driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    return (tmp_path / "launch.log").read_text()


def _study(sweep) -> optuna.Study | None:
    # The journal file is read while the driver writes it.
    if not Path(sweep.storage_url.removeprefix(JOURNAL)).exists():
        return None
    try:
        return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    except KeyError:  # the file exists, the study not yet
        return None


def test_launch_with_the_cluster_token_runs_trials_on_both_hosts(write_sweep, ray_netns, tmp_path):
    cluster = ray_netns()
    path = write_sweep(backend="ray", n_trials=4, budget={"max_steps": 4, "eval_every": 2},
                       ray={"max_concurrent_trials": 2})
    driver = _launch(cluster, path, tmp_path)
    output = _finish(driver, tmp_path)
    assert driver.returncode == 0, output
    trials = _study(load_sweep(path)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, output
    nodes = cluster.nodes()
    hosts = {nodes[t.user_attrs["placement"]["node_id"]]["ip"] for t in trials}
    assert hosts == {cluster.head.address, cluster.worker.address}


@pytest.mark.parametrize(("token", "words"), [
    (None, "this launch has no Ray token"),
    ("0" * 64, "refused this launch's token ($RAY_AUTH_TOKEN)"),
])
def test_launch_without_the_cluster_token_is_refused_naming_the_fix(write_sweep, ray_netns, tmp_path, token, words):
    cluster = ray_netns()
    path = write_sweep(backend="ray")
    started = time.monotonic()
    driver = _launch(cluster, path, tmp_path, token=token)
    output = _finish(driver, tmp_path, timeout=120)
    assert driver.returncode != 0
    flat = " ".join(output.split())  # the console wraps long lines
    assert f"the Ray cluster at {cluster.address} uses token authentication and {words}" in flat, output
    assert "RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token" in flat, output
    assert time.monotonic() - started < 60  # not Ray's 20 s of retries, then a bare ConnectionError


def test_worker_host_that_cannot_see_the_results_folder_is_refused_at_launch(write_sweep, ray_netns, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster = ray_netns(hidden=runs)  # the worker host sees an empty folder of its own there
    path = write_sweep(backend="ray", n_trials=2)
    driver = _launch(cluster, path, tmp_path)
    output = _finish(driver, tmp_path, timeout=300)
    assert driver.returncode != 0
    flat = " ".join(output.split())
    results = (load_sweep(path).output_dir / "ray").resolve()
    assert f"Ray node(s) {cluster.worker.address} (" in flat, output
    assert f"do not see the results folder {results}" in flat, output
    assert "Fix: set output_dir to a folder every node mounts at the same path" in flat, output
    study = _study(load_sweep(path))
    assert study is None or not study.get_trials()  # refused before any trial ran


def _cut_link(cluster) -> None:
    subprocess.run(["ip", "link", "set", cluster.worker.veth, "down"], check=True)


def _kill_raylet(cluster) -> None:
    os.kill(cluster.worker.raylet_pid(), 9)  # the worker host's node only: found among its namespace's processes


@pytest.mark.parametrize("fault", [_cut_link, _kill_raylet], ids=["link-cut", "raylet-killed"])
def test_trial_lost_with_its_host_is_recorded_preempted_and_run_again(write_sweep, ray_netns, tmp_path, fault):
    cluster = ray_netns()
    n_trials = 4
    # Long enough that the fault finds a trial mid-way: ~30 ms a step here, ~10 s a trial.
    path = write_sweep(backend="ray", n_trials=n_trials, budget={"max_steps": 300, "eval_every": 30},
                       ray={"max_concurrent_trials": 2})
    sweep = load_sweep(path)
    worker_node = next(node for node, info in cluster.nodes().items() if info["ip"] == cluster.worker.address)
    driver = _launch(cluster, path, tmp_path)

    def running_on_worker() -> optuna.trial.FrozenTrial | None:
        study = _study(sweep)
        for t in study.get_trials(deepcopy=False) if study else []:
            if t.state == TrialState.RUNNING and t.user_attrs.get("placement", {}).get("node_id") == worker_node \
                    and 1 <= len(t.intermediate_values) <= 3:  # mid-way: it has a checkpoint, and steps to go
                return t
        return None

    deadline = time.monotonic() + 300
    while (lost := running_on_worker()) is None and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lost is not None, f"no trial ran on the worker host:\n{_finish(driver, tmp_path, 1)}"
    fault_at = datetime.now()  # the study's timestamps are naive local time
    fault(cluster)
    output = _finish(driver, tmp_path)
    assert driver.returncode == 0, output
    assert "[state-dump]" not in output  # Ray's raylet diagnostics never reach the user's terminal

    trials = _study(sweep).get_trials()
    states = [(t.number, t.state.name, t.user_attrs.get(FAILURE_CAUSE), t.user_attrs.get(RETRY_OF)) for t in trials]
    lost = next(t for t in trials if t.number == lost.number)
    print(f"\n{fault.__name__}: trials {states}")
    print(f"{fault.__name__}: fault -> lost trial {lost.number} recorded {lost.state.name}: "
          f"{(lost.datetime_complete - fault_at).total_seconds():.1f} s")
    assert lost.state == TrialState.FAIL, states
    assert lost.user_attrs.get(FAILURE_CAUSE) == PREEMPTED, states
    retry = next(t for t in trials if t.user_attrs.get(RETRY_OF) == lost.number)
    assert retry.state == TrialState.COMPLETE, states
    print(f"{fault.__name__}: fault -> retry {retry.number} running: "
          f"{(retry.datetime_start - fault_at).total_seconds():.1f} s, complete: "
          f"{(retry.datetime_complete - fault_at).total_seconds():.1f} s")
    # The re-run went on from the lost trial's last checkpoint (on the shared results folder), on the head host.
    reached = max(lost.intermediate_values)
    assert retry.user_attrs["eval_history"][0] == {**lost.user_attrs["eval_history"][0],
                                                   **({"resumed_from": reached} if reached == 30 else {})}
    assert any(h.get("resumed_from") == reached for h in retry.user_attrs["eval_history"])
    assert retry.params == lost.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials, states
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials), states
