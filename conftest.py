"""Docstring examples run as tests (`--doctest-modules` over search/, spaces/ and objectives/).

An example that needs a launched sweep or a trained run gets one from these names, built once per
test session on the bundled tiny model: `sweep_file` (a 2-trial causal_lm sweep, already launched),
`sweep` and `study` (that sweep and its study), `trained_dir` (its best trial exported and trained:
`ftsweep train`'s output), `tmp` (a fresh directory for the example's files).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches a hub, in examples either
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import yaml
from _pytest.doctest import DoctestItem

# `python -m search.cli` runs the CLI on import: not a module to collect.
collect_ignore = ["search/cli/__main__.py"]


@pytest.fixture(scope="session")
def _launched_sweep(tmp_path_factory):
    from search.backends import get_backend
    from search.sweep import load_sweep
    from tests.conftest import TINY_SWEEP

    root = tmp_path_factory.mktemp("doctest-sweep")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_SWEEP, "output_dir": str(root / "runs")}, sort_keys=False))
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    return path


@pytest.fixture(scope="session")
def _trained_run(_launched_sweep, tmp_path_factory):
    import optuna

    from search.aftersweep.train import train_run
    from search.results.export import export
    from search.store.storage import open_storage
    from search.sweep import load_run, load_sweep

    sweep = load_sweep(_launched_sweep)
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    root = tmp_path_factory.mktemp("doctest-trained")
    [exported] = export(study, root / "winner")
    run, objective_cls = load_run(exported.directory / "winner.yaml", [f"output_dir={root / 'trained'}"])
    train_run(run, objective_cls)
    return root / "trained"


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace, tmp_path):
    """The names above, for docstring examples only (other tests never pay for the sweep)."""
    if not isinstance(request.node, DoctestItem):
        return
    import optuna

    from search.store.storage import open_storage
    from search.sweep import load_sweep

    path = request.getfixturevalue("_launched_sweep")
    sweep = load_sweep(path)
    if "trained_dir" in request.node.dtest.docstring:  # a trained run costs a fit: only where used
        doctest_namespace["trained_dir"] = request.getfixturevalue("_trained_run")
    doctest_namespace.update(
        sweep_file=path, sweep=sweep, tmp=tmp_path,
        study=optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url)),
    )
