"""The memory and speed knobs LLM fine-tuners use: gradient checkpointing, padding-free batches, sequence packing
and QLoRA (a 4-bit NF4 base through bitsandbytes, which runs on CPU), each a real fine-tune of the tiny model."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from objectives import ModelConfig, QuantizationSettings, TrainBudget, get_objective
from objectives.data.conversations import IGNORE_INDEX
from objectives.tasks.causal_lm import PositionsOnly, check_padding_free
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import load_existing_study
from search.sweep import load_sweep
from spaces import ConfigError
from tests.objectives.task_examples import MODEL, TASK_DATA

BUDGET = dict(max_steps=6, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
PARAMS = {"learning_rate": 5e-3, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "attention",
          "peft_method": "lora", "weight_decay": 0.01}


def _objective(model: ModelConfig = MODEL, **budget):
    objective = get_objective("causal_lm")(model, TASK_DATA["causal_lm"], TrainBudget(**{**BUDGET, **budget}), seed=0)
    objective.setup()
    return objective


def _history(objective, params=PARAMS):
    seen = []
    final = objective.run_trial(params, report=lambda step, m: seen.append((step, m["eval_loss"])) or False)
    return seen, final


@pytest.fixture(scope="module")
def padded():
    return _history(_objective())


def test_gradient_checkpointing_recomputes_activations_and_changes_no_result(padded):
    objective = _objective(gradient_checkpointing=True)
    # A module inside a decoder layer: transformers checkpoints the layer's forward, so what it calls runs again.
    inner = objective.base_model.model.layers[0].self_attn
    calls = []
    hook = inner.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    try:
        history, _ = _history(objective)
    finally:
        hook.remove()
    assert [s for s, _ in history] == [s for s, _ in padded[0]]
    assert [v for _, v in history] == pytest.approx([v for _, v in padded[0]], rel=1e-5)
    # Each training step runs it twice with grad (forward, then its recomputation in backward); evaluations
    # once without.
    assert calls.count(True) == 2 * BUDGET["max_steps"]
    # The shared base model is handed back as found: no checkpointing, no input-grad hook, for the next trial.
    base = objective.base_model
    assert not base.is_activation_checkpointing and not getattr(base, "_require_grads_hooks", None)


def test_padding_free_batches_give_the_padded_results():
    # Without dropout: its masks are drawn over the batch's shape, which flattening changes.
    params = {**PARAMS, "lora_dropout": 0.0}
    padded, padded_final = _history(_objective(), params)
    history, final = _history(_objective(padding_free=True), params)
    assert [v for _, v in history] == pytest.approx([v for _, v in padded], rel=1e-5)
    assert final["train_loss"] == pytest.approx(padded_final["train_loss"], rel=1e-5)


def test_a_packed_row_is_its_examples_side_by_side():
    """Packing: rows of at most max_seq_length, no example split, and a packed row's loss is its examples'
    token-weighted loss computed one by one (no attention across them)."""
    objective = _objective(packing=True)
    data = objective.tokenized_data.train
    packed, _, collator = objective.training_data({})
    assert len(packed) < len(data) and max(len(ids) for ids in packed["input_ids"]) <= BUDGET["max_seq_length"]
    assert sum(map(len, packed["input_ids"])) == sum(map(len, data["input_ids"]))
    assert sorted(n for lengths in packed["seq_lengths"] for n in lengths) == sorted(map(len, data["input_ids"]))
    model = objective.base_model
    row = next(r for r in packed if len(r["seq_lengths"]) >= 2)
    batch = collator([row])
    assert batch["position_ids"][0].tolist() == [p for n in row["seq_lengths"] for p in range(n)]
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start, total, count = 0, 0.0, 0
        for n in row["seq_lengths"]:
            ids, labels = row["input_ids"][start:start + n], row["labels"][start:start + n]
            alone = model(torch.tensor([ids])).logits[0]
            assert torch.allclose(together[start:start + n], alone, atol=1e-5)
            targets = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(alone[:-1], targets, ignore_index=IGNORE_INDEX,
                                                       reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
            start += n
        packed_loss = model(**{k: v for k, v in batch.items()}).loss.item()
    assert packed_loss == pytest.approx(total / count, rel=1e-5)


def test_packed_rows_of_a_batch_stay_apart_and_their_padding_attends_to_nothing():
    objective = _objective(packing=True)
    packed, _, collator = objective.training_data({})
    by_length = sorted(packed, key=lambda r: len(r["input_ids"]))
    rows = [by_length[-1], by_length[0]]  # the longest and the shortest packed row: the short one is padded
    assert len(rows[1]["input_ids"]) < len(rows[0]["input_ids"])
    batch = collator(rows)
    assert "attention_mask" not in batch and batch["use_cache"] is False and batch["input_ids"].shape[0] == len(rows)
    with torch.no_grad():
        together = objective.base_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, row in enumerate(rows):
            start = 0
            for n in row["seq_lengths"]:
                alone = objective.base_model(torch.tensor([row["input_ids"][start:start + n]])).logits[0]
                assert torch.allclose(together[i, start:start + n], alone, atol=1e-5)
                start += n
            assert (batch["labels"][i, start:] == IGNORE_INDEX).all()  # the row's padding


@pytest.mark.parametrize("flat", [False, True], ids=["packed rows", "packed and flattened"])
def test_a_packed_trial_trains_on_fewer_longer_rows(flat):
    history, final = _history(_objective(packing=True, padding_free=flat))
    assert [s for s, _ in history] == [2, 4, 6] and history[-1][1] < history[0][1]
    assert 0 < final["train_loss"] < 20


@pytest.mark.parametrize("model_type", ["bloom", "opt"])
def test_a_model_whose_attention_ignores_packed_positions_is_refused(model_type):
    import transformers

    from tests.objectives.adapters.test_target_modules import ARCHITECTURES, SMALL

    config_cls, extra, _ = ARCHITECTURES[model_type]
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_cls)(**{**SMALL, **extra}))
    with pytest.raises(ConfigError, match=f"{model_type} models cannot train on padding-free batches") as err:
        check_padding_free(model, key="budget.packing")
    assert err.value.key == "budget.packing" and "padded batches" in err.value.hint


def test_packing_a_classifier_is_refused():
    objective = get_objective("sequence_classification")(MODEL, TASK_DATA["sequence_classification"],
                                                          TrainBudget(**BUDGET, packing=True))
    from spaces import get_preset

    with pytest.raises(ConfigError, match="budget.packing is for causal_lm"):
        objective.check_space(get_preset("lora-quick"))


def test_the_padding_free_collator_turns_the_cache_off():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = PositionsOnly(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["use_cache"] is False and batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


# ---------------------------------------------------------------------------------- QLoRA

QLORA = ModelConfig(name_or_path="bundled:tiny-support-lm", quantization=QuantizationSettings(bits=4))


def test_a_qlora_trial_trains_lora_on_a_4bit_nf4_base():
    import bitsandbytes as bnb

    objective = _objective(QLORA)
    attention = objective.base_model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, bnb.nn.Linear4bit) and attention.q_proj.weight.quant_type == "nf4"
    full = _objective().base_model.get_memory_footprint()
    assert objective.base_model.get_memory_footprint() < full
    history, final = _history(objective)
    assert history[-1][1] < history[0][1] and 0 < final["train_loss"] < 20
    # The base is handed back 4-bit and adapter-free for the next trial.
    assert isinstance(attention.q_proj, bnb.nn.Linear4bit)


def test_a_qlora_sweep_is_exported_with_its_quantization_and_reproduced_by_train(write_sweep, tmp_path, capsys):
    path = write_sweep(model={"name_or_path": "bundled:tiny-support-lm", "quantization": {"bits": 4}})
    assert main(["launch", str(path)]) == 0
    sweep = load_sweep(path)
    best = load_existing_study(sweep.study_name, sweep.storage_url).best_trial
    assert main(["export", str(path), "--out", str(tmp_path / "winner")]) == 0
    winner = yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())
    assert winner["model"]["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                               "compute_dtype": "auto"}
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'trained'}"]) == 0
    record = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert record["reproduction"]["comparable"] and record["reproduction"]["relative_error"] < 0.01, record
    assert record["metrics"]["eval_loss"] == pytest.approx(best.value, rel=0.01)


def test_a_qlora_trial_keeps_its_layers_trainable_where_bitsandbytes_would_repack_them_for_inference(monkeypatch):
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for its inference kernel at the first no-grad
    eval-mode forward (which needs out_features % 32 == 0: the tiny model's 172-wide MLP is not) and trains on through
    that kernel, which has no backward. This machine may lack the instruction set: the layers are told they have it
    (bitsandbytes reads `has_avx512bf16` when each layer is built), and the repacking is Python, so it runs here."""
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    objective = _objective(QLORA)
    layers = [m for m in objective.base_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any(layer.out_features % 32 for layer in layers)
    history, final = _history(objective)  # train, evaluate, train on: three evaluations
    assert [step for step, _ in history] == [2, 4, 6] and history[-1][1] < history[0][1]
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)


