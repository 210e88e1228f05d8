"""Objectives with injected faults, for the retry-policy tests: the real causal LM fine-tune, with a
forward hook on the real model that fails the way a real trial fails. Used in sweep files as
`objective: tests.search.fault_objectives:CLASS` (the repo root is on sys.path under pytest)."""

from __future__ import annotations

import torch

from objectives import get_objective

CausalLMObjective = get_objective("causal_lm")  # the objective class of the causal_lm task

OOM_ABOVE_BATCH = 2  # training batches larger than this "do not fit in memory"


class OutOfMemoryAboveBatch2(CausalLMObjective):
    """Training forward passes on more than OOM_ABOVE_BATCH examples raise torch's OutOfMemoryError,
    as CUDA does when a batch does not fit; smaller batches train normally."""

    def run_trial(self, params, *args, **kwargs):
        def check(module, inputs, kw):
            ids = kw.get("input_ids", inputs[0] if inputs else None)
            if module.training and ids is not None and ids.shape[0] > OOM_ABOVE_BATCH:
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected: batch of {ids.shape[0]})")

        handle = self.base_model.register_forward_pre_hook(check, with_kwargs=True)
        try:
            return super().run_trial(params, *args, **kwargs)
        finally:
            handle.remove()


class NaNLoss(CausalLMObjective):
    """The LM head's output turns NaN in training, so the real training loss is NaN."""

    def run_trial(self, params, *args, **kwargs):
        def poison(module, inputs, output):
            return output * float("nan") if module.training else output

        handle = self.base_model.get_output_embeddings().register_forward_hook(poison)
        try:
            return super().run_trial(params, *args, **kwargs)
        finally:
            handle.remove()


class RaisesValueError(CausalLMObjective):
    """Every trial raises a plain exception before training."""

    def run_trial(self, params, *args, **kwargs):
        raise ValueError("injected failure: the collator met an unknown column 'foo'")


PACK_ROWS_THAT_FIT = 8  # a pack's training forward over more rows than this "does not fit in memory"


class PackOutOfMemoryAbove8Rows(CausalLMObjective):
    """Training forward passes over more than PACK_ROWS_THAT_FIT rows raise torch's OutOfMemoryError: with
    batch 4, a pack of 4 slots (16 rows) does not fit, one of 2 (8 rows) does."""

    def setup(self) -> None:
        super().setup()

        def check(module, inputs, kw):
            ids = kw.get("input_ids", inputs[0] if inputs else None)
            if module.training and ids is not None and ids.shape[0] > PACK_ROWS_THAT_FIT:
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {ids.shape[0]} rows)")

        self.base_model.register_forward_pre_hook(check, with_kwargs=True)


class NaNInSecondSlot(CausalLMObjective):
    """In a pack's training forward, the LM head's output for the second slot's rows turns NaN, so that
    slot's real training loss is NaN and the first slot's is untouched."""

    def setup(self) -> None:
        super().setup()
        batch = self.budget.batch_size

        def poison(module, inputs, output):
            if module.training and output.shape[0] >= 2 * batch:
                output = output.clone()
                output[batch:2 * batch] = float("nan")
            return output

        self.base_model.get_output_embeddings().register_forward_hook(poison)


class RankOneDiesOnce(CausalLMObjective):
    """In a distributed trial, rank 1 is SIGKILLed at its trial's start the first time (a marker file in the
    sweep's output folder remembers it), as when a node is lost; every later trial trains normally."""

    def run_trial(self, params, *args, **kwargs):
        import os
        import signal
        from pathlib import Path

        marker = Path(self.output_dir) / "rank-1-died"
        if os.environ.get("RANK") == "1" and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run_trial(params, *args, **kwargs)


class RankOneDiesOnceAfterStep4(CausalLMObjective):
    """In a distributed trial, rank 1 is SIGKILLed the first time 5 s after its step-4 evaluation was reported
    (with its checkpoint), as when a node is lost between evaluations: the re-run must go on from there. (The
    5 s let Ray Train, which polls its workers every 2 s, register that report first, as it has the time to
    between the evaluations of a real trial.)"""

    def run_trial(self, params, report=None, *args, **kwargs):
        import os
        import signal
        import time
        from pathlib import Path

        marker = Path(self.output_dir) / "rank-1-died"

        def report_then_die(step, metrics):
            decision = report(step, metrics)
            if step == 4 and os.environ.get("RANK") == "1" and not marker.exists():
                time.sleep(5)
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return decision

        return super().run_trial(params, report_then_die if report is not None else None, *args, **kwargs)


class InfinitePerplexity(CausalLMObjective):
    """Every evaluation's perplexity is infinite (as exp of a loss above ~709 is) while the loss stays finite:
    nothing diverges in training, only the final value of a sweep on `metric: perplexity` is not a number."""

    def clean_metrics(self, raw):
        metrics = super().clean_metrics(raw)
        if "perplexity" in metrics:
            metrics["perplexity"] = float("inf")
        return metrics


STORAGE_PASSWORD = "hunter2-do-not-print"  # noqa: S105 (a test's fake password, never a real one)


class RaisesWithStoragePassword(CausalLMObjective):
    """Training forward passes raise an error whose text quotes a storage URL with its password, as a database
    driver's error may: every backend must store, log and track it scrubbed."""

    def setup(self) -> None:
        super().setup()

        def fail(module, inputs, kw):
            if module.training:
                raise RuntimeError(f"could not reach postgresql://sweeper:{STORAGE_PASSWORD}@db.internal:5432/optuna")

        self.base_model.register_forward_pre_hook(fail, with_kwargs=True)


class RaisesForAllLinear(CausalLMObjective):
    """A trial with target_modules all_linear raises in its set-up (a failure no launch check can foresee);
    the others train normally."""

    def run_trial(self, params, *args, **kwargs):
        if params.get("target_modules") == "all_linear":
            raise ValueError("injected failure: this trial's target_modules (all_linear) broke its set-up")
        return super().run_trial(params, *args, **kwargs)
