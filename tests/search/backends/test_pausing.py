"""Pausing schedulers on the Optuna backend (search/components/schedulers.py, search/store/pausing.py): real
fine-tunes of the tiny model are paused at rungs and resumed exactly from their checkpoints, alone and in packs."""

from __future__ import annotations

import json

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


def test_a_paused_trials_corrupt_checkpoint_is_reported_and_the_trial_runs_again(write_sweep):
    """A paused trial's checkpoint damaged on disk while it waits: its continuation says so (note and
    retry_reason) and trains the params again from step 0; the sweep finishes."""
    path = write_sweep(n_trials=4, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}}, budget=BUDGET)
    sweep = load_sweep(path)
    sweep.enqueue = [dict(params) for params in ORDER]
    notes, damaged = [], []

    def listener(event, details):
        if event == "note":
            notes.append(details["text"])
        trial = details.get("trial")
        if event == "trial_end" and PAUSED_AT in trial.user_attrs and not damaged:
            folder = sweep.output_dir / "checkpoints" / sweep.study_name / f"trial-{trial.number}"
            [adapter] = folder.glob("checkpoint-*/adapter_model.safetensors")
            adapter.write_bytes(adapter.read_bytes()[:40])  # cut short, as a full disk leaves it
            damaged.append(trial.number)

    get_backend("optuna")(sweep, listener=listener).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    trials = study.get_trials(deepcopy=False)
    assert damaged and finished_count(trials) == 4 and not paused_trials(study)
    continuation = next(t for t in trials if t.user_attrs.get(RETRY_OF) == damaged[0])
    assert "unreadable" in continuation.user_attrs["retry_reason"]
    assert any(f"trial {continuation.number}:" in note and "from step 0" in note for note in notes)
    if continuation.user_attrs.get(EVAL_HISTORY):  # it ran (it may have been ended unpromoted instead)
        assert continuation.user_attrs[EVAL_HISTORY][0]["step"] == 2
        assert not any("resumed_from" in h for h in continuation.user_attrs[EVAL_HISTORY])


def _claim_all(url: str, study_name: str, ids: list[int], start, out) -> None:
    from search.store.pausing import claim

    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    start.wait()
    out.put([trial_id for trial_id in ids if claim(study, trial_id)])


def test_two_workers_never_resume_the_same_paused_trial_on_postgres(postgres_db_url):
    """Real PostgreSQL: two processes race to promote the same 30 paused trials, in the same order; each
    continuation is popped by exactly one of them (Optuna's WAITING -> RUNNING under a row lock)."""
    import multiprocessing

    from search.store.pausing import mark_paused, park

    study = optuna.create_study(study_name="race", storage=open_storage(postgres_db_url))
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for trial in [study.ask(x) for _ in range(30)]:  # all asked first: a plain study.ask pops waiting trials
        trial.report(0.5, 2)
        mark_paused(trial, 2)
        park(study, study.tell(trial, state=TrialState.PRUNED))
    ids = [p.trial_id for p in paused_trials(study)]
    assert len(ids) == 30
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    workers = [context.Process(target=_claim_all, args=(postgres_db_url, "race", ids, start, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    got = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(got[0] + got[1]) == sorted(ids)  # every one claimed, none twice
    assert not paused_trials(study)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "postgres"])
def test_a_killed_worker_loses_no_paused_trial(write_sweep, tmp_path, request, storage):
    """A worker on one node is killed while some trials are paused and one runs: another worker resumes the paused
    trials from their checkpoints, re-runs the lost one, and the sweep ends with n_trials configurations."""
    import signal

    from search.cli import main
    from tests.search.backends.test_workers import _spawn_worker, _wait_until

    url = f"journal:///{tmp_path / 'store.journal'}" if storage == "journal" else \
        request.getfixturevalue("postgres_db_url")
    path = write_sweep(n_trials=6, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}},
                       budget={"max_steps": 40, "eval_every": 4, "batch_size": 4, "max_seq_length": 64},
                       retries={"heartbeat_interval": 1, "grace_period": 4})
    assert main(["launch", str(path), "--storage", url, "--workers", "0"]) == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    first = _spawn_worker(url, tmp_path / "first.log", FTSWEEP_HOST="node-a")

    def paused_and_running():
        trials = study.get_trials()
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
        return paused_trials(study) and running

    try:
        _wait_until(paused_and_running, what="a paused trial and a running one", proc=first,
                    log=tmp_path / "first.log")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    waiting = {p.origin.number for p in paused_trials(study)}
    # The trials the kill cut short (one may have ended between the check and the kill).
    lost = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    second = _spawn_worker(url, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    trials = optuna.load_study(study_name="tiny", storage=open_storage(url)).get_trials()
    assert finished_count(trials) == 6 and not [t for t in trials if t.state in (TrialState.RUNNING,
                                                                                 TrialState.WAITING)]
    for number in waiting:  # each paused trial went on (or ended) once, from its own checkpoint
        [continuation] = [t for t in trials if t.user_attrs.get(RETRY_OF) == number]
        history = continuation.user_attrs.get(EVAL_HISTORY, [])
        assert continuation.state != TrialState.FAIL
        if len(history) > 1 and history[-1]["step"] > trials[number].user_attrs[PAUSED_AT]:
            assert any(h.get("resumed_from") == trials[number].user_attrs[PAUSED_AT] for h in history)
    for number in lost:  # failed by its missing heartbeat, and re-run
        assert trials[number].state == TrialState.FAIL
        assert any(t.user_attrs.get(RETRY_OF) == number and t.user_attrs.get("retry_cause") == "preempted"
                   for t in trials)


def test_paused_trials_show_in_status_and_best_and_survive_a_stopped_sweep(write_sweep, capsys):
    """Ctrl-C while trials are paused: they stay paused (status, best and --json say so), and launching the sweep
    again resumes them; it ends with n_trials configurations and nothing paused."""
    from search.cli import main

    path = write_sweep(n_trials=6, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}}, budget=BUDGET)
    sweep = load_sweep(path)
    sweep.enqueue = [dict(params) for params in ORDER]

    def listener(event, details):
        if event == "trial_start" and paused_trials(details["trial"].study) and details["trial"].number >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_backend("optuna")(sweep, listener=listener).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    paused = paused_trials(study)
    assert paused
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(paused)} paused" in out and "may still be resumed" in out
    assert main(["status", str(path), "--json"]) == 0
    assert {p["number"] for p in json.loads(capsys.readouterr().out)["paused"]} == {p.origin.number for p in paused}
    assert main(["launch", str(path)]) == 0
    trials = study.get_trials(deepcopy=False)
    assert finished_count(trials) == 6 and not paused_trials(study)
    assert main(["best", str(path)]) == 0 and "paused trial" not in capsys.readouterr().out


def test_a_sweep_too_small_for_any_promotion_still_ends_with_a_full_length_trial(write_sweep):
    """Two configurations, one in two promoted: no rung ever promotes (a quota of 1 needs 2 at the rung, and the
    better one is already past it), so without more the sweep would end everything paused. The scheduler finishes
    the best paused configuration instead, so `best`, `export` and `train` have a winner."""
    path = write_sweep(n_trials=2, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}}, budget=BUDGET)
    _, _, study = _run(path, enqueue=ORDER[:2])
    trials = study.get_trials(deepcopy=False)
    [complete] = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete.params["learning_rate"] == ORDER[0]["learning_rate"]  # the better one
    assert max(complete.intermediate_values) == 8 and finished_count(trials) == 2 and not paused_trials(study)
