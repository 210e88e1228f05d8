"""An objective that fails once, for Ray's retry tests. Importable by Ray workers as
`tests.search.ray_objectives:FailsOnceObjective` (Ray puts the driver's working directory, the repo
root, on every worker's path); the marker file named by FTSWEEP_FAIL_MARKER says it already failed."""

from __future__ import annotations

import os
from pathlib import Path

from objectives import get_objective

CausalLMObjective = get_objective("causal_lm")  # the objective class of the causal_lm task


class FailsOnceObjective(CausalLMObjective):
    """A causal LM objective whose first trial anywhere raises right after its first evaluation
    (after that evaluation's checkpoint was saved and reported)."""

    def run_trial(self, params, report=None, *args, **kwargs):
        marker = Path(os.environ["FTSWEEP_FAIL_MARKER"])

        def report_then_fail(step, metrics):
            stop = report(step, metrics)
            if not marker.exists():
                marker.write_text(f"failed at step {step}\n")
                raise RuntimeError(f"injected failure at step {step}")
            return stop

        return super().run_trial(params, report_then_fail, *args, **kwargs)


class KilledOnceObjective(CausalLMObjective):
    """A causal LM objective whose first trial anywhere has its worker process killed (SIGKILL, as the OOM
    killer or a lost node would) right after its first evaluation was checkpointed and reported."""

    def run_trial(self, params, report=None, *args, **kwargs):
        import signal

        marker = Path(os.environ["FTSWEEP_FAIL_MARKER"])

        def report_then_die(step, metrics):
            stop = report(step, metrics)
            if not marker.exists():
                marker.write_text(f"killed at step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            return stop

        return super().run_trial(params, report_then_die, *args, **kwargs)
