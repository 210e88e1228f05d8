"""The architecture matrix: real sweeps on tiny random-init models of 14 architectures nobody here built.

Each model is built from its transformers config (two layers, hidden 32, seeded random weights, the
vocabulary of the bundled tokenizer), saved with `save_pretrained` beside the tokenizer ftsweep ships
(objectives/assets/models/tiny-support-lm) into a temporary folder, and named by that folder as
`model:`. Then, as a user would:

    ftsweep launch sweep.yaml   2 trials of the `lora` preset, a grid over two of its target_modules choices
    ftsweep export sweep.yaml   the best trial's winner.yaml
    ftsweep train winner.yaml   the final fit: adapter/ and metrics.json

and the adapter is reloaded with plain `peft.PeftModel.from_pretrained` on the base model read from its
folder by plain transformers: its LoRA layers sit on the modules the choice names, and its validation and
test losses are the ones `train` reported. Both trials are exported, trained and reloaded, so over the
matrix every target_modules choice of the preset goes the whole way on nine or more architectures
(architecture i gets choices i and i+1 mod 3). The preset's other params are fixed, so that the grid
sampler's two points are exactly the two choices.

The encoders run a second time saved without their classification head (AutoModel), as pretrained
encoders ship: whatever the checkpoint lacks is random at load, and only the adapter can restore it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from objectives.data.sources import ASSETS
from tests.objectives.adapters.test_target_modules import ARCHITECTURES, SMALL

pytestmark = pytest.mark.slow  # 18 sweeps of 2 trials, 36 exports and final fits (~30 s on 2 CPU cores)

TOKENIZER_DIR = ASSETS / "models" / "tiny-support-lm"  # the tokenizer ftsweep ships (tokenizer.json)
CAUSAL = {"causal_lm": "bundled:support-qa", "sequence_classification": "bundled:support-intents"}
DATASET = {"max_train_examples": 32, "max_eval_examples": 16}
BUDGET = {"max_steps": 3, "eval_every": 3, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}
SEED = 0
LORA_R, LORA_ALPHA_RATIO = 4, 2


def _lora_choices() -> list[str]:
    """The `lora` preset's own target_modules choices (attention_qv, attention, all_linear)."""
    from spaces import get_preset

    return list(get_preset("lora").params()["target_modules"].choices)


CHOICES = _lora_choices()
MATRIX = [(model_type, (CHOICES[i % len(CHOICES)], CHOICES[(i + 1) % len(CHOICES)]))
          for i, model_type in enumerate(ARCHITECTURES)]


def _task_name(model_type: str) -> str:
    return "causal_lm" if ARCHITECTURES[model_type][2] == "AutoModelForCausalLM" else "sequence_classification"


def _data(task: str) -> dict:
    return {"source": CAUSAL[task], **DATASET}


def _label2id(task: str, tokenizer) -> dict[str, int]:
    """The classes sequence_classification trains (it builds its head with num_labels = their count)."""
    from objectives import DataConfig
    from objectives.data.sources import load_splits
    from objectives.tasks import TASKS

    data = DataConfig(**_data(task))
    classifier = TASKS.get(task)(data)
    splits = load_splits(data, seed=SEED, columns=classifier.required_columns())
    return classifier.tokenize(tokenizer, *splits).state.label2id


