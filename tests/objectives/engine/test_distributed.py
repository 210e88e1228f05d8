"""Distributed trials (objectives/engine/distributed.py): one trial in 2 gloo processes on this CPU has the eval
history of the trial in one process with the same global batch; a prune reaches every rank; a lost rank fails
the trial without leaving a process behind, and the next trial starts on a clean group."""

from __future__ import annotations

import os
import signal
import time

import optuna
import psutil
import pytest

from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
from objectives import TrialOptions
from objectives.engine.distributed import RankGroup, RankLost, run_distributed_trial

TWO = RankGroup(world_size=2)

pytestmark = pytest.mark.slow  # rank processes (about 5 s per trial on 2 cores)

BUDGET = {"max_steps": 8, "eval_every": 2, "batch_size": 8, "eval_batch_size": 16, "max_seq_length": 64}
PARAMS = {"learning_rate": 3e-3, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "attention"}


def _objective(cls=None):
    """The causal LM objective of these tests (or `cls`, one of its subclasses with a fault injected)."""
    return (cls or get_objective("causal_lm"))(ModelConfig(name_or_path="bundled:tiny-support-lm"),
                                                DataConfig(source="bundled:support-qa", max_train_examples=64,
                                                           max_eval_examples=16),
                                                TrainBudget(**BUDGET), seed=0)


def _ranks_left() -> list[psutil.Process]:
    """Processes below this one other than multiprocessing's own servers (the forkserver, which forks the ranks,
    and the resource tracker)."""
    servers = {p.pid for p in psutil.Process().children()
               if any("forkserver" in part or "resource_tracker" in part for part in p.cmdline())}
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in servers]


@pytest.fixture(scope="module")
def alone():
    objective = _objective()
    seen = []
    final = objective.run_trial(PARAMS, report=lambda step, m: seen.append((step, m["eval_loss"])) or False)
    return seen, final


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_with_the_same_global_batch_give_the_history_of_one(alone, strategy):
    """batch_size is the trial's global batch: 4 rows per process here; fsdp shards the model over both."""
    seen, logs = [], []
    final = run_distributed_trial(_objective(), PARAMS, lambda step, m: seen.append((step, m["eval_loss"])) or False,
                                  TrialOptions(on_log=lambda step, entry: logs.append(step)),
                                  group=RankGroup(world_size=2, strategy=strategy))
    want, want_final = alone
    assert [s for s, _ in seen] == [s for s, _ in want] == [2, 4, 6, 8]
    assert [v for _, v in seen] == pytest.approx([v for _, v in want], rel=1e-5)
    assert final["train_loss"] == pytest.approx(want_final["train_loss"], rel=1e-5)
    assert logs  # rank 0's training logs reach the caller
    assert not _ranks_left()


def test_a_prune_ends_the_trial_on_every_rank(alone):
    seen = []

    def report(step, metrics):
        seen.append(step)
        return step == 4

    with pytest.raises(optuna.TrialPruned):
        run_distributed_trial(_objective(), PARAMS, report, group=TWO)
    assert seen == [2, 4]  # no rank trained on after the prune
    assert not _ranks_left()


def test_a_killed_rank_fails_the_trial_and_the_next_trial_starts_on_a_clean_group(alone):
    killed = []

    def report(step, metrics):
        if not killed:
            ranks = _ranks_left()
            assert len(ranks) == 2
            victim = max(ranks, key=lambda p: p.pid)
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(time.monotonic())
        return False

    with pytest.raises(RankLost, match="lost"):
        run_distributed_trial(_objective(), PARAMS, report, group=RankGroup(world_size=2, timeout_s=30))
    assert time.monotonic() - killed[0] < 30  # well before the group's timeout
    assert not _ranks_left()
    seen = []
    run_distributed_trial(_objective(), PARAMS, lambda step, m: seen.append((step, m["eval_loss"])) or False, group=TWO)
    assert [v for _, v in seen] == pytest.approx([v for _, v in alone[0]], rel=1e-5)


