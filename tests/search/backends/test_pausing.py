"""Pausing schedulers on the Optuna backend (search/components/schedulers.py, search/store/pausing.py): real
fine-tunes of the tiny model are paused at rungs and resumed exactly from their checkpoints, alone and in packs."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.backends import get_backend
from search.store.pausing import paused_trials
from search.store.record import EVAL_HISTORY, PAUSED_AT, RETRY_OF, finished_count, state_counts
from search.store.storage import open_storage
from search.sweep import load_sweep
from spaces import ConfigError

BUDGET = {"max_steps": 8, "eval_every": 2}
# What a pack may differ in (objectives/engine/packed.py PER_SLOT_PARAMS), dropout 0.
PACK_SPACE = {"params": {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "lora_r": {"type": "categorical", "choices": [2, 4, 8]},
    "lora_dropout": {"type": "fixed", "value": 0.0},
    "peft_method": {"type": "fixed", "value": "lora"},
    "target_modules": {"type": "fixed", "value": "attention"},
}}
TOLERANCE = 1e-5


# A good configuration first, then poor ones: the first pauses at the first rung (alone there, no quota yet) and is
# promoted once the poor ones reach it, so every run below resumes a paused trial whatever the sampler draws.
ORDER = [{"learning_rate": 2e-2, "lora_r": 8}] + [{"learning_rate": 1e-4 * (1 + k), "lora_r": 4} for k in range(3)]


def _run(path, *overrides, enqueue=()):
    sweep = load_sweep(path, list(overrides))
    sweep.enqueue = [dict(params) for params in enqueue]
    outcome = get_backend("optuna")(sweep).run()
    return sweep, outcome, optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def _trained_after_a_pause(chain) -> bool:
    """Some trial of the chain was paused and a later one of it trained beyond that step."""
    return any(PAUSED_AT in t.user_attrs and max(chain[-1].intermediate_values) > t.user_attrs[PAUSED_AT]
               for t in chain[:-1])


def _chains(study):
    """{number of the trial that ended a configuration: [its trials, first to last]}."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    continued = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    chains = {}
    for trial in trials:
        if trial.number in continued:
            continue
        chain = [trial]
        while RETRY_OF in chain[0].user_attrs:
            chain.insert(0, by_number[chain[0].user_attrs[RETRY_OF]])
        chains[trial.number] = chain
    return chains


@pytest.mark.parametrize("pruner", ["asha_promote", "hyperband_promote", "curve_promote"])
def test_a_pausing_scheduler_pauses_and_resumes_trials_and_ends_with_n_trials(write_sweep, pruner):
    path = write_sweep(n_trials=6, pruner={"name": pruner, "args": {"reduction_factor": 2}}, budget=BUDGET)
    sweep, outcome, study = _run(path, enqueue=ORDER)
    trials = study.get_trials(deepcopy=False)
    assert finished_count(trials) == 6 and not paused_trials(study)
    chains = _chains(study)
    assert len(chains) == 6  # six configurations, each ended once
    paused = [t for t in trials if PAUSED_AT in t.user_attrs]
    assert paused, "nothing was paused"
    assert any(_trained_after_a_pause(chain) for chain in chains.values()), "no paused trial was resumed"
    assert any(chain[-1].state == TrialState.COMPLETE for chain in chains.values())
    assert sum(chain[-1].state == TrialState.COMPLETE for chain in chains.values()) < 6  # some never promoted
    for chain in chains.values():
        last = chain[-1]
        # The trial that ends a configuration holds its whole curve, the steps before its pauses included.
        assert sorted(last.intermediate_values)[0] == 2
        steps = [h["step"] for h in last.user_attrs[EVAL_HISTORY]]
        assert steps == sorted(set(steps)) and steps[0] == 2
        assert (last.state == TrialState.COMPLETE) == (max(steps) == 8)
    counts = state_counts(trials)
    assert counts.get("resumed", 0) >= 1 and "paused" not in counts and "waiting" not in counts
    assert not list((sweep.output_dir / "checkpoints" / sweep.study_name).glob("trial-*/checkpoint-*"))


def test_a_resumed_trial_has_the_history_of_its_uninterrupted_run(write_sweep):
    path = write_sweep(n_trials=6, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}}, budget=BUDGET)
    sweep, _, study = _run(path, enqueue=ORDER)
    resumed = [chain for chain in _chains(study).values() if _trained_after_a_pause(chain)]
    assert resumed
    objective = sweep.make_objective()
    for chain in resumed[:2]:
        seen = []
        objective.run_trial(chain[-1].user_attrs["config"],
                            report=lambda s, m: seen.append((s, m["eval_loss"])) or False)
        history = chain[-1].user_attrs[EVAL_HISTORY]
        assert [h["step"] for h in history] == [s for s, _ in seen][:len(history)]
        assert [h["eval_loss"] for h in history] == pytest.approx([v for _, v in seen][:len(history)], rel=TOLERANCE)
        if chain[-1].state == TrialState.COMPLETE:
            assert chain[-1].value == pytest.approx(seen[-1][1], rel=TOLERANCE)


def test_packed_trials_pause_and_resume_in_packs(write_sweep):
    path = write_sweep(n_trials=6, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}}, budget=BUDGET,
                       pack={"slots": 2}, space=PACK_SPACE)
    _, _, study = _run(path, enqueue=ORDER)
    trials = study.get_trials(deepcopy=False)
    assert finished_count(trials) == 6 and not paused_trials(study)
    assert any(PAUSED_AT in t.user_attrs for t in trials)
    assert any(_trained_after_a_pause(chain) for chain in _chains(study).values())
    assert all(t.user_attrs.get("pack") for t in trials if PAUSED_AT in t.user_attrs)  # paused in their packs


def test_pausing_schedulers_are_refused_where_they_cannot_run(write_sweep):
    with pytest.raises(ConfigError, match="ray backend") as ray:
        load_sweep(write_sweep(pruner="asha_promote", backend="ray"))
    assert ray.value.key == "pruner.name" and "pbt" in str(ray.value)
    with pytest.raises(ConfigError, match="number of trials") as timeout:
        load_sweep(write_sweep(pruner="asha_promote", n_trials=None, timeout=60))
    assert timeout.value.key == "n_trials"
