"""Augmentation inside a sweep (objectives/engine/worker.py keeps the augmented rows, trial.py trains on
them): a trial's aug_* params change its training rows only, the same params reuse the same
tokenized rows, and an exported winner carries the settings into `ftsweep train`."""

from __future__ import annotations

import pytest
import yaml

from objectives.data.augmentation import AugmentationSettings, Augmenter
from search.cli import main
from search.sweep import load_sweep
from spaces import ConfigError

AUG = {"augmentation": {"synonyms": "bundled:support"},
       "space": {"params": {"learning_rate": {"type": "fixed", "value": 1e-2},
                            "aug_synonym_prob": {"type": "categorical", "choices": [0.0, 0.2]},
                            "aug_swap_prob": {"type": "fixed", "value": 0.1}}}}
EDA = {"learning_rate": 1e-2, "aug_synonym_prob": 0.2, "aug_swap_prob": 0.1}


def test_a_trial_with_augmentation_trains_on_augmented_rows_and_evaluates_on_the_same_validation(write_sweep):
    sweep = load_sweep(write_sweep(**AUG))
    objective = sweep.make_objective()
    objective.setup()
    validation_before = objective.eval_dataset["input_ids"]
    sizes = []
    objective.training_data(EDA)  # fills the cache
    data, _, _ = objective.training_data(EDA)
    sizes.append(len(data))
    assert len(objective.worker.augmented) == 1  # the same params: tokenized once
    raw_train = objective.worker.splits.train
    expected = Augmenter(AugmentationSettings(synonyms="bundled:support"), seed=sweep.spec.seed).augment(
        raw_train, EDA, ["prompt"])
    assert sizes == [len(expected)] and len(expected) == 2 * len(raw_train)  # originals + one EDA copy
    first_copy = objective.task.prompt_format(objective.tokenizer).encode_example(expected[len(raw_train)])
    assert data[len(raw_train)]["input_ids"] == (first_copy[0] + first_copy[1])[:sweep.spec.budget.max_seq_length]
    plain, _, _ = objective.training_data({**EDA, "aug_synonym_prob": 0.0, "aug_swap_prob": 0.0})
    assert plain is objective.train_dataset
    # The final fit with merge_validation: the augmented rows, then the (never augmented) validation rows.
    merged, _, _ = objective.training_data(EDA, merge_validation=True)
    assert len(merged) == len(data) + len(objective.eval_dataset)
    assert merged.select(range(len(data), len(merged)))["input_ids"] == validation_before
    metrics = objective.run_trial(EDA)
    assert metrics["eval_loss"] > 0
    assert objective.eval_dataset["input_ids"] == validation_before


def test_the_winner_carries_the_augmentation_into_train(write_sweep, tmp_path, capsys):
    path = write_sweep(**{**AUG, "n_trials": 1, "sampler": "random"})
    assert main(["launch", str(path)]) == 0
    out = tmp_path / "winner"
    assert main(["export", str(path), "--out", str(out)]) == 0
    winner = yaml.safe_load((out / "winner.yaml").read_text())
    assert winner["augmentation"]["synonyms"] == "bundled:support"
    assert winner["params"]["aug_swap_prob"] == 0.1
    capsys.readouterr()
    assert main(["train", str(out / "winner.yaml"), "--set", f"output_dir={tmp_path / 'fit'}"]) == 0
    assert (tmp_path / "fit" / "adapter" / "adapter_config.json").exists()


def test_an_augmentation_probability_outside_0_1_is_refused_when_the_sweep_loads(write_sweep):
    path = write_sweep(augmentation={"synonyms": "bundled:support"},
                       space={"params": {"aug_delete_prob": {"type": "float", "low": 0.0, "high": 1.5}}})
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert error.value.key == "space.params.aug_delete_prob.high"


def test_a_sweep_trial_back_translates_through_two_local_seq2seq_models(write_sweep, tmp_path_factory):
    from conftest import load_script

    models = load_script("build_translation_models").build_models(tmp_path_factory.mktemp("mt"), steps=30, check=0)
    cache = tmp_path_factory.mktemp("translations")
    path = write_sweep(augmentation={"backtranslation": {"forward": models["forward"], "backward": models["backward"],
                                                         "cache_dir": str(cache)}},
                       space={"params": {"learning_rate": {"type": "fixed", "value": 1e-2},
                                         "aug_backtranslation_ratio": {"type": "fixed", "value": 0.5}}})
    objective = load_sweep(path).make_objective()
    objective.setup()
    data, _, _ = objective.training_data({"aug_backtranslation_ratio": 0.5})
    worker = objective.worker
    raw = worker.augmenter.augment(worker.splits.train, {"aug_backtranslation_ratio": 0.5}, ["prompt"])
    n = len(worker.splits.train)
    assert len(raw) == n + round(0.5 * n)  # originals plus back-translations of half of them
    assert worker.augmenter.generate_calls > 0
    # A barely trained translator may ramble: rows whose prompt alone fills max_seq_length are dropped,
    # exactly as for original rows.
    fmt, max_len = objective.task.prompt_format(objective.tokenizer), objective.budget.max_seq_length
    kept = sum(len(fmt.encode_example(row)[0]) < max_len for row in raw)
    assert len(data) == kept > n
    assert objective.run_trial({"learning_rate": 1e-2, "aug_backtranslation_ratio": 0.5})["eval_loss"] > 0
    assert any(cache.iterdir())  # translations kept on disk for other workers
