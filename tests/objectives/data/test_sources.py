"""Where models and data come from: local files of every supported type, hub names, bundled assets."""

from __future__ import annotations

import json

import pytest

from objectives import DataConfig, ModelConfig, TrainBudget, bundled_datasets, get_objective, load_splits
from objectives.data.sources import ASSETS
from spaces import ConfigError

QA = ASSETS / "datasets" / "support_qa.jsonl"


def _rows(n: int = 40) -> list[dict]:
    with QA.open() as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_of_each_type_load(tmp_path, suffix):
    import pandas as pd

    path = tmp_path / f"data{suffix}"
    frame = pd.DataFrame(_rows())
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    train, validation, test = load_splits(DataConfig(source=str(path), validation_fraction=0.25), seed=0,
                                          columns=["prompt", "response"])
    assert (len(train), len(validation), len(test)) == (27, 9, 4)
    assert set(train.column_names) == {"prompt", "response"}


def test_validation_split_is_seeded_and_disjoint():
    data = DataConfig(source="bundled:support-qa", max_eval_examples=None)
    train_a, val_a, test_a = load_splits(data, seed=0, columns=["prompt", "response"])
    train_b, val_b, test_b = load_splits(data, seed=0, columns=["prompt", "response"])
    _, val_c, test_c = load_splits(data, seed=1, columns=["prompt", "response"])
    assert (val_a["prompt"], test_a["prompt"]) == (val_b["prompt"], test_b["prompt"])
    assert val_a["prompt"] != val_c["prompt"] and test_a["prompt"] != test_c["prompt"]
    train, val, test = set(train_a["prompt"]), set(val_a["prompt"]), set(test_a["prompt"])
    assert not (train & val or train & test or val & test)
    assert (len(train), len(val), len(test)) == (972, 108, 120)


def test_no_test_split_when_asked_for_none():
    splits = load_splits(DataConfig(source="bundled:support-qa", test_fraction=0.0), seed=0, columns=["prompt"])
    assert splits.test is None and len(splits.train) + len(splits.validation) == 1200


def test_unknown_split_lists_the_splits():
    with pytest.raises(ConfigError, match="no such split.*'train'"):
        load_splits(DataConfig(source="bundled:support-qa", validation_split="dev"), seed=0, columns=["prompt"])


def test_unknown_bundled_dataset_lists_bundled_ones():
    with pytest.raises(ConfigError) as err:
        load_splits(DataConfig(source="bundled:nope"), seed=0, columns=["prompt"])
    assert all(name in str(err.value) for name in bundled_datasets())


def test_hub_dataset_unreachable_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not load dataset") as err:
        load_splits(DataConfig(source="someone/no-such-dataset"), seed=0, columns=["prompt"])
    assert "dataset.source" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_hub_model_unreachable_offline_is_a_clear_error():
    objective = get_objective("causal_lm")(
        ModelConfig(name_or_path="someone/no-such-model"), DataConfig(source="bundled:support-qa"), TrainBudget(),
        source="sweep.yaml",
    )
    with pytest.raises(ConfigError, match="could not load model") as err:
        objective.setup()
    assert "sweep.yaml: model.name_or_path" in str(err.value)


def test_non_text_values_are_rejected_with_the_row(tmp_path):
    path = tmp_path / "numbers.jsonl"
    path.write_text("".join(json.dumps({"prompt": i, "response": "ok"}) + "\n" for i in range(10)))
    objective = get_objective("causal_lm")(
        ModelConfig(name_or_path="bundled:tiny-support-lm"), DataConfig(source=str(path)), TrainBudget(),
    )
    with pytest.raises(ConfigError, match="column 'prompt' must hold text"):
        objective.setup()


def test_classification_needs_two_labels(tmp_path):
    path = tmp_path / "one-label.jsonl"
    path.write_text("".join(json.dumps({"text": f"hello {i}", "label": "greeting"}) + "\n" for i in range(10)))
    objective = get_objective("sequence_classification")(
        ModelConfig(name_or_path="bundled:tiny-support-lm"), DataConfig(source=str(path)), TrainBudget(),
    )
    with pytest.raises(ConfigError, match="at least 2"):
        objective.setup()
