"""Classifier checkpoints whose head does not fit the data's classes (objectives/tasks/sequence_classification.py):
a trained head of another label count is refused at launch with what to do, `model.new_head` replaces it
and a sweep trains, exports and retrains; a head that fits, or none at all, needs nothing.

Every checkpoint is a tiny random-init model (two layers, hidden 32; the sizes of the architecture matrix,
tests/objectives/adapters/test_architecture_matrix.py) saved with `save_pretrained` beside the bundled tokenizer.
The data is the bundled support intents: 20 classes.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
import yaml

from objectives.data.sources import ASSETS
from objectives.tasks.sequence_classification import checkpoint_labels
from search.cli import main
from search.sweep import load_sweep
from spaces import ConfigError
from tests.objectives.adapters.test_target_modules import SMALL

TOKENIZER_DIR = ASSETS / "models" / "tiny-support-lm"  # the tokenizer ftsweep ships
INTENTS = {"source": "bundled:support-intents", "max_train_examples": 32, "max_eval_examples": 16}
CLASSES = 20  # the intents' classes: every split's labels together
SPACE = {"params": {"learning_rate": {"type": "fixed", "value": 1.0e-2}, "lora_r": {"type": "fixed", "value": 4},
                    "target_modules": {"type": "fixed", "value": "attention_qv"}}}
BUDGET = {"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}


def _save_checkpoint(folder, auto_class: str, *, config_class: str = "BertConfig", labels: list[str] | None = None,
                     **extra):
    """A tiny random-init checkpoint of `auto_class` (e.g. AutoModelForSequenceClassification with `labels`,
    or AutoModel: an encoder without a head) and the bundled tokenizer, saved into `folder`."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = getattr(transformers, config_class)(**{**SMALL, **extra, "vocab_size": len(tokenizer),
                                                    "pad_token_id": tokenizer.pad_token_id})
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    torch.manual_seed(0)
    getattr(transformers, auto_class).from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_labels(tmp_path_factory):
    """A BERT sentiment-style classifier of 2 labels: its head cannot predict the 20 intents."""
    return _save_checkpoint(tmp_path_factory.mktemp("bert-2-labels"), "AutoModelForSequenceClassification",
                            labels=["negative", "positive"])


def _classification_sweep(write_sweep, model, **changes):
    """A sweep file of a few steps on the intents with `model` (a path, or the `model:` section)."""
    return write_sweep(**{"objective": "sequence_classification", "model": model, "dataset": INTENTS,
                          "space": SPACE, "metric": "f1_macro", "budget": BUDGET, **changes})


def test_a_classifier_of_other_labels_is_refused_at_launch_with_the_fix(write_sweep, two_labels, tmp_path, capsys):
    path = _classification_sweep(write_sweep, str(two_labels))
    assert main(["launch", str(path)]) == 2
    error = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"classifier of 2 label(s) (negative, positive) and the data has {CLASSES} classes" in error
    assert str(two_labels) in error and "model.name_or_path" in error
    assert f"set model.new_head: true to replace its head by a new one of {CLASSES} labels" in error
    assert f"or use a checkpoint with {CLASSES} labels" in error
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_loading_the_checkpoint_without_a_launch_says_the_same(write_sweep, two_labels):
    # `ftsweep train` and the Python API load without launching: the head is checked as the model loads.
    objective = load_sweep(_classification_sweep(write_sweep, str(two_labels))).make_objective()
    with pytest.raises(ConfigError, match=r"classifier of 2 label\(s\).*model.new_head: true"):
        objective.setup()


def test_a_base_model_choice_with_another_head_is_named(write_sweep, two_labels):
    choices = ["bundled:tiny-support-lm", str(two_labels)]
    space = {"params": {**SPACE["params"], "base_model": {"type": "categorical", "choices": choices}}}
    sweep = load_sweep(_classification_sweep(write_sweep, "bundled:tiny-support-lm", space=space))
    with pytest.raises(ConfigError, match=f"with base_model {two_labels}: the checkpoint is a classifier of 2"):
        sweep.make_objective().check_models(sweep.space)


def test_new_head_sweeps_exports_and_retrains_a_classifier_of_other_labels(write_sweep, tmp_path):
    electra = _save_checkpoint(tmp_path / "electra-2-labels", "AutoModelForSequenceClassification",
                               config_class="ElectraConfig", embedding_size=32, labels=["negative", "positive"])
    path = _classification_sweep(write_sweep, {"name_or_path": str(electra), "new_head": True}, n_trials=2,
                                 metric="eval_loss")  # never 0, unlike a few steps' f1: train compares it
    assert main(["launch", str(path)]) == 0
    assert main(["export", str(path), "--out", str(tmp_path / "winner")]) == 0
    winner = yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())
    assert winner["model"]["new_head"] is True  # the retrain loads the checkpoint as the trials did
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'final'}"]) == 0
    record = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert record["reproduction"]["relative_error"] < 0.01  # the trial's value, reproduced: the same new head
    # ELECTRA's head is a block: its dense layer fits and is kept, its out_proj is new; PEFT saves it whole.
    adapter = json.loads((tmp_path / "final" / "adapter" / "adapter_config.json").read_text())
    assert "classifier" in adapter["modules_to_save"]


def test_a_classifier_with_the_datas_label_count_keeps_its_trained_head(write_sweep, tmp_path):
    labels = [f"intent_{i}" for i in range(CLASSES)]  # the count matters, not the names: the data's replace them
    folder = _save_checkpoint(tmp_path / "bert-20-labels", "AutoModelForSequenceClassification", labels=labels)
    sweep = load_sweep(_classification_sweep(write_sweep, str(folder)))
    objective = sweep.make_objective()
    objective.check_models(sweep.space)
    objective.setup()
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    assert torch.equal(objective.base_model.classifier.weight, saved.classifier.weight)
    assert objective.base_model.config.id2label[0] == "account_delete"  # the data's classes


@pytest.mark.parametrize("auto_class", ["AutoModel", "AutoModelForMaskedLM"])
def test_a_checkpoint_without_a_classification_head_gets_a_new_one_unasked(write_sweep, tmp_path, auto_class):
    folder = _save_checkpoint(tmp_path / auto_class, auto_class)
    assert checkpoint_labels(transformers.AutoConfig.from_pretrained(folder)) is None
    sweep = load_sweep(_classification_sweep(write_sweep, str(folder)))
    objective = sweep.make_objective()
    objective.check_models(sweep.space)
    objective.setup()
    assert objective.base_model.classifier.out_features == CLASSES
    assert "classifier" in objective.base_model.ftsweep_new_modules
    assert objective.run_trial({"learning_rate": 1e-2, "lora_r": 4})["steps"] == BUDGET["max_steps"]


def test_new_head_is_refused_for_a_task_without_a_head(write_sweep):
    sweep = load_sweep(write_sweep(model={"name_or_path": "bundled:tiny-support-lm", "new_head": True}))
    with pytest.raises(ConfigError, match="causal_lm models have none") as error:
        sweep.make_objective().check_models(sweep.space)
    assert error.value.key == "model.new_head"