def _build_model(model_type: str, folder: Path, *, headless: bool = False) -> Path:
    """A random-init two-layer model of `model_type` with the bundled tokenizer, saved into `folder`;
    `headless`: an encoder saved without its classification head (AutoModel), as pretrained encoders ship."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config_cls, extra, auto = ARCHITECTURES[model_type]
    special = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = getattr(transformers, config_cls)(**{**SMALL, **extra, **special})
    task = _task_name(model_type)
    if task == "sequence_classification":
        label2id = _label2id(task, tokenizer)
        config.num_labels = len(label2id)
        config.label2id, config.id2label = label2id, {i: label for label, i in label2id.items()}
    torch.manual_seed(SEED)
    model = getattr(transformers, "AutoModel" if headless else auto).from_config(config)
    assert config.num_hidden_layers == 2 and config.hidden_size <= 64
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """model_dir(model_type, headless=False) -> the folder of its tiny random-init model, built once per module."""
    built: dict[tuple[str, bool], Path] = {}

    def get(model_type: str, headless: bool = False) -> Path:
        if (model_type, headless) not in built:
            folder = tmp_path_factory.mktemp(f"model-{model_type}{'-headless' if headless else ''}")
            built[model_type, headless] = _build_model(model_type, folder, headless=headless)
        return built[model_type, headless]

    return get


def _sweep_file(root: Path, model_type: str, model: Path, choices: tuple[str, str]) -> Path:
    """A 2-trial sweep of the `lora` preset on `model`: a grid over two target_modules choices, the
    preset's other params fixed so that the grid's two points are exactly those two choices."""
    task = _task_name(model_type)
    data = {
        "name": f"arch-{model_type}",
        "objective": task,
        "model": str(model),
        "dataset": _data(task),
        "space": {"preset": "lora", "override": {
            "learning_rate": {"type": "fixed", "value": 1.0e-2},
            "lr_scheduler_type": {"type": "fixed", "value": "linear"},
            "warmup_ratio": {"type": "fixed", "value": 0.0},
            "weight_decay": {"type": "fixed", "value": 0.0},
            "lora_r": {"type": "fixed", "value": LORA_R, "when": {"peft_method": "lora"}},
            "lora_alpha_ratio": {"type": "fixed", "value": LORA_ALPHA_RATIO, "when": {"peft_method": "lora"}},
            "lora_dropout": {"type": "fixed", "value": 0.0, "when": {"peft_method": "lora"}},
            "use_rslora": {"type": "fixed", "value": False, "when": {"peft_method": "lora"}},
            "target_modules": {"choices": list(choices)},  # partial: the preset's definition, two choices
        }, "remove": ["loraplus_lr_ratio"]},  # plain AdamW: the adapter reloads with plain PEFT
        "metric": "eval_loss",
        "sampler": {"name": "grid"},
        "pruner": "none",
        "n_trials": 2,
        "budget": BUDGET,
        "seed": SEED,
        "tracking": {"wandb": "off"},
        "output_dir": str(root / "runs"),
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base_model(model_type: str, folder: Path):
    """The base model as a user loads it: plain transformers, from its folder. Weights its checkpoint
    lacks (a headless encoder's head) start from another seed than training's: only the adapter may
    restore them."""
    import torch
    import transformers

    torch.manual_seed(SEED + 1)
    return getattr(transformers, ARCHITECTURES[model_type][2]).from_pretrained(folder).eval()


def _lora_layers(model) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name.removeprefix("base_model.model.") for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def _whole_modules(model) -> set[str]:
    """The modules PEFT trains whole and saves with the adapter (modules_to_save: a classifier's head)."""
    from peft.utils.other import ModulesToSaveWrapper

    return {name.removeprefix("base_model.model.") for name, m in model.named_modules()
            if isinstance(m, ModulesToSaveWrapper)}


# A classifier's head is trained whole, never through LoRA: PEFT puts every module whose name ends in
# one of these into modules_to_save (DistilBERT's `pre_classifier` too, RoBERTa's whole `classifier` block).
HEAD_NAMES = ("classifier", "score")


def _in_head(name: str) -> bool:
    return any(part.endswith(HEAD_NAMES) for part in name.split("."))


def _expected_layers(model_type: str, choice: str, base) -> tuple[list[str] | str, set[str], dict[str, bool]]:
    """(what the choice resolves to, the linear layers LoRA adapts for it, {every linear layer outside a
    classification head: in an attention block?})."""
    from objectives.adapters.peft_methods import linear_modules, resolve_target_modules

    modules = {n: inside for n, inside in linear_modules(base).items()
               if _task_name(model_type) == "causal_lm" or not _in_head(n)}
    targets = resolve_target_modules(choice, base.config.model_type, modules)
    if targets == "all-linear":  # PEFT's shortcut: every linear layer but the output (and classification) head
        return targets, set(modules), modules
    return targets, {n for n in modules if any(n == t or n.endswith(f".{t}") for t in targets)}, modules


def _trainable_params(model_type: str, folder: Path, choice: str) -> int:
    """The adapter's trainable parameters for `choice` (LoRA on the layers it names, plus a classifier's
    head), from plain PEFT on a fresh copy of the base model."""
    from peft import LoraConfig, get_peft_model

    base = _base_model(model_type, folder)
    _, named, _ = _expected_layers(model_type, choice, base)
    task_type = "CAUSAL_LM" if _task_name(model_type) == "causal_lm" else "SEQ_CLS"
    config = LoraConfig(r=LORA_R, lora_alpha=LORA_R * LORA_ALPHA_RATIO, lora_dropout=0.0,
                        target_modules=sorted(named), task_type=task_type, fan_in_fan_out=model_type == "gpt2")
    model = get_peft_model(base, config)
    assert _lora_layers(model) == named
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _losses(model_type: str, folder: Path, adapter: Path, run_file: Path) -> tuple[float, float, object]:
    """(validation loss, test loss, the reloaded model) of `adapter` on the base model, reloaded with
    plain PEFT and scored by a plain transformers Trainer on the run's validation and test rows (those
    rows and the collator come from the run's objective, as `train` tokenized them)."""
    import tempfile

    from peft import PeftModel
    from transformers import Trainer, TrainingArguments

    from search.sweep import load_run, run_objective

    run, objective_cls = load_run(run_file)
    data = run_objective(run, objective_cls, source=str(run_file))
    data.setup()  # the run's rows, tokenized as in training, and its collator
    model = PeftModel.from_pretrained(_base_model(model_type, folder), str(adapter)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=run.budget.eval_batch_size,
                                 report_to=[], use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, data_collator=data.collator())
        validation = trainer.evaluate(data.eval_dataset)["eval_loss"]
        test = trainer.evaluate(data.test_dataset, metric_key_prefix="test")["test_loss"]
    return validation, test, model


@pytest.mark.parametrize(("model_type", "choices"), MATRIX, ids=[model_type for model_type, _ in MATRIX])
def test_a_sweep_exports_trains_and_reloads_with_plain_peft(model_type, choices, model_dir, tmp_path, capsys):
    _sweep_export_train_reload(model_type, choices, model_dir(model_type), tmp_path, capsys)


ENCODERS = [(model_type, choices) for model_type, choices in MATRIX if _task_name(model_type) != "causal_lm"]


@pytest.mark.parametrize(("model_type", "choices"), ENCODERS, ids=[model_type for model_type, _ in ENCODERS])
def test_an_encoder_saved_without_its_head_reloads_to_the_same_loss(model_type, choices, model_dir, tmp_path,
                                                                     capsys):
    """The head (and DeBERTa's pooler, DistilBERT's pre_classifier) is new at load: the adapter must carry it."""
    _sweep_export_train_reload(model_type, choices, model_dir(model_type, headless=True), tmp_path, capsys,
                               headless=True)


def _sweep_export_train_reload(model_type: str, choices: tuple[str, str], folder: Path, tmp_path: Path, capsys, *,
                               headless: bool = False) -> None:
    import optuna
    from optuna.trial import TrialState

    from search.cli import main
    from search.store.storage import open_storage
    from search.sweep import load_sweep

    sweep_path = _sweep_file(tmp_path, model_type, folder, choices)

    # The sweep: two real trials, one per target_modules choice.
    assert main(["launch", str(sweep_path)]) == 0, capsys.readouterr()
    sweep = load_sweep(sweep_path)
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    assert sorted(t.params["target_modules"] for t in trials) == sorted(choices)
    for trial in trials:  # each trial adapted exactly the layers its choice names
        choice = trial.params["target_modules"]
        assert trial.user_attrs["config"]["target_modules"] == choice
        if not headless:  # LoRA on the choice's layers (+ the head): what plain PEFT makes of the same choice
            assert trial.user_attrs["metrics"]["trainable_params"] == _trainable_params(model_type, folder, choice)
        assert math.isfinite(trial.value)
    best = study.best_trial

    # Export the winner (and, so that both choices are trained and reloaded, the other trial too).
    exports = {best.number: tmp_path / "winner"}
    assert main(["export", str(sweep_path), "--out", str(exports[best.number])]) == 0, capsys.readouterr()
    [other] = [t for t in trials if t.number != best.number]
    exports[other.number] = tmp_path / "other"
    assert main(["export", str(sweep_path), "--trial", str(other.number), "--out", str(exports[other.number])]) == 0
    for trial in (best, other):
        _train_and_reload(model_type, folder, trial, exports[trial.number], tmp_path / f"trained-{trial.number}",
                          capsys)


def _train_and_reload(model_type: str, folder: Path, trial, export_dir: Path, trained: Path, capsys) -> None:
    """`ftsweep train` the export of `trial`, then reload its adapter with plain PEFT and score it."""
    from search.cli import main

    winner = yaml.safe_load((export_dir / "winner.yaml").read_text())
    assert winner["params"]["target_modules"] == trial.params["target_modules"]
    assert winner["provenance"]["trial"] == trial.number
    assert winner["model"]["name_or_path"] == str(folder)
    assert main(["train", str(export_dir / "winner.yaml"), "--set", f"output_dir={trained}"]) == 0, capsys.readouterr()
    record = json.loads((trained / "metrics.json").read_text())
    metrics = record["metrics"]
    assert Path(record["adapter"]) == trained / "adapter"
    # Same params, budget and seed: the final fit reproduces the trial's value.
    assert record["reproduction"]["comparable"] and record["reproduction"]["relative_error"] < 1e-4, record

    # Plain PEFT: the adapter's LoRA layers are where the choice says, and it scores what `train` reported.
    validation, test, reloaded = _losses(model_type, folder, trained / "adapter", trained / "run.yaml")
    choice = trial.params["target_modules"]
    targets, named, modules = _expected_layers(model_type, choice, _base_model(model_type, folder))
    whole = _whole_modules(reloaded)  # trained whole, not through LoRA: none of their layers is adapted
    modules = {n: inside for n, inside in modules.items() if not any(n == w or n.startswith(f"{w}.") for w in whole)}
    named &= set(modules)
    wrapped = _lora_layers(reloaded)
    assert wrapped == named, (choice, targets, sorted(wrapped))
    if _task_name(model_type) == "sequence_classification":  # the new head is saved whole, beside the LoRA layers
        assert "classifier" in whole, whole
    assert len(wrapped) >= reloaded.config.num_hidden_layers  # at least one adapted layer per block
    attention = {n for n, inside in modules.items() if inside}
    if choice == "attention":  # every linear layer of the attention blocks, nothing else
        assert wrapped == attention
    elif choice == "attention_qv":  # some of them: the query/value projections (fused ones whole)
        assert wrapped <= attention
    else:  # all_linear: every linear layer but the output head, feed-forward ones too
        assert wrapped == set(modules) and wrapped > attention
    assert validation == pytest.approx(metrics["eval_loss"], rel=1e-4)
    assert validation == pytest.approx(trial.value, rel=1e-4)
    assert test == pytest.approx(metrics["test_loss"], rel=1e-4)
