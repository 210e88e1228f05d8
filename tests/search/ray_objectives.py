"""Objectives that fail once (raise, or have their process killed), for Ray's retry tests. Importable by Ray
workers as `tests.search.ray_objectives:FailsOnceObjective` (Ray puts the driver's working directory, the repo
root, on every worker's path); the marker file named by FTSWEEP_FAIL_MARKER says it already failed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from objectives import get_objective

CausalLMObjective = get_objective("causal_lm")  # the objective class of the causal_lm task


class _OnceAfterFirstEvaluation(CausalLMObjective):
    """The first trial anywhere `strike`s right after its first evaluation (after that evaluation's checkpoint
    was saved and reported); the marker file named by FTSWEEP_FAIL_MARKER says "<what> at step N"."""

    what = ""

    def strike(self, step: int) -> None:
        raise NotImplementedError

    def run_trial(self, params, report=None, *args, **kwargs):
        marker = Path(os.environ["FTSWEEP_FAIL_MARKER"])

        def report_then_strike(step, metrics):
            stop = report(step, metrics)
            if not marker.exists():
                marker.write_text(f"{self.what} at step {step}\n")
                self.strike(step)
            return stop

        return super().run_trial(params, report_then_strike, *args, **kwargs)


class FailsOnceObjective(_OnceAfterFirstEvaluation):
    """A causal LM objective whose first trial anywhere raises right after its first evaluation."""

    what = "failed"

    def strike(self, step: int) -> None:
        raise RuntimeError(f"injected failure at step {step}")


class KilledOnceObjective(_OnceAfterFirstEvaluation):
    """A causal LM objective whose first trial anywhere has its worker process killed (SIGKILL, as the OOM
    killer or a lost node would) right after its first evaluation."""

    what = "killed"

    def strike(self, step: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
