"""The PEFT methods a space can search over, each with its own parameters.

A space picks the method with `peft_method` (fixed, or categorical to compare methods) and gives each
method's parameters under `when: {peft_method: NAME}`, so they exist only in that method's trials
(spaces/presets/peft-methods.yaml). Every method builds a PEFT config, and `save_pretrained` on the
trained model writes an `adapter_config.json` that `peft.PeftModel.from_pretrained` loads.

| method | PEFT config | its own parameters |
|---|---|---|
| lora | LoraConfig (`use_dora`, `use_rslora` flags: DoRA, rsLoRA) | lora_r, lora_alpha, lora_dropout, lora_bias |
| loha | LoHaConfig | loha_r, loha_alpha, loha_rank_dropout, loha_module_dropout |
| lokr | LoKrConfig | lokr_r, lokr_alpha, lokr_rank_dropout, lokr_module_dropout, lokr_decompose_both, lokr_decompose_factor |
| ia3 | IA3Config | (none: scaling vectors on PEFT's per-model modules, or `target_modules`) |
| prefix_tuning | PrefixTuningConfig | prefix_virtual_tokens, prefix_projection, prefix_hidden_size |
| prompt_tuning | PromptTuningConfig | prompt_virtual_tokens, prompt_init, prompt_init_text |
| adaption_prompt | AdaptionPromptConfig (LLaMA-Adapter) | adapter_len, adapter_layers |

`target_modules` is shared by the methods that wrap modules (lora, loha, lokr, ia3). PEFT has no
bottleneck adapter (Houlsby/Pfeiffer); its nearest equivalent, a small trainable module inserted
into each attention layer, is `adaption_prompt`, which PEFT implements for Llama, Mistral and GPT-2.

Adding a method: one `PeftMethod` registered in `PEFT_METHODS` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spaces import ConfigError, Registry, finite_values, when_values

PEFT_METHOD_KEY = "space.params.peft_method"
# Short names in spaces -> module names. Each resolves, in order, through PEFT's own per-architecture
# table (attention_qv: TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, 40 architectures), the
# model's own linear layers (AdapterTarget.linear_modules, read off an empty-weights copy), and last
# this table, for a model that is neither known nor inspected. 'all_linear' is PEFT's own shortcut.
TARGET_MODULE_NAMES: dict[str, dict[str, Any]] = {
    "attention_qv": {"default": ["q_proj", "v_proj"], "gpt2": ["c_attn"]},
    "attention": {"default": ["q_proj", "k_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "c_proj"]},
    "all_linear": {"default": "all-linear"},
}
# Leaf names of query and value projections across architectures (fused ones included), for a model
# PEFT's table does not know.
QUERY_VALUE_NAMES = ("q_proj", "v_proj", "query", "value", "q_lin", "v_lin", "query_proj", "value_proj", "q", "v",
                     "query_key_value", "qkv_proj", "c_attn", "Wqkv", "qkv", "W_pack")
FAN_IN_FAN_OUT_MODELS = ("gpt2",)


@dataclass(frozen=True)
class AdapterTarget:
    """What a PEFT config is built for: one task on one base model architecture.

    Example:
        >>> target = AdapterTarget(task_type="CAUSAL_LM", model_type="gpt2", model_path="models/tiny")
        >>> resolve_target_modules("attention_qv", target.model_type)
        ['c_attn']
    """

    task_type: str  # the task's PEFT task type, e.g. "CAUSAL_LM"
    model_type: str  # the base model's `config.model_type`, e.g. "llama"
    model_path: str  # its directory or hub id: prompt tuning's text init reads its tokenizer
    # The task's models receive prefix tuning's `past_key_values` through **kwargs (causal LMs do).
    prefix_in_kwargs: bool = False
    target_modules: Mapping[str, list[str]] = field(default_factory=dict)  # objective.args.target_modules
    source: str | None = None  # the sweep file, named in errors
    # {qualified name of each linear layer: whether it sits in an attention block} (`linear_modules`);
    # empty when the model was not inspected.
    linear_modules: Mapping[str, bool] = field(default_factory=dict)
    # Modules the checkpoint lacked, initialised at load (a classifier's head, DeBERTa's pooler): trained
    # and saved whole with the adapter (modules_to_save), so that the adapter alone restores them.
    new_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeftMethod:
    """One PEFT method: the config class it builds and which space parameters feed which fields.

    Example:
        >>> PEFT_METHODS.get("loha").params["loha_r"]
        'r'
    """

    name: str
    config_class: str  # the class in `peft`, e.g. "LoraConfig"
    params: Mapping[str, str]  # space parameter -> config field
    defaults: Mapping[str, Any] = field(default_factory=dict)  # config fields the space may leave out
    wraps_modules: bool = True  # takes `target_modules` (prompt-learning methods add tokens instead)
    # The `target_modules` choice when the space gives none (None: PEFT's own per-model default).
    default_targets: str | None = "attention_qv"
    # Set from other fields when the space leaves them out: {field: (source field, factor)}
    derived: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    prepare: Callable[[dict[str, Any], AdapterTarget], None] | None = None  # last touches to the config's kwargs
    # Why the method cannot train this target (None: it can), where PEFT would only fail in the first
    # forward pass, not in get_peft_model: (target, empty-weights model) -> reason.
    unfit: Callable[[AdapterTarget, Any], str | None] | None = None

    def peft_type(self) -> str:
        """PEFT's name for it (`peft_type` in adapter_config.json), e.g. 'ADAPTION_PROMPT'."""
        import peft

        stem = self.config_class.removesuffix("Config").upper()
        return next(t.value for t in peft.PeftType if t.value.replace("_", "") == stem)


