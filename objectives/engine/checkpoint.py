"""Trial checkpoints: everything a trial needs to continue as if it had never been interrupted.

A checkpoint is the folder `transformers.Trainer` writes at a save step (`checkpoint-<step>`) —
for a PEFT model that is the adapter only, never the base weights — plus CHECKPOINT_STATE, a small
JSON file ftsweep adds last, when the folder is complete:

| file                                  | what it restores                                          |
|---------------------------------------|-----------------------------------------------------------|
| adapter_model.safetensors, adapter_config.json | the adapter weights (and trained `modules_to_save`) |
| optimizer.pt, scheduler.pt            | AdamW moments, the learning-rate schedule's position       |
| rng_state.pth                         | python, numpy and torch RNG states (dropout draws)         |
| trainer_state.json                    | the step, log history, early-stopping patience left        |
| ftsweep_checkpoint.json               | the step, the params, the training seconds so far, the backend's own fields |

`Trainer.train(resume_from_checkpoint=)` reads all of it and skips the batches the trial already
trained on (its sampler is seeded per epoch, so the data order is the uninterrupted one):
resumed, a trial's evaluations equal the uninterrupted run's (tests/objectives/engine/test_resume.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECKPOINT_STATE = "ftsweep_checkpoint.json"  # written last: a folder without it is incomplete
_FOLDER = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR + "-<step>"


def write_checkpoint_state(directory: str | Path, step: int, *, params: Mapping[str, Any] | None = None,
                           elapsed_s: float = 0.0, **about: Any) -> Path:
    """Mark a Trainer checkpoint folder complete: its step, the trial's params, the seconds the trial
    has trained so far, and `about` (JSON fields for the backend, e.g. which Ray trial wrote it).

    Example:
        >>> import tempfile
        >>> folder = write_checkpoint_state(tempfile.mkdtemp(), 20, params={"lora_r": 2}, elapsed_s=1.5)
        >>> checkpoint_state(folder)
        {'step': 20, 'elapsed_s': 1.5, 'params': {'lora_r': 2}}
    """
    directory = Path(directory)
    state = {"step": int(step), "elapsed_s": float(elapsed_s),
             **({"params": dict(params)} if params is not None else {}), **about}
    # Atomically: a kill while writing must leave no state file rather than a half-written one.
    partial = directory / f"{CHECKPOINT_STATE}.partial"
    partial.write_text(json.dumps(state))
    os.replace(partial, directory / CHECKPOINT_STATE)
    return directory


def checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """What `write_checkpoint_state` wrote: {"step", "elapsed_s", "params"?, and the `about` fields}."""
    directory = Path(directory)
    try:
        state = json.loads((directory / CHECKPOINT_STATE).read_text())
        int(state["step"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{directory} is not an ftsweep trial checkpoint ({exc})") from exc
    return state


def latest_checkpoint(trial_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in a trial's folder (None when there is none): a folder a kill
    interrupted while it was being written has no CHECKPOINT_STATE and is passed over.

    Example:
        >>> import tempfile
        >>> trial_dir = Path(tempfile.mkdtemp())
        >>> for step in (2, 4, 6):
        ...     (trial_dir / f"checkpoint-{step}").mkdir()
        >>> _ = write_checkpoint_state(trial_dir / "checkpoint-2", 2), write_checkpoint_state(trial_dir / "checkpoint-4", 4)
        >>> latest_checkpoint(trial_dir).name  # checkpoint-6 was never completed
        'checkpoint-4'
    """
    trial_dir = Path(trial_dir)
    if not trial_dir.is_dir():
        return None
    complete = [(int(m.group(1)), p) for p in trial_dir.iterdir()
                if (m := _FOLDER.match(p.name)) and (p / CHECKPOINT_STATE).is_file()]
    for _, folder in sorted(complete, reverse=True):
        try:
            checkpoint_state(folder)
        except ValueError:  # unreadable (written by an older, non-atomic writer and cut short): the one before
            continue
        return folder
    return None


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why the checkpoint in `directory` cannot be resumed from (a file cut short or overwritten: its tensors,
    optimizer state or JSON unreadable), or None when every file reads. Reads each file once: adapters and their
    optimizer states are small next to a base model.

    Example:
        >>> import tempfile
        >>> folder = write_checkpoint_state(tempfile.mkdtemp(), 4)
        >>> (folder / "adapter_model.safetensors").write_bytes(b"not tensors")
        11
        >>> checkpoint_problem(folder).startswith("adapter_model.safetensors:")
        True
    """
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    for path in sorted(directory.iterdir()):
        try:
            if path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.name in ("optimizer.pt", "scheduler.pt"):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever the reader says is the problem
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"{path.name}: {type(exc).__name__}: {first}"[:300]
    return None


def save_adapter(model, directory: str | Path) -> None:
    """The adapter's weights and config, as `PeftModel.save_pretrained` writes them, minus the model
    card it also renders (two thirds of a demo checkpoint's time, docs/benchmarks.md), which a trial
    checkpoint has no reader for."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory = Path(directory)
    name = model.active_adapter
    try:
        save_file(get_peft_model_state_dict(model, adapter_name=name), str(directory / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
    except RuntimeError:  # tensors sharing memory (e.g. tied embeddings among modules_to_save): PEFT's way
        model.save_pretrained(directory)
        return
    model.peft_config[name].save_pretrained(str(directory))


def check_fits(model, directory: str | Path) -> None:
    """Refuse a checkpoint whose adapter does not fit `model`'s (another rank, method or target
    modules): Trainer would load what matches and silently keep fresh weights for the rest."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    directory = Path(directory)
    try:
        with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as saved:
            shapes = {key: tuple(saved.get_slice(key).get_shape()) for key in saved.keys()}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory} is not an ftsweep trial checkpoint ({exc})") from exc
    expected = {key: tuple(t.shape) for key, t in get_peft_model_state_dict(model).items()}
    mismatched = sorted(set(expected) ^ set(shapes)) + sorted(k for k in set(expected) & set(shapes)
                                                              if expected[k] != shapes[k])
    if mismatched:
        raise ValueError(f"checkpoint {directory} does not fit this adapter (e.g. {mismatched[0]})")


def retune(optimizer, scheduler, args) -> None:
    """After a resume with changed hyperparameters (PBT's explore step), make the restored optimizer
    and schedule follow the new learning rate, schedule, warmup and weight decay from this step on.

    Trainer builds the schedule from the new arguments, then loading the checkpoint puts back the old
    base learning rates and the old decay in the optimizer's groups; the moments and the step stay.
    """
    for group in optimizer.param_groups:
        if group.get("weight_decay", 0.0):  # groups without decay (biases, norms) keep none
            group["weight_decay"] = args.weight_decay
        group["initial_lr"] = args.learning_rate
    if scheduler is None or not hasattr(scheduler, "lr_lambdas"):
        return
    scheduler.base_lrs = [args.learning_rate] * len(optimizer.param_groups)
    step = scheduler.last_epoch
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() (and Trainer's logged learning_rate) reads
