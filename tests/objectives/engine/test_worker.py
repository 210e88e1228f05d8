"""What lives per worker (objectives/engine/worker.py), with the base model as a hyperparameter: models
loaded once per worker, data tokenized once per tokenizer, the least recently used model dropped,
and a real sweep over the two bundled models (Llama and GPT-2, whose tokenizers differ) whose
winner exports and reloads on its own base model."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import TINY_SWEEP, deep_merge
from objectives import (
    DataConfig,
    ModelConfig,
    ObjectiveOptions,
    load_splits,
    resolve_model_path,
)
from search.cli import main
from tests.objectives.engine.tiny_models import BUDGET, DATA, GPT2, LLAMA, LORA, tiny_objective


def _expected_ids(model: str, prompt: str, response: str, template: str) -> list[int]:
    """How the causal_lm objective should tokenize one example with `model`'s own tokenizer (computed here)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(name_or_path=model)))
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    prompt_ids = bos + tok(template.format(prompt=prompt), add_special_tokens=False)["input_ids"]
    return (prompt_ids + tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:64]


def test_a_worker_alone_loads_the_model_and_tokenizes_the_data_once():
    from objectives.engine.worker import Worker
    from objectives.tasks import TASKS

    task = TASKS.get("causal_lm")(DATA, budget=BUDGET)
    worker = Worker(task, ModelConfig(name_or_path=LLAMA))
    assert worker.loaded is None and worker.data is None
    first = worker.use(LLAMA)
    assert worker.use(LLAMA) is first and worker.loaded is first and len(worker.tokenized) == 1
    assert len(worker.data.train) == DATA.max_train_examples and worker.splits.train.column_names == ["prompt", "response"]


def test_switching_models_loads_each_once_and_tokenizes_per_tokenizer():
    objective = tiny_objective()
    objective.setup()
    llama = objective.base_model
    objective.run_trial({**LORA, "base_model": GPT2})
    gpt2 = objective.base_model
    assert gpt2.config.model_type == "gpt2" and llama.config.model_type == "llama"
    objective.run_trial({**LORA, "base_model": LLAMA})
    assert objective.base_model is llama  # not reloaded
    objective.run_trial({**LORA, "base_model": GPT2})
    assert objective.base_model is gpt2
    worker = objective.worker
    assert list(worker.models) == [LLAMA, GPT2]
    assert len(worker.tokenized) == 2  # two tokenizers, two tokenizations of the same data

    train, _, _ = load_splits(DATA, seed=0, columns=objective.required_columns())
    row = train[0]
    template = objective.options.prompt_template
    for name in (LLAMA, GPT2):
        worker.use(name)
        assert objective.train_dataset[0]["input_ids"] == _expected_ids(name, row["prompt"], row["response"], template)
    assert worker.tokenized[worker.models[LLAMA].tokenizer_key].train[0]["input_ids"] != \
        worker.tokenized[worker.models[GPT2].tokenizer_key].train[0]["input_ids"]


def test_models_sharing_a_tokenizer_share_the_tokenized_data(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_path(ModelConfig(name_or_path=LLAMA))
    copy = tmp_path / "llama-copy"
    model = AutoModelForCausalLM.from_pretrained(source)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # another checkpoint of the same family
    model.save_pretrained(copy)
    AutoTokenizer.from_pretrained(source).save_pretrained(copy)
    objective = tiny_objective()
    objective.setup()
    first = objective.run_trial(LORA)
    second = objective.run_trial({**LORA, "base_model": str(copy)})
    assert len(objective.worker.models) == 2 and len(objective.worker.tokenized) == 1
    assert first["eval_loss"] != second["eval_loss"]  # really another model


def test_max_cached_models_drops_the_least_recently_used():
    objective = tiny_objective(options=ObjectiveOptions(max_cached_models=1))
    objective.setup()
    objective.run_trial({**LORA, "base_model": GPT2})
    assert list(objective.worker.models) == [GPT2]
    objective.run_trial({**LORA, "base_model": LLAMA})
    assert list(objective.worker.models) == [LLAMA]
    assert len(objective.worker.tokenized) == 2  # tokenized data is small and stays


def test_classification_switches_models_with_the_same_labels():
    data = DataConfig(source="bundled:support-intents", max_train_examples=64, max_eval_examples=32)
    objective = tiny_objective("sequence_classification", data=data)
    objective.setup()
    objective.run_trial({**LORA, "base_model": GPT2})
    assert objective.base_model.config.label2id == objective.worker.models[LLAMA].model.config.label2id
    assert objective.base_model.config.pad_token_id is not None  # GPT-2 has none of its own


@pytest.fixture(scope="module")
def model_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    data = deep_merge(TINY_SWEEP, {
        "name": "models", "output_dir": str(root / "runs"), "n_trials": 4, "sampler": "grid",
        "space": {"params": {"base_model": {"type": "categorical", "choices": [LLAMA, GPT2]},
                             "learning_rate": {"type": "categorical", "choices": [2e-3, 1e-2]},
                             "lora_r": {"type": "fixed", "value": 4},
                             "target_modules": {"type": "fixed", "value": "attention_qv"}}},
    })
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["launch", str(path)]) == 0
    return path


def test_a_sweep_over_two_architectures_trains_both_and_exports_each_on_its_own_model(model_sweep, tmp_path, capsys):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    capsys.readouterr()
    assert main(["best", str(model_sweep), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["params"]["base_model"] for row in rows} == {LLAMA, GPT2}
    gpt2_trial = next(row["number"] for row in rows if row["params"]["base_model"] == GPT2)
    out = tmp_path / "export"
    assert main(["export", str(model_sweep), "--trial", str(gpt2_trial), "--out", str(out)]) == 0
    winner = yaml.safe_load((out / "winner.yaml").read_text())
    assert winner["model"]["name_or_path"] == GPT2 and "base_model" not in winner["params"]
    config = PeftConfig.from_pretrained(str(out))
    assert config.base_model_name_or_path == resolve_model_path(ModelConfig(name_or_path=GPT2))
    base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)
    # An untrained adapter of this config fits the GPT-2 it names (the export holds the config, not weights).
    from peft import get_peft_model

    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path), tmp_path / "adapter")


