"""Trial checkpoints: a trial's adapter (never the base model), the step it is from and its params.

What a backend saves at an evaluation so a restarted trial can resume (`run_trial(resume_from=)`):
PEFT's adapter files plus CHECKPOINT_STATE, a small JSON file beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECKPOINT_STATE = "ftsweep_checkpoint.json"  # next to the adapter files: the step they are from


def save_checkpoint(model, step: int, directory: str | Path, *, params: Mapping[str, Any] | None = None,
                    **about: Any) -> Path:
    """Save a PEFT model's adapter, its step and the params it was trained with; `about` adds JSON
    fields for the backend (e.g. who wrote it).

    Example:
        >>> import tempfile
        >>> from peft import LoraConfig, get_peft_model
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = get_peft_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)),
        ...                        LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
        >>> saved = save_checkpoint(model, 20, tempfile.mkdtemp(), params={"lora_r": 2})
        >>> checkpoint_state(saved)
        {'step': 20, 'params': {'lora_r': 2}}
        >>> load_checkpoint(model, saved)
        20
    """
    directory = Path(directory)
    model.save_pretrained(directory)
    state = {"step": int(step), **({"params": dict(params)} if params is not None else {}), **about}
    (directory / CHECKPOINT_STATE).write_text(json.dumps(state))
    return directory


def checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """What `save_checkpoint` wrote beside the adapter: {"step", "params"?, and its `about` fields}."""
    directory = Path(directory)
    try:
        state = json.loads((directory / CHECKPOINT_STATE).read_text())
        int(state["step"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{directory} is not an ftsweep trial checkpoint ({exc})") from exc
    return state


def load_checkpoint(model, directory: str | Path) -> int:
    """Load the adapter weights `save_checkpoint` wrote into `model`; returns the step they are from."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    step = int(checkpoint_state(directory)["step"])
    try:
        weights = load_file(directory / "adapter_model.safetensors")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory} is not an ftsweep trial checkpoint ({exc})") from exc
    expected = get_peft_model_state_dict(model)
    mismatched = sorted(set(expected) ^ set(weights)) + sorted(
        k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if mismatched:
        # A shape-changing param (rank, target modules, method) differs: these weights do not fit.
        raise ValueError(f"checkpoint {directory} does not fit this adapter (e.g. {mismatched[0]})")
    set_peft_model_state_dict(model, weights)
    return step