def test_bitsandbytes_kernel_hub_warning_is_not_shown_and_its_other_warnings_are(caplog):
    """bitsandbytes 0.50 on an AVX512-BF16 CPU warns at import (PEFT imports it, quantized sweep or not) when the
    Hub kernel it would fetch is out of reach; ftsweep never runs that kernel. The record as bitsandbytes logs it."""
    import logging

    import objectives  # noqa: F401 - installs the filter, before PEFT imports bitsandbytes

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                       "`pip install kernels` and the kernels >= 0.11.1", OSError("Hugging Face Hub is in offline mode"))
        logger.warning("Register pytorch bitsandbytes kernels for XPU")
    assert [record.getMessage() for record in caplog.records] == ["Register pytorch bitsandbytes kernels for XPU"]


def test_the_launch_lists_the_models_quantized_layers_by_shape():
    objective = get_objective("causal_lm")(QLORA, TASK_DATA["causal_lm"], TrainBudget(**BUDGET), seed=0)
    layers = objective.architecture().quantized_layers()
    assert sorted(layers) == [(64, 32), (64, 64), (64, 172), (172, 64)]  # k/v, q/o, gate/up, down
    assert layers[(172, 64)] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert not any("lm_head" in name for names in layers.values() for name in names)  # kept full precision