def _ia3_modules(kwargs: dict[str, Any], target: AdapterTarget) -> None:
    # IA3 scales inputs of feed-forward modules and outputs of the others: PEFT needs to know which
    # targets are feed-forward. Without target_modules, PEFT's own per-model table decides both.
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as feedforward_table,
    )

    targets = kwargs.get("target_modules")
    if targets is None:
        return
    feedforward = feedforward_table.get(target.model_type, [])
    if isinstance(targets, str):  # "all-linear": PEFT resolves the modules; feed-forward ones from its table
        kwargs["feedforward_modules"] = feedforward
        return
    kwargs["feedforward_modules"] = [t for t in targets
                                     if any(t == f or t.endswith("." + f) or f.endswith(t) for f in feedforward)]


def _prefix_unfit(target: AdapterTarget, model) -> str | None:
    # PEFT hands the prefix to the model as `past_key_values`. For causal LMs it goes through **kwargs;
    # for the other tasks PEFT first looks for that argument in the model's (or its backbone's)
    # forward and raises in the first training step without it. transformers 5.24 renamed the
    # argument of Llama's forward to `cache`, so there prefix tuning cannot train a classifier.
    import inspect

    import transformers

    if target.prefix_in_kwargs:
        return None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for module in (model, backbone):
        if module is not None and "past_key_values" in inspect.signature(module.forward).parameters:
            return None
    return (f"PEFT's prefix tuning passes the prefix as `past_key_values`, which {type(model).__name__}.forward "
            f"does not take in transformers {transformers.__version__}")


def _prompt_init(kwargs: dict[str, Any], target: AdapterTarget) -> None:
    # Initialising the virtual tokens from a text needs the tokenizer: the base model's own.
    init = str(kwargs.get("prompt_tuning_init", "RANDOM")).upper()
    kwargs["prompt_tuning_init"] = init
    if init == "TEXT":
        kwargs.setdefault("prompt_tuning_init_text", "Answer the question.")
        kwargs["tokenizer_name_or_path"] = target.model_path


# The methods a space can search, by name (`peft_method`).
PEFT_METHODS: Registry[PeftMethod] = Registry(
    "PEFT method", key=PEFT_METHOD_KEY,
    hint="Fix: use one of these; adding one is a PeftMethod entry in objectives/adapters/peft_methods.py.")
