"""An objective that times its own trials, for the backend contract's duration test: the real causal
LM fine-tune, whose `run_trial` appends {"params", "seconds"} (wall time of that call, measured in
the process that ran it) to `timings.jsonl` in the sweep's output folder. Used in sweep files as
`objective: tests.search.timed_objectives:TimedCausalLM` (importable by Ray workers too)."""

from __future__ import annotations

import json
import time

from objectives import get_objective

CausalLMObjective = get_objective("causal_lm")  # the objective class of the causal_lm task
TIMINGS = "timings.jsonl"


class TimedCausalLM(CausalLMObjective):
    def run_trial(self, params, *args, **kwargs):
        started = time.monotonic()
        try:
            return super().run_trial(params, *args, **kwargs)
        finally:
            with open(self.output_dir / TIMINGS, "a") as timings:
                timings.write(json.dumps({"params": dict(params), "seconds": time.monotonic() - started}) + "\n")


def measured_seconds(output_dir) -> dict[str, float]:
    """{params as sorted JSON: seconds of all the run_trial calls with those params together}."""
    total: dict[str, float] = {}
    for line in (output_dir / TIMINGS).read_text().splitlines():
        entry = json.loads(line)
        key = json.dumps(entry["params"], sort_keys=True)
        total[key] = total.get(key, 0.0) + entry["seconds"]
    return total
