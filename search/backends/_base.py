"""The contract every backend honours."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from ..secrets import redact_url, scrub_logs
from ..store.record import ENQUEUED, finished_count
from ..store.recovery import recover_interrupted

# Called by a backend as things happen, for progress displays: event name + details.
Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class SweepOutcome:
    """What a launch did (the study store holds the full record)."""

    study_name: str
    storage_url: str
    ran: int = 0  # trials started by this launch
    interrupted: bool = False
    counts: dict[str, int] = field(default_factory=dict)


class Backend(ABC):
    """Runs `sweep` until it has `n_trials` finished trials (or `timeout`), recording each in the study.

    A backend must: create or resume the study named by the sweep in its storage; write each trial's
    record through `search.store.record.TrialRecord` (config, eval history and intermediate values,
    final metrics, duration, state, failure cause and reason); keep going when a trial fails; leave
    completed trials intact when interrupted. The backend contract tests check all of it.
    """

    name: str

    def __init__(self, sweep, *, listener: Listener | None = None) -> None:
        self.sweep = sweep
        self.listener = listener or (lambda event, details: None)
        # Optuna logs a failed trial's exception and traceback, Ray its trial errors: passwords hidden there too.
        scrub_logs("optuna", "ray", "ray.tune", "ftsweep")

    def begin(self, study, storage_url: str) -> tuple[SweepOutcome, int | None]:
        """What every backend does to an opened study before running trials: fail and re-queue
        trials a dead process left running, queue `--enqueue` configs, and work out how many trials
        are still owed. Returns the outcome to fill and that number (None: until the timeout)."""
        sweep, spec = self.sweep, self.sweep.spec
        requeued = recover_interrupted(study, spec.retries)
        searched = set(sweep.space.searched_names)
        for params in sweep.enqueue:  # only the params this space searches: the sampler fills in the rest
            known = {k: v for k, v in params.items() if k in searched}
            if known:
                study.enqueue_trial(known, user_attrs={ENQUEUED: True}, skip_if_exists=True)
        done = finished_count(study.get_trials(deepcopy=False))
        remaining = None if spec.n_trials is None else max(spec.n_trials - done, 0)
        self.listener("start", {"study": study, "done": done, "remaining": remaining, "requeued": requeued,
                                "total": spec.n_trials})
        return SweepOutcome(study_name=sweep.study_name, storage_url=redact_url(storage_url)), remaining

    @classmethod
    def check(cls, sweep) -> None:
        """Refuse, with a ConfigError, what this backend cannot run in `sweep`, without starting anything:
        `Sweep.check` calls it, so `launch --dry-run` refuses what a launch would. Nothing to add here."""

    @abstractmethod
    def run(self) -> SweepOutcome:
        """Run the sweep. Raises KeyboardInterrupt after recording what finished when interrupted."""