for _method in (
    PeftMethod("lora", "LoraConfig",
               {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                "use_dora": "use_dora", "use_rslora": "use_rslora", "lora_bias": "bias"},
               defaults={"r": 8}, derived={"lora_alpha": ("r", 2)}),
    PeftMethod("loha", "LoHaConfig",
               {"loha_r": "r", "loha_alpha": "alpha", "loha_rank_dropout": "rank_dropout",
                "loha_module_dropout": "module_dropout"},
               defaults={"r": 8}, derived={"alpha": ("r", 1)}),
    PeftMethod("lokr", "LoKrConfig",
               {"lokr_r": "r", "lokr_alpha": "alpha", "lokr_rank_dropout": "rank_dropout",
                "lokr_module_dropout": "module_dropout", "lokr_decompose_both": "decompose_both",
                "lokr_decompose_factor": "decompose_factor"},
               defaults={"r": 8}, derived={"alpha": ("r", 1)}),
    PeftMethod("ia3", "IA3Config", {}, default_targets=None, prepare=_ia3_modules),
    PeftMethod("prefix_tuning", "PrefixTuningConfig",
               {"prefix_virtual_tokens": "num_virtual_tokens", "prefix_projection": "prefix_projection",
                "prefix_hidden_size": "encoder_hidden_size"},
               defaults={"num_virtual_tokens": 10}, wraps_modules=False, unfit=_prefix_unfit),
    PeftMethod("prompt_tuning", "PromptTuningConfig",
               {"prompt_virtual_tokens": "num_virtual_tokens", "prompt_init": "prompt_tuning_init",
                "prompt_init_text": "prompt_tuning_init_text"},
               defaults={"num_virtual_tokens": 10}, wraps_modules=False, prepare=_prompt_init),
    PeftMethod("adaption_prompt", "AdaptionPromptConfig",
               {"adapter_len": "adapter_len", "adapter_layers": "adapter_layers"},
               defaults={"adapter_len": 10, "adapter_layers": 1}, wraps_modules=False),
):
    PEFT_METHODS.register(_method.name, _method)
del _method


def methods() -> list[PeftMethod]:
    """Every registered method.

    Example:
        >>> sorted(m.name for m in methods() if not m.wraps_modules)
        ['adaption_prompt', 'prefix_tuning', 'prompt_tuning']
    """
    return [PEFT_METHODS.get(name) for name in PEFT_METHODS]


# Space parameters that belong to one method -> that method.
METHOD_OF_PARAM: dict[str, str] = {p: m.name for m in methods() for p in m.params}
SHARED_PARAMS = {"target_modules": "methods that wrap modules: " + ", ".join(
    m.name for m in methods() if m.wraps_modules)}


def accepted_params() -> dict[str, str]:
    """Every PEFT space parameter -> what it sets ('LoHaConfig.r'), for `Objective.accepted_params`."""
    accepted = {p: f"{m.config_class}.{f}" for m in methods() for p, f in m.params.items()}
    accepted["target_modules"] = "target_modules of LoRA, LoHa, LoKr, IA3"
    accepted["peft_method"] = "which PEFT method wraps the base model: " + ", ".join(PEFT_METHODS.names())
    return accepted


def get_method(name: Any, *, source: str | None = None) -> PeftMethod:
    """The method called `name`; a ConfigError saying whether the installed PEFT knows it at all."""
    import peft

    if isinstance(name, str) and name in PEFT_METHODS:
        method = PEFT_METHODS.get(name)
        if not hasattr(peft, method.config_class):
            raise ConfigError(f"the installed peft {peft.__version__} has no {method.config_class}",
                              source=source, key=PEFT_METHOD_KEY, value=name,
                              hint="Fix: pip install -U peft, or leave this method out of the space.")
        return method
    known_to_peft = isinstance(name, str) and name.upper() in {t.value for t in peft.PeftType}
    what = ("PEFT offers this method, but ftsweep does not search it (yet)" if known_to_peft
            else f"not a PEFT method known to the installed peft {peft.__version__}")
    raise ConfigError(what, source=source, key=PEFT_METHOD_KEY, value=name, allowed=PEFT_METHODS.names(),
                      hint=PEFT_METHODS.hint)


def searched_methods(space, *, source: str | None = None) -> list[str]:
    """The methods a space's `peft_method` can take (['lora'] when it has none), each checked."""
    if "peft_method" not in space:
        return ["lora"]
    param = space.params()["peft_method"]
    values = finite_values(param)
    if not values:
        raise ConfigError("peft_method must be fixed or categorical", source=source, key=PEFT_METHOD_KEY,
                          value=param.type, hint="Fix: {type: categorical, choices: [lora, ia3, ...]}")
    for value in values:
        get_method(value, source=source)
    return values