def test_a_hung_rank_fails_the_trial_after_the_group_timeout():
    stopped = []

    def report(step, metrics):
        if not stopped:
            victim = max(_ranks_left(), key=lambda p: p.pid)
            victim.suspend()  # SIGSTOP: alive, silent -- its peers wait for it in the next collective
            stopped.append(time.monotonic())
        return False

    with pytest.raises(RankLost):
        run_distributed_trial(_objective(), PARAMS, report, group=RankGroup(world_size=2, timeout_s=5))
    assert time.monotonic() - stopped[0] < 60
    assert not _ranks_left()


def _fault(name: str):
    from tests.objectives.engine import rank_faults

    return _objective(getattr(rank_faults, name))


def test_ranks_that_would_checkpoint_differently_take_rank_0s_decision(alone, tmp_path):
    """A checkpoint's save runs collectives (Trainer gathers the FLOP count): a rank saving alone would wait for
    ever. Rank 0 checkpoints at every evaluation here and rank 1 at none; every rank does as rank 0 says."""
    seen = []
    run_distributed_trial(_fault("DisagreeingCheckpoints"), PARAMS, lambda step, m: seen.append(m["eval_loss"]) or False,
                          TrialOptions(trial_dir=tmp_path, checkpoints=True),
                          group=RankGroup(world_size=2, deadlock_after_s=10))
    assert seen == pytest.approx([v for _, v in alone[0]], rel=1e-5)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-6"]  # the newest kept; none at the end
    assert not _ranks_left()


def test_ranks_waiting_on_different_collectives_fail_the_trial_as_deadlocked():
    started = time.monotonic()
    with pytest.raises(RankLost, match="deadlocked") as raised:
        run_distributed_trial(_fault("Rank1WaitsForAMessage"), PARAMS,
                              group=RankGroup(world_size=2, deadlock_after_s=5))
    assert time.monotonic() - started < 60  # the group's own timeout (600 s) would have taken ten minutes
    assert "rank 1: recv" in str(raised.value) and "rank 0: " in str(raised.value)
    assert not _ranks_left()


def test_a_rank_slow_outside_any_collective_is_not_taken_for_a_deadlock(alone):
    """Rank 0 waits in the step's all-reduce for longer than deadlock_after_s, but rank 1 is busy elsewhere."""
    from tests.objectives.engine.rank_faults import SLOW_STEP_S

    seen = []
    run_distributed_trial(_fault("Rank1SlowStep"), PARAMS, lambda step, m: seen.append(m["eval_loss"]) or False,
                          group=RankGroup(world_size=2, deadlock_after_s=SLOW_STEP_S / 3))
    assert seen == pytest.approx([v for _, v in alone[0]], rel=1e-5)


class _Stopped(Exception):
    """Stands for the worker being stopped between two evaluations."""


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_distributed_trial_resumes_from_rank_0s_checkpoint_on_every_rank(alone, tmp_path, strategy):
    from objectives.engine.checkpoint import latest_checkpoint

    seen = []

    def report(step, metrics):
        if step == 6:
            raise _Stopped
        seen.append((step, metrics["eval_loss"]))
        return False

    with pytest.raises(_Stopped):
        run_distributed_trial(_objective(), PARAMS, report, TrialOptions(trial_dir=tmp_path, checkpoints=True),
                              group=RankGroup(world_size=2, strategy=strategy))
    assert not _ranks_left()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "checkpoint-4"
    run_distributed_trial(_objective(), PARAMS, lambda step, m: seen.append((step, m["eval_loss"])) or False,
                          TrialOptions(trial_dir=tmp_path, checkpoints=True, resume_from=checkpoint),
                          group=RankGroup(world_size=2, strategy=strategy))
    assert [s for s, _ in seen] == [2, 4, 6, 8]
    assert [v for _, v in seen] == pytest.approx([v for _, v in alone[0]], rel=1e-5)
