"""Objectives whose ranks misbehave in a distributed trial (objectives/engine/distributed.py): the real causal LM
fine-tune, each rank told apart by the RANK its process group gave it. Importable by the rank processes."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import torch

from objectives import TrialOptions, get_objective

CausalLMObjective = get_objective("causal_lm")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class DisagreeingCheckpoints(CausalLMObjective):
    """Rank 0 would checkpoint at every evaluation, rank 1 at none: what two ranks' own clocks can decide about
    `checkpoint_interval_s` when an evaluation falls near the interval's end."""

    def run_trial(self, params, report=None, options=None):
        options = replace(options or TrialOptions(), checkpoint_interval_s=1e9 if _rank() else 0.0)
        return super().run_trial(params, report, options)


class Rank1WaitsForAMessage(CausalLMObjective):
    """At its first evaluation, rank 1 waits for a tensor rank 0 never sends, while rank 0 goes on to the
    evaluation's gather: the two wait on different collectives for ever."""

    def run_trial(self, params, *args, **kwargs):
        def wait(module, inputs):
            if not module.training and _rank() == 1:
                torch.distributed.recv(torch.zeros(1), src=0)

        handle = self.base_model.register_forward_pre_hook(wait)
        try:
            return super().run_trial(params, *args, **kwargs)
        finally:
            handle.remove()


SLOW_STEP_S = 6.0


class Rank1SlowStep(CausalLMObjective):
    """Rank 1 spends SLOW_STEP_S seconds in its third training forward, waiting on nothing of the group's (a slow
    read of data, say), while rank 0 waits for it in the step's all-reduce: slow, not deadlocked."""

    def run_trial(self, params, *args, **kwargs):
        calls = []

        def slow(module, inputs):
            if module.training and _rank() == 1:
                calls.append(1)
                if len(calls) == 3:
                    time.sleep(SLOW_STEP_S)

        handle = self.base_model.register_forward_pre_hook(slow)
        try:
            return super().run_trial(params, *args, **kwargs)
        finally:
            handle.remove()