def check_method_params(space, *, source: str | None = None) -> list[str]:
    """Reject method parameters that could reach another method's trials; returns the searched methods.

    A parameter of one method (`loha_r`) in a space whose `peft_method` never takes that method is an
    error, and so is one without a `when` that limits it to its method when several are searched.
    """
    searched = searched_methods(space, source=source)
    params = space.params()
    for name, param in params.items():
        owner = METHOD_OF_PARAM.get(name)
        if owner is None and name in SHARED_PARAMS:
            wrapping = [m for m in searched if PEFT_METHODS.get(m).wraps_modules]
            if not wrapping:
                raise ConfigError(f"'{name}' is for {SHARED_PARAMS[name]}, and this space searches only "
                                  f"{', '.join(searched)}", source=source, key=f"space.params.{name}",
                                  hint=f"Fix: remove '{name}', or add a method that takes it.")
            continue
        if owner is None:
            continue
        key = f"space.params.{name}"
        if owner not in searched:
            raise ConfigError(f"'{name}' is a parameter of peft_method {owner}, but this space's peft_method "
                              f"is {' / '.join(map(str, searched))}", source=source, key=key,
                              hint=f"Fix: remove '{name}', or add {owner} to peft_method's choices.")
        gate = (param.when or {}).get("peft_method")
        if gate is None and param.type == "derived":
            # A derived value exists only when its inputs do: it is gated by theirs.
            gates = [(params[d].when or {}).get("peft_method") for d in param.depends_on() if d in params]
            gate = next((g for g in gates if g is not None), None)
        allowed = when_values(gate) if gate is not None else searched
        strays = [m for m in allowed if m != owner]
        if strays:
            raise ConfigError(f"'{name}' belongs to peft_method {owner} but would also be sampled for "
                              f"{', '.join(map(str, strays))}", source=source, key=key,
                              hint=f"Fix: add `when: {{peft_method: {owner}}}` to '{name}'.")
    return searched


def linear_modules(model) -> dict[str, bool]:
    """{qualified name: inside an attention block?} of every linear layer (nn.Linear, GPT-2's Conv1D)
    of `model` but its output head; "attention" is a module path naming it (attn, attention).

    Example:
        >>> from accelerate import init_empty_weights
        >>> from transformers import BertConfig, BertModel
        >>> with init_empty_weights():
        ...     bert = BertModel(BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8))
        >>> sorted(name for name, attention in linear_modules(bert).items() if attention)[:2]
        ['encoder.layer.0.attention.output.dense', 'encoder.layer.0.attention.self.key']
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    found, wrapped = {}, ()
    for name, module in model.named_modules():
        if wrapped and name.startswith(wrapped):
            continue  # inside an adapter layer (base_layer, lora_A...): the layer counts under its own name
        if isinstance(module, BaseTunerLayer):
            wrapped = (f"{name}.",)
        elif not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        if name.rsplit(".", 1)[-1] not in ("lm_head", "score", "classifier"):
            found[name] = any("attn" in part.lower() or "attention" in part.lower() for part in name.split(".")[:-1])
    return found


def resolve_target_modules(choice: Any, model_type: str, modules: Mapping[str, bool] | None = None) -> Any:
    """Module names of a `target_modules` choice: a short name ('attention_qv', 'attention',
    'all_linear') for this architecture, a list, or 'a,b'. `modules` (`linear_modules` of the model)
    lets a short name resolve for an architecture no table knows.

    Example:
        >>> resolve_target_modules("attention_qv", "bert"), resolve_target_modules("q_proj, v_proj", "gpt2")
        (['query', 'value'], ['q_proj', 'v_proj'])
    """
    if isinstance(choice, (list, tuple)):
        return list(choice)
    if choice == "attention_qv":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        if model_type in PEFT_DEFAULTS:
            return list(PEFT_DEFAULTS[model_type])
        leaves = sorted({n.rsplit(".", 1)[-1] for n, attention in (modules or {}).items() if attention}
                        & set(QUERY_VALUE_NAMES))
        if leaves:
            return leaves
    if choice == "attention" and modules:
        inside = [n for n, attention in modules.items() if attention]
        outside = {n.rsplit(".", 1)[-1] for n, attention in modules.items() if not attention}
        if inside:
            # By leaf name where that name is only used in attention blocks, else by full name (BERT's
            # attention.output.dense shares "dense" with the feed-forward layers).
            leaves = sorted({n.rsplit(".", 1)[-1] for n in inside if n.rsplit(".", 1)[-1] not in outside})
            return leaves + [n for n in inside if n.rsplit(".", 1)[-1] in outside]
    if choice in TARGET_MODULE_NAMES:
        table = TARGET_MODULE_NAMES[choice]
        return table.get(model_type, table["default"])
    return [m.strip() for m in str(choice).split(",") if m.strip()]


# PEFT trains a classifier's head whole (modules_to_save): every module whose name ends in one of these.
SEQ_CLS_HEAD_NAMES = ("classifier", "score")


def _outside_classifier_head(modules: Mapping[str, bool], whole: Sequence[str] = ()) -> list[str]:
    """`all_linear` for a classifier: every linear layer but those in its head. PEFT's "all-linear" leaves out
    only the module named `classifier`/`score`, so it would put LoRA layers into DistilBERT's `pre_classifier`,
    which modules_to_save then refuses to wrap ("cannot be applied to modules of type lora.Linear")."""
    return sorted(n for n in modules
                  if not _in_classifier_head(n) and not any(n == w or n.startswith(f"{w}.") for w in whole))


def _in_classifier_head(name: str) -> bool:
    return any(part.endswith(SEQ_CLS_HEAD_NAMES) for part in name.split("."))


def _matches(name: str, targets: list[str]) -> bool:
    """PEFT's rule for a list of target_modules: the full name, or its last dotted parts."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


