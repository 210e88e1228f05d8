"""The contract every backend honours."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

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

    A backend must: create or resume the study named by the sweep in its storage; record per trial the
    params (`user_attrs['config']` = full resolved params), intermediate values, final metrics
    (`user_attrs['metrics']`), state and, for failures, `user_attrs['fail_reason']`; keep going when a
    trial fails; leave completed trials intact when interrupted.
    """

    name: str

    def __init__(self, sweep, *, listener: Listener | None = None) -> None:
        self.sweep = sweep
        self.listener = listener or (lambda event, details: None)

    @abstractmethod
    def run(self) -> SweepOutcome:
        """Run the sweep. Raises KeyboardInterrupt after recording what finished when interrupted."""
