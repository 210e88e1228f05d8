"""Workers on a real GPU: `--gpus` pins each worker to its device and trains in bf16, and a worker's
CUDA memory returns to the base model's after every trial. Skipped without CUDA (CI has none)."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.cli import main
from search.store.storage import open_storage

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
QUICK = {"max_steps": 4, "eval_every": 2, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}


def test_gpus_launch_pins_each_worker_to_its_device_in_bf16(write_sweep, tmp_path):
    gpus = ",".join(str(i) for i in range(min(torch.cuda.device_count(), 2)))
    storage = f"journal:///{tmp_path / 'store' / 's.journal'}"
    path = write_sweep(n_trials=6, budget=QUICK)
    assert main(["launch", str(path), "--storage", storage, "--gpus", gpus]) == 0
    trials = optuna.load_study(study_name="tiny", storage=open_storage(storage)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    devices = {t.user_attrs["device"] for t in trials}
    assert all(d.startswith("cuda ") and d.endswith("bfloat16") for d in devices), devices
    assert {d.split("CUDA_VISIBLE_DEVICES=")[1].split(")")[0] for d in devices} <= set(gpus.split(","))


def test_cuda_memory_returns_to_the_base_model_after_every_trial(write_sweep):
    from search.backends import get_backend
    from search.sweep import load_sweep

    path = write_sweep(n_trials=10, budget=QUICK, pruner={"name": "median", "args": {"n_startup_trials": 2}})
    allocated: list[int] = []

    def listener(event, details):
        if event == "trial_end":
            allocated.append(torch.cuda.memory_allocated())

    get_backend("optuna")(load_sweep(path), listener=listener).run()
    assert len(allocated) == 10
    # Adapter, optimizer state, activations and the Trainer are gone: only the base model stays.
    assert max(allocated) - min(allocated) <= 1 << 20, allocated