def build_config(params: Mapping[str, Any], target: AdapterTarget):
    """The PEFT config a trial's params describe, for `target` (its task type and architecture).

    Example:
        >>> target = AdapterTarget(task_type="CAUSAL_LM", model_type="llama", model_path="models/tiny")
        >>> config = build_config({"peft_method": "lora", "lora_r": 4}, target)
        >>> config.r, config.lora_alpha, sorted(config.target_modules)
        (4, 8, ['q_proj', 'v_proj'])
    """
    import peft

    method = get_method(params.get("peft_method", "lora"), source=target.source)
    kwargs: dict[str, Any] = {f: params[p] for p, f in method.params.items() if p in params}
    for name, value in method.defaults.items():
        kwargs.setdefault(name, value)
    for name, (source, factor) in method.derived.items():
        if name not in kwargs and source in kwargs:
            kwargs[name] = type(kwargs[source])(kwargs[source] * factor)
    if method.wraps_modules:
        choice = params.get("target_modules")
        if choice is None and target.target_modules:
            # The sweep's own per-architecture table (objective.args.target_modules), else the method's default.
            choice = target.target_modules.get(target.model_type)
        if choice is None:
            choice = method.default_targets
        if choice is not None:
            kwargs["target_modules"] = resolve_target_modules(choice, target.model_type, target.linear_modules)
            if kwargs["target_modules"] == "all-linear" and target.task_type == "SEQ_CLS" and target.linear_modules:
                kwargs["target_modules"] = _outside_classifier_head(target.linear_modules, target.new_modules)
            wanted = kwargs["target_modules"]
            if isinstance(wanted, list) and target.linear_modules and not any(
                    _matches(n, wanted) for n in target.linear_modules):
                leaves = sorted({n.rsplit(".", 1)[-1] for n in target.linear_modules})
                raise ConfigError(
                    f"target_modules {choice!r} ({', '.join(wanted)}) matches no layer of this {target.model_type} "
                    f"model; its linear layers are named: {', '.join(leaves)}", source=target.source,
                    key="space.params.target_modules", value=str(choice),
                    hint="Fix: use attention_qv, attention or all_linear (resolved for this model), or name some of "
                    "these layers (objective.args.target_modules: {MODEL_TYPE: [names]}).")
    if method.prepare is not None:
        method.prepare(kwargs, target)
    config_cls = getattr(peft, method.config_class)
    # PEFT saves a classifier's head whole by itself; other new modules (DeBERTa's pooler) are added.
    new = [m for m in target.new_modules if not _in_classifier_head(m)]
    if new and "modules_to_save" in getattr(config_cls, "__dataclass_fields__", {}):
        kwargs.setdefault("modules_to_save", new)
    if "fan_in_fan_out" in getattr(config_cls, "__dataclass_fields__", {}) and method.wraps_modules \
            and target.model_type in FAN_IN_FAN_OUT_MODELS:
        kwargs.setdefault("fan_in_fan_out", True)  # GPT-2's Conv1D stores weights transposed (PEFT warns otherwise)
    try:
        return config_cls(task_type=target.task_type, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"PEFT refused the {method.name} settings ({str(exc).splitlines()[0]})",
                          source=target.source, key=PEFT_METHOD_KEY, value=method.name,
                          hint="Fix: change the method's parameters in the space.") from None


def representative_params(space, method: str) -> Iterable[dict[str, Any]]:
    """Param sets covering each categorical `target_modules` choice of `method` (for load-time checks)."""
    params = space.params()
    choices: list[Any] = [None]
    if "target_modules" in params and PEFT_METHODS.get(method).wraps_modules:
        choices = finite_values(params["target_modules"]) or [None]
    for choice in choices:
        yield {"peft_method": method, **({"target_modules": choice} if choice is not None else {})}