def test_a_layer_shape_the_quantized_kernel_cannot_take_is_refused_at_launch(write_sweep, monkeypatch, capsys):
    """Where a kernel cannot take a layer's shape (bitsandbytes 0.50's CPU inference repacking asserts on an output
    width not divisible by 32), the launch says which layers and stops before any trial: simulated here by a
    4-bit layer whose eval-mode forward raises that assertion for such widths."""
    import bitsandbytes as bnb

    forward = bnb.nn.Linear4bit.forward

    def strict_kernel(self, x):
        if not self.training and self.out_features % 32:
            raise AssertionError("N must be divisible by block_n")
        return forward(self, x)

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", strict_kernel)
    path = write_sweep(model={"name_or_path": "bundled:tiny-support-lm", "quantization": {"bits": 4}})
    assert main(["launch", str(path)]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert "model.quantization: bitsandbytes" in error and "4-bit 64->172 layers on cpu" in error, error
    assert "model.layers.0.mlp.gate_proj" in error and "N must be divisible by block_n" in error
    assert not (path.parent / "runs").exists()  # nothing was written


def test_qlora_where_bitsandbytes_is_missing_is_refused_with_the_install_line(write_sweep, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` meets where it is absent
    path = write_sweep(model={"name_or_path": "bundled:tiny-support-lm", "quantization": {"bits": 4}})
    assert main(["launch", str(path)]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert "model.quantization: quantizing the base model needs bitsandbytes" in error
    assert "pip install 'ftsweep[qlora]'" in error


def test_an_unknown_quantization_setting_is_refused():
    with pytest.raises(ValueError, match="bits"):
        ModelConfig(name_or_path="m", quantization={"bits": 3})
    with pytest.raises(ValueError, match="quant_type"):
        ModelConfig(name_or_path="m", quantization={"quant_type": "int4"})
