"""Shared fixtures: small real sweeps on the bundled tiny model, written to a temporary directory."""

from __future__ import annotations

import os

# Nothing in the tests may reach a hub: the real loading code runs against local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import Any

import pytest
import yaml

# A causal_lm sweep small enough for a test: each trial is 4 optimizer steps on the tiny model.
TINY_SWEEP: dict[str, Any] = {
    "name": "tiny",
    "objective": "causal_lm",
    "model": "bundled:tiny-support-lm",
    "dataset": {"source": "bundled:support-qa", "max_train_examples": 128, "max_eval_examples": 16},
    "space": "lora-quick",
    "metric": "eval_loss",
    "sampler": {"name": "random"},
    "pruner": "none",
    "n_trials": 2,
    "budget": {"max_steps": 4, "eval_every": 2, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64},
    "seed": 0,
    "tracking": {"wandb": "off"},  # W&B has its own tests (tests/search/test_tracking.py)
}


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def write_sweep(tmp_path: Path):
    """write_sweep(**changes) -> path of a YAML sweep file based on TINY_SWEEP, output under tmp_path."""

    def write(name: str = "sweep.yaml", **changes: Any) -> Path:
        data = deep_merge(TINY_SWEEP, {"output_dir": str(tmp_path / "runs"), **changes})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


# A real PostgreSQL (tests/_postgres.py): skipped where it cannot start, unless FTSWEEP_REQUIRE_POSTGRES=1.
@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (a `_postgres.PostgresServer`)."""
    from _postgres import PostgresUnavailable, required, start_server

    try:
        server = start_server()
    except PostgresUnavailable as error:
        reason = f"PostgreSQL is not available: {error}"
    else:
        yield server
        server.stop()
        return
    if required():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """postgresql+psycopg2://ftsweep:<PASSWORD_SENTINEL>@127.0.0.1:<port>/optuna, shared by the session."""
    return postgres_server.url


@pytest.fixture
def postgres_db_url(postgres_server, request) -> str:
    """The URL of a new empty database for this test alone (named after it), on the session's server."""
    return postgres_server.create_database(request.node.name)


# A real one-machine SLURM cluster (tests/_slurm.py): skipped where it cannot start, unless FTSWEEP_REQUIRE_SLURM=1.
@pytest.fixture(scope="session")
def slurm_cluster():
    """A throwaway SLURM cluster (munged, slurmctld, slurmd on 127.0.0.1) for the whole session, a
    `_slurm.SlurmCluster`; SLURM_CONF points at it while the session runs."""
    from _slurm import SlurmUnavailable, required, start_cluster

    try:
        cluster = start_cluster()
    except SlurmUnavailable as error:
        reason = f"SLURM is not available: {error}"
    else:
        before = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = before
            cluster.stop()
        return
    if required():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# Two Ray hosts in network namespaces (tests/_netns.py): skipped where they cannot be made, unless FTSWEEP_REQUIRE_NETNS=1.
@pytest.fixture
def ray_netns():
    """start(hidden=None) -> a running two-host Ray cluster (a `_netns.RayNetCluster`); every cluster started
    is stopped after the test, its namespaces and bridge deleted, whether the test passed or not."""
    from _netns import NetnsUnavailable, required, start_cluster

    clusters = []

    def start(hidden: Path | None = None):
        try:
            clusters.append(start_cluster(hidden=hidden))
        except NetnsUnavailable as error:
            reason = f"a two-host Ray cluster in network namespaces is not available: {error}"
            if required():
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.stop()


def load_script(name: str):
    """Import scripts/NAME.py as a module (scripts/ is not a package), the way `python scripts/NAME.py`
    sees it: registered in sys.modules under NAME, so dataclasses and pickling inside it work."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ray_module():
    """The `ray` module with no Ray running: the test starts its own (or lets the backend start one),
    and it is shut down afterwards, so no test sees another's cluster."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    yield ray
    ray.shutdown()
