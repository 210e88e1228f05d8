"""Dropout of the base model as space parameters: `attention_dropout` and `hidden_dropout`.

Where a model exposes them:

| param             | what is set                                                                  | e.g.                        |
|-------------------|------------------------------------------------------------------------------|-----------------------------|
| attention_dropout | float `attention_dropout` attributes (read at every forward) and the         | Llama, Qwen2, Mistral; GPT-2 `attn.attn_dropout`; BERT `attention.self.dropout` |
|                   | `nn.Dropout` of attention probabilities                                      |                             |
| hidden_dropout    | every other `nn.Dropout` of the base model: embeddings, residual, MLP, head   | GPT-2 `drop`, `resid_dropout`, `mlp.dropout`; BERT `hidden` dropouts |

Llama-family models have no hidden dropout at all (only `attention_dropout`): asking to search it
there is refused when the sweep launches, with the reason. The other regularizers are Trainer
arguments (`weight_decay`, `label_smoothing_factor`, `max_grad_norm`) or PEFT's (`lora_dropout`).

Values are set on the shared base model for one trial and put back after it.

Example:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    >>> sorted(exposed_dropouts(model))
    ['attention_dropout', 'hidden_dropout']
    >>> restore = apply_dropouts(model, {"hidden_dropout": 0.3})
    >>> model.transformer.drop.p
    0.3
    >>> restore(); model.transformer.drop.p
    0.1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

DROPOUT_PARAMS = ("attention_dropout", "hidden_dropout")
_ATTENTION_FLOAT_ATTRS = ("attention_dropout", "attn_dropout")  # floats attention modules read at forward


def _is_attention_dropout(name: str) -> bool:
    """An nn.Dropout on attention probabilities: GPT-2's `attn.attn_dropout`, BERT's `attention.self.dropout`."""
    leaf = name.rpartition(".")[2]
    return "attn" in leaf or "attention" in leaf or ".attention.self." in f".{name}"


def dropout_sites(model) -> dict[str, list[tuple[Any, str]]]:
    """Where each dropout param would be written: {param: [(module, attribute), ...]}."""
    import torch

    sites: dict[str, list[tuple[Any, str]]] = {name: [] for name in DROPOUT_PARAMS}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            sites["attention_dropout" if _is_attention_dropout(name) else "hidden_dropout"].append((module, "p"))
            continue
        for attr in _ATTENTION_FLOAT_ATTRS:
            if isinstance(getattr(module, attr, None), float):
                sites["attention_dropout"].append((module, attr))
    return sites


def exposed_dropouts(model) -> set[str]:
    """The dropout params this model has somewhere to apply."""
    return {name for name, where in dropout_sites(model).items() if where}


def apply_dropouts(model, params: Mapping[str, Any]) -> Callable[[], None]:
    """Set the trial's dropout params on `model`; returns a function that puts the old values back."""
    wanted = {name: float(params[name]) for name in DROPOUT_PARAMS if name in params}
    if not wanted:
        return lambda: None
    sites = dropout_sites(model)
    missing = next((name for name in wanted if not sites[name]), None)
    if missing:  # before anything is changed
        raise ValueError(f"this model exposes no {missing.replace('_', ' ')} to set")
    saved: list[tuple[Any, str, float]] = []
    for name in wanted:
        for module, attr in sites[name]:
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, wanted[name])

    def restore() -> None:
        for module, attr, value in saved:
            setattr(module, attr, value)

    return restore
