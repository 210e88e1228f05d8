"""PEFT methods as a hyperparameter: every method trains the tiny model, and bad method input is refused."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from objectives import DataConfig, ModelConfig, TrainBudget, TrialOptions, get_objective
from objectives.engine.trial import remove_adapter, restore_modules_to_save
from objectives.adapters.peft_methods import PEFT_METHODS, methods
from search.sweep import load_sweep
from spaces import ConfigError, SearchSpace

BUDGET = TrainBudget(max_steps=4, eval_every=4, batch_size=4, eval_batch_size=16, max_seq_length=64)
DATA = {
    "causal_lm": DataConfig(source="bundled:support-qa", max_train_examples=32, max_eval_examples=16),
    "sequence_classification": DataConfig(source="bundled:support-intents", max_train_examples=32,
                                          max_eval_examples=16),
}


@pytest.fixture(scope="module", params=sorted(DATA))
def objective(request):
    obj = get_objective(request.param)(ModelConfig(name_or_path="bundled:tiny-support-lm"), DATA[request.param],
                                       BUDGET, seed=0)
    obj.setup()
    return obj


def test_methods_are_registered_once_each():
    assert PEFT_METHODS.names() == [m.name for m in methods()] and len(set(PEFT_METHODS.names())) == 7
    with pytest.raises(ValueError, match="already registered"):
        PEFT_METHODS.register("lora", methods()[0])
    with pytest.raises(ConfigError, match="unknown PEFT method"):
        PEFT_METHODS.get("lorax")


@pytest.mark.parametrize("method", PEFT_METHODS.names())
def test_every_method_trains_saves_and_reloads_with_peft(objective, method, tmp_path):
    from peft import PeftConfig, PeftModel

    unfit = PEFT_METHODS.get(method).unfit
    architecture = objective.architecture()
    reason = unfit(architecture.adapter_target(), architecture.skeleton()) if unfit is not None else None
    if reason:
        # This transformers/PEFT pair cannot train it (prefix tuning of a classifier on transformers
        # >= 5.24): the launch refuses the method with the reason, before any trial.
        space = SearchSpace.from_dict({"name": "one", "params": {"peft_method": {"type": "fixed", "value": method}}})
        with pytest.raises(ConfigError, match="cannot train this") as caught:
            architecture.check_peft_methods(space)
        assert reason in str(caught.value)
        return
    before = {k: v.clone() for k, v in objective.base_model.state_dict().items()}
    saved = {}

    def save(model, trainer):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        saved["trainable"] = trainable
        model.save_pretrained(tmp_path)
        # The trained adapter's own predictions, to compare with the reloaded one.
        batch = next(iter(trainer.get_eval_dataloader()))
        model.eval()
        with torch.no_grad():
            saved["logits"] = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return {}

    metrics = objective.run_trial({"peft_method": method, "learning_rate": 1e-2}, options=TrialOptions(after_training=save))
    assert metrics["steps"] == 4 and torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert saved["trainable"] > 0
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_METHODS.get(method).peft_type()
    assert PeftConfig.from_pretrained(tmp_path).peft_type.value == config["peft_type"]
    # The base model came back untouched, so the saved adapter can be reloaded onto it.
    after = objective.base_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    grads = {n: p.requires_grad for n, p in objective.base_model.named_parameters()}
    reloaded = PeftModel.from_pretrained(objective.base_model, tmp_path)
    try:
        reloaded.eval()
        batch = next(iter(objective_eval_loader(objective)))
        with torch.no_grad():
            logits = reloaded(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert torch.allclose(logits, saved["logits"], atol=1e-5)
    finally:
        _detach(objective, reloaded)
        for n, p in objective.base_model.named_parameters():
            p.requires_grad_(grads[n])


def objective_eval_loader(objective):
    from torch.utils.data import DataLoader

    return DataLoader(objective.eval_dataset, batch_size=16, collate_fn=objective.collator())


def _detach(objective, peft_model):
    # What run_trial does after every trial: the base model gets its own modules back.
    restore_modules_to_save(peft_model)
    remove_adapter(peft_model, peft_model.peft_config["default"])
    base = objective.base_model
    if hasattr(base, "peft_config"):
        del base.peft_config
    base.eval()


def _sweep(tmp_path, space, **changes):
    data = {"name": "peft", "objective": "causal_lm", "model": "bundled:tiny-support-lm",
            "dataset": {"source": "bundled:support-qa", "max_train_examples": 32, "max_eval_examples": 16},
            "space": {"params": space}, "n_trials": 2, "budget": {"max_steps": 2, "batch_size": 4, "max_seq_length": 64},
            "output_dir": str(tmp_path / "runs"), "tracking": {"wandb": "off"}, **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


LR = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


@pytest.mark.parametrize("space, key, words", [
    ({**LR, "peft_method": {"type": "fixed", "value": "lorax"}}, "space.params.peft_method",
     "not a PEFT method known to the installed peft"),
    ({**LR, "peft_method": {"type": "categorical", "choices": ["lora", "vera"]}}, "space.params.peft_method",
     "PEFT offers this method, but ftsweep does not search it"),
    ({**LR, "peft_method": {"type": "fixed", "value": "lora"}, "loha_r": {"type": "int", "low": 2, "high": 8}},
     "space.params.loha_r", "'loha_r' is a parameter of peft_method loha, but this space's peft_method is lora"),
    ({**LR, "peft_method": {"type": "categorical", "choices": ["lora", "loha"]},
      "lora_r": {"type": "int", "low": 2, "high": 8}},
     "space.params.lora_r", "would also be sampled for loha"),
    ({**LR, "peft_method": {"type": "fixed", "value": "prompt_tuning"},
      "target_modules": {"type": "fixed", "value": "attention"}},
     "space.params.target_modules", "this space searches only prompt_tuning"),
])
def test_bad_peft_method_input_is_refused_when_the_sweep_loads(tmp_path, space, key, words):
    with pytest.raises(ConfigError, match=words) as caught:
        load_sweep(_sweep(tmp_path, space))
    assert caught.value.key == key


def test_a_target_module_the_model_lacks_is_refused_before_any_trial(tmp_path, capsys):
    from search.cli import main

    path = _sweep(tmp_path, {**LR, "target_modules": {"type": "categorical", "choices": ["attention", "qkv_fused"]}})
    assert main(["launch", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    # The message lists the layers the model has, so the user can pick.
    assert "space.params.target_modules" in err and "'qkv_fused'" in err and "matches no layer" in err
    assert "its linear layers are named: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in err
    assert not (tmp_path / "runs").exists()  # refused before the study was created


def test_the_peft_methods_preset_loads_and_gates_every_method_parameter():
    sweep = load_sweep("demo", ["space=peft-methods"])
    names = set(sweep.space.names)
    for method in methods():
        assert method.name in sweep.space.params()["peft_method"].choices
    assert {"lora_r", "loha_r", "lokr_r", "prefix_virtual_tokens", "prompt_virtual_tokens", "adapter_len"} <= names


def test_a_peft_methods_sweep_runs_every_method_and_exports_configs_peft_loads(tmp_path, capsys):
    from peft import PeftConfig, get_peft_model

    from objectives import resolve_model_path
    from search.backends import get_backend
    from search.cli import main
    from search.cli._common import resolve_study

    path = _sweep(tmp_path, {}, n_trials=len(methods()), pruner={"name": "none"}, budget={"max_steps": 4,
                  "batch_size": 4, "max_seq_length": 64})
    data = yaml.safe_load(path.read_text())
    data["space"] = "peft-methods"
    path.write_text(yaml.safe_dump(data))
    sweep = load_sweep(path)
    sweep.enqueue = [{"peft_method": name} for name in PEFT_METHODS.names()]  # each method once; the rest is sampled
    get_backend("optuna")(sweep).run()
    trials = resolve_study(str(path)).get_trials()
    assert sorted(t.params["peft_method"] for t in trials) == sorted(PEFT_METHODS.names())
    assert all(t.state.name == "COMPLETE" for t in trials)
    for trial in trials:
        method = trial.params["peft_method"]
        own = {p for p in trial.params if p in PEFT_METHODS.get(method).params}
        others = {p for m in methods() if m.name != method for p in m.params}
        assert not (set(trial.params) & others), (method, trial.params)  # only the method's own parameters
        out = tmp_path / "export" / method
        assert main(["export", str(path), "--trial", str(trial.number), "--out", str(out)]) == 0
        config = PeftConfig.from_pretrained(out)
        assert config.peft_type.value == PEFT_METHODS.get(method).peft_type()
        for param in own:
            assert getattr(config, PEFT_METHODS.get(method).params[param]) is not None
        # The exported config applies to the base model it names.
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(sweep.spec.model))
        assert sum(p.numel() for p in get_peft_model(base, config).parameters() if p.requires_grad) > 0


def test_ia3_takes_target_modules_with_its_feed_forward_ones_among_them(tmp_path):
    space = {**LR, "peft_method": {"type": "fixed", "value": "ia3"},
             "target_modules": {"type": "categorical", "choices": ["attention", "all_linear", "v_proj,down_proj"]}}
    sweep = load_sweep(_sweep(tmp_path, space))
    objective = sweep.make_objective()
    objective.architecture().check_peft_methods(sweep.space)  # PEFT accepts each choice on this Llama-style model
    config = objective.peft_config({"peft_method": "ia3", "target_modules": "v_proj,down_proj"})
    assert set(config.target_modules) == {"v_proj", "down_proj"} and set(config.feedforward_modules) == {"down_proj"}
    assert objective.peft_config({"peft_method": "ia3", "target_modules": "attention"}).feedforward_modules == set()
