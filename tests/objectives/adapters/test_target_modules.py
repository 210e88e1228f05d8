"""Target modules for any architecture (objectives/adapters/peft_methods.py): the short names resolve through
PEFT's own table, else from the model's own layers, for causal LMs and encoders nobody here built —
tiny random-init models from configs (two layers, hidden 32, empty weights: nothing downloaded)."""

from __future__ import annotations

import pytest
from accelerate import init_empty_weights
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from objectives.adapters.peft_methods import linear_modules, resolve_target_modules

SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, vocab_size=128)
# model_type -> (config class name, extra config fields, auto class)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {"num_key_value_heads": 2}, "AutoModelForCausalLM"),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2}, "AutoModelForCausalLM"),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}, "AutoModelForCausalLM"),
    "gemma2": ("Gemma2Config", {"num_key_value_heads": 2, "head_dim": 8}, "AutoModelForCausalLM"),
    "phi3": ("Phi3Config", {"num_key_value_heads": 2, "pad_token_id": 0}, "AutoModelForCausalLM"),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_head": 4, "n_layer": 2}, "AutoModelForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", {}, "AutoModelForCausalLM"),
    "falcon": ("FalconConfig", {}, "AutoModelForCausalLM"),
    "bloom": ("BloomConfig", {"n_head": 4, "n_layer": 2}, "AutoModelForCausalLM"),
    "opt": ("OPTConfig", {"ffn_dim": 64, "word_embed_proj_dim": 32}, "AutoModelForCausalLM"),
    "bert": ("BertConfig", {}, "AutoModelForSequenceClassification"),
    "roberta": ("RobertaConfig", {}, "AutoModelForSequenceClassification"),
    "deberta-v2": ("DebertaV2Config", {}, "AutoModelForSequenceClassification"),
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_heads": 4, "n_layers": 2, "hidden_dim": 64},
                   "AutoModelForSequenceClassification"),
}


def _skeleton(model_type: str):
    import transformers

    config_cls, extra, auto = ARCHITECTURES[model_type]
    config = getattr(transformers, config_cls)(**{**SMALL, **extra})
    with init_empty_weights():
        return getattr(transformers, auto).from_config(config)


def _wrapped(model, targets) -> list[str]:
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
    return [name for name, m in peft_model.named_modules() if isinstance(m, BaseTunerLayer)]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("choice", ["attention_qv", "attention", "all_linear"])
def test_every_short_name_adapts_layers_of_every_architecture(model_type, choice):
    model = _skeleton(model_type)
    modules = linear_modules(model)
    targets = resolve_target_modules(choice, model.config.model_type, modules)
    wrapped = _wrapped(model, targets)
    layers = model.config.num_hidden_layers
    assert len(wrapped) >= layers, (targets, wrapped)  # at least one adapted layer per block
    if choice != "all_linear":  # the attention choices adapt attention layers only, never the feed-forward ones
        assert all(modules[name.removeprefix("base_model.model.")] for name in wrapped), wrapped
    if choice == "attention":  # every linear layer of every attention block
        assert len(wrapped) == sum(modules.values())


def test_an_architecture_no_table_knows_resolves_from_its_own_layers():
    model = _skeleton("bert")
    modules = linear_modules(model)
    # As if PEFT's table did not know BERT: the query/value projections are found by name in attention blocks.
    assert resolve_target_modules("attention_qv", "unknown-encoder", modules) == ["query", "value"]
    # BERT's attention output is `attention.output.dense`, and "dense" is a feed-forward name too: full names.
    attention = resolve_target_modules("attention", "unknown-encoder", modules)
    assert {"query", "key", "value"} <= set(attention)
    assert "bert.encoder.layer.0.attention.output.dense" in attention and "dense" not in attention
