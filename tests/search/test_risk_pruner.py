"""The `risk` pruner (search/components/risk_pruner.py): its bound holds on curves it was not calibrated on, it
prunes real trials of the tiny model once calibrated, and it calibrates on an earlier study's file."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search.backends import get_backend
from search.components.risk_pruner import RiskPruner
from search.store.storage import open_storage
from search.sweep import load_sweep

STEPS = list(range(5, 41, 5))


def _curve(rng: random.Random) -> dict[int, float]:
    """A learning curve whose speed and floor vary: fast starters are not always the best at the end."""
    floor, speed = rng.uniform(0.5, 1.0), rng.uniform(0.02, 0.3)
    return {s: floor + 1.5 * (1 - speed) ** s + rng.gauss(0, 0.01) for s in STEPS}


def _study_with(curves: list[dict[int, float]], pruner: RiskPruner) -> optuna.Study:
    study = optuna.create_study(pruner=pruner)
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                                  value=curve[40], intermediate_values=curve))
    return study


@pytest.mark.parametrize("max_risk", [0.1, 0.25])
def test_an_eventual_top_k_trial_is_pruned_no_more_often_than_max_risk(max_risk):
    rng = random.Random(1)
    pruned = kept = 0
    for _ in range(40):  # 40 calibrations on fresh reference sets, 200 new curves each
        references = [_curve(rng) for _ in range(60)]
        pruner = RiskPruner(max_risk=max_risk, top_k=12, max_steps=40)
        study = _study_with(references, pruner)
        kth_best = sorted(c[40] for c in references)[11]
        limits = {s: pruner.threshold(study, s) for s in STEPS[:-1]}
        assert all(limit is not None for limit in limits.values())
        for _ in range(200):
            curve = _curve(rng)
            if curve[40] <= kth_best:  # it would end in the references' top k
                if any(curve[s] > limit for s, limit in limits.items()):
                    pruned += 1
                else:
                    kept += 1
    rate = pruned / (pruned + kept)
    assert pruned + kept > 1000
    assert rate <= max_risk + 0.03, rate  # the bound, with room for the sampling noise of ~1500 draws
    assert rate >= max_risk / 4, rate  # and it does prune: the bound is spent, not wasted


def test_too_few_references_prune_nothing():
    rng = random.Random(2)
    pruner = RiskPruner(max_risk=0.1, top_k=5, max_steps=40)
    study = _study_with([_curve(rng) for _ in range(20)], pruner)
    assert pruner.threshold(study, 5) is None  # 5 top curves bound a risk of 1/6 at best, not 0.1


def test_a_sweep_calibrated_on_an_earlier_study_prunes_from_its_first_trials(write_sweep, tmp_path):
    budget = {"max_steps": 8, "eval_every": 2}
    earlier = load_sweep(write_sweep("earlier.yaml", n_trials=8, budget=budget, study_name="earlier",
                                     output_dir=str(tmp_path / "earlier")))
    get_backend("optuna")(earlier).run()
    journal = earlier.storage_url.removeprefix("journal:///")
    path = write_sweep("later.yaml", n_trials=6, budget=budget, study_name="later", sampler={"name": "random"},
                       pruner={"name": "risk", "args": {"max_risk": 0.5, "top_k": 4, "reference": "/" + journal
                                                        if not journal.startswith("/") else journal}},
                       seed=7, output_dir=str(tmp_path / "later"))
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    study = optuna.load_study(study_name="later", storage=open_storage(sweep.storage_url))
    states = [t.state for t in study.get_trials()]
    assert len(states) == 6 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    with pytest.raises(Exception, match="does not exist"):
        load_sweep(write_sweep("bad.yaml", pruner={"name": "risk", "args": {"reference": str(tmp_path / "no.journal")}}))
