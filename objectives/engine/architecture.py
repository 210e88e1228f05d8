"""One base model's architecture, read from its config alone: what the launch-time checks need.

Nothing is loaded: `config.json` gives the `model_type`, and an empty-weights ("meta") skeleton of
the model is enough to apply each searched PEFT method, so a space that cannot train this model is
refused before any trial, cheaply at any model size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from spaces import ConfigError

from ..adapters import peft_methods, regularization
from ..settings import ModelConfig
from ..data.sources import from_pretrained
from ..tasks.base import Task


class Architecture:
    """A base model as the checks and PEFT configs see it.

    Args:
        model: the model's settings (`name_or_path` is this model's).
        path: where it loads from (`resolve_model_path`).
        task: the task it would be fine-tuned for.
        loaded: the model itself when it is loaded (its config is then read from it).
        state: the task's tokenized-data state (a classifier's number of classes), when there is one.
        target_modules: `objective.args.target_modules` (per model_type).
        source: the sweep file, named in errors.

    Example:
        >>> from objectives import DataConfig, ModelConfig, resolve_model_path
        >>> from objectives.tasks import TASKS
        >>> model = ModelConfig(name_or_path="bundled:tiny-support-gpt2")
        >>> arch = Architecture(model, resolve_model_path(model), TASKS.get("causal_lm")(DataConfig(source="d.jsonl")))
        >>> arch.model_type(), sorted(arch.peft_config({"peft_method": "lora"}).target_modules)
        ('gpt2', ['c_attn'])
    """

    def __init__(self, model: ModelConfig, path: str, task: Task, *, loaded: Any = None, state: Any = None,
                 target_modules: Mapping[str, list[str]] | None = None, source: str | None = None) -> None:
        self.model = model
        self.path = path
        self.task = task
        self.loaded = loaded
        self.state = state
        self.target_modules = dict(target_modules or {})
        self.source = source

    def config_file(self):
        """The model's `transformers` config, read alone."""
        from transformers import AutoConfig

        return from_pretrained(AutoConfig.from_pretrained, self.path, config=self.model, source=self.source)

    def model_type(self) -> str:
        """`config.model_type`, from the loaded model when there is one."""
        config = self.loaded.config if self.loaded is not None else self.config_file()
        return getattr(config, "model_type", "default")

    def skeleton(self, config=None):
        """The architecture with empty (meta) weights, built from its config alone."""
        from accelerate import init_empty_weights

        with init_empty_weights():
            return self.task.skeleton_model(config if config is not None else self.config_file(), self.state)

    @functools.cached_property
    def _linear_modules(self) -> dict[str, bool]:
        # Read once per architecture: the loaded model when there is one, else an empty-weights copy.
        return peft_methods.linear_modules(self.loaded if self.loaded is not None else self.skeleton())

    def quantized_layers(self) -> dict[tuple[int, int], list[str]]:
        """{(in_features, out_features): names} of the layers `model.quantization` turns into bitsandbytes
        layers: every linear layer (nn.Linear, GPT-2's Conv1D) but those transformers keeps in full precision
        (its own `get_keys_to_not_convert`: the output head, tied and last weights)."""
        import torch
        from transformers.pytorch_utils import Conv1D
        from transformers.quantizers.base import get_keys_to_not_convert

        model = self.skeleton()
        kept = get_keys_to_not_convert(model)
        layers: dict[tuple[int, int], list[str]] = {}
        for name, module in model.named_modules():
            if isinstance(module, Conv1D):
                shape = tuple(module.weight.shape)  # Conv1D stores (in_features, out_features)
            elif type(module) is torch.nn.Linear:
                shape = (module.in_features, module.out_features)
            else:
                continue
            if not any(name == key or name.startswith(f"{key}.") or name.endswith(key) for key in kept):
                layers.setdefault(shape, []).append(name)
        return layers

    def adapter_target(self) -> peft_methods.AdapterTarget:
        return peft_methods.AdapterTarget(
            task_type=self.task.peft_task_type, model_type=self.model_type(), model_path=self.path,
            prefix_in_kwargs=self.task.prefix_in_kwargs, target_modules=self.target_modules, source=self.source,
            linear_modules=self._linear_modules, new_modules=tuple(getattr(self.loaded, "ftsweep_new_modules", ())))

    def peft_config(self, params: Mapping[str, Any]):
        """The PEFT config (LoRA, LoHa, IA3, prefix tuning...) a trial's params describe for this model."""
        return peft_methods.build_config(params, self.adapter_target())

    def check_dropouts(self, space) -> None:
        """Refuse `attention_dropout` / `hidden_dropout` on a model that has no such dropout to set."""
        asked = [name for name in regularization.DROPOUT_PARAMS if name in space.names]
        if not asked:
            return
        exposed = regularization.exposed_dropouts(self.skeleton())
        for name in asked:
            if name not in exposed:
                raise ConfigError(
                    f"this {self.model_type()} model exposes no {name.replace('_', ' ')} (it has "
                    f"{', '.join(sorted(exposed)) or 'no dropout at all'})", source=self.source,
                    key=f"space.params.{name}", value=name,
                    hint="Fix: remove it from the space; regularize with lora_dropout, weight_decay or "
                    "label_smoothing_factor instead.",
                )

    def check_peft_methods(self, space) -> None:
        """Refuse, before any trial, a method or target module that PEFT rejects for this model and task.

        Each searched method (with each `target_modules` choice) is applied to an empty-weights copy
        of the model built from its config alone.
        """
        import peft

        config = self.config_file()  # once: each check below needs a fresh skeleton of it
        target = self.adapter_target()
        for method in peft_methods.searched_methods(space, source=self.source):
            unfit = peft_methods.PEFT_METHODS.get(method).unfit
            reason = unfit(target, self.skeleton(config)) if unfit is not None else None
            if reason:
                raise ConfigError(
                    f"peft_method {method} cannot train this {target.model_type} model for the {self.task.name} "
                    f"task: {reason}", source=self.source, key=peft_methods.PEFT_METHOD_KEY, value=method,
                    hint="Fix: leave this method out of the space, or use a model / transformers version it fits.",
                )
            for params in peft_methods.representative_params(space, method):
                try:
                    peft.get_peft_model(self.skeleton(config), peft_methods.build_config(params, target))
                except ConfigError:
                    raise  # already says what is wrong (e.g. a target module the model lacks, with those it has)
                except (ValueError, TypeError, KeyError, NotImplementedError, AttributeError) as exc:
                    what = ", ".join(f"{k}={v}" for k, v in params.items())
                    raise ConfigError(
                        f"PEFT rejects {what} for this {target.model_type} model and the {self.task.name} task "
                        f"({' '.join(str(exc).split())[:300]})",
                        source=self.source, key=peft_methods.PEFT_METHOD_KEY, value=method,
                        hint="Fix: leave this method (or target_modules choice) out of the space, or pick a "
                        "model it supports.",
                    ) from None
