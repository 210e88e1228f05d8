"""A folder written by `datasets`' save_to_disk is a data source like a file (objectives/data/sources.py): a
DatasetDict's splits are used as given, a single Dataset is the train split; the data checks read its rows;
a sweep runs on it; and a folder that is neither split files nor save_to_disk is refused saying why, once.

Every folder is saved here, in tmp_path, from the data bundled with ftsweep.
"""

from __future__ import annotations

import json

import datasets
import pytest

from objectives import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget, get_objective, load_splits
from objectives.data.conversations import CHATML, detect_format
from objectives.data.checks import validate_data
from objectives.data.sources import ASSETS, source_columns
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import load_existing_study
from search.sweep import load_sweep
from spaces import ConfigError

MODEL = ModelConfig(name_or_path="bundled:tiny-support-lm")
BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
QA_COLUMNS = ["prompt", "response"]


def bundled_rows(name: str) -> list[dict]:
    with (ASSETS / "datasets" / name).open() as lines:
        return [json.loads(line) for line in lines]


def save_dataset_dict(folder, rows: list[dict], sizes: dict[str, int]):
    """Save consecutive slices of `rows` as the splits of a DatasetDict (split name -> row count)."""
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = datasets.Dataset.from_list(rows[start:start + size])
        start += size
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def save_dataset(folder, rows: list[dict]):
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


def files_in(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------- loading


def test_a_saved_dataset_dict_gives_exactly_its_splits(tmp_path):
    rows = bundled_rows("support_qa.jsonl")
    folder = save_dataset_dict(tmp_path / "saved", rows, {"train": 200, "validation": 30, "test": 20})
    saved_files = files_in(folder)
    data = DataConfig(source=str(folder), max_eval_examples=None)
    assert source_columns(data) == QA_COLUMNS
    train, validation, test = load_splits(data, seed=0, columns=QA_COLUMNS)
    assert (len(train), len(validation), len(test)) == (200, 30, 20)
    assert validation["prompt"] == [r["prompt"] for r in rows[200:230]]  # the folder's own, not carved from train
    assert test["prompt"] == [r["prompt"] for r in rows[230:250]]
    assert files_in(folder) == saved_files  # nothing (no datasets cache file) was written into the user's folder


def test_split_settings_name_a_saved_dataset_dicts_splits(tmp_path):
    rows = bundled_rows("support_qa.jsonl")
    folder = save_dataset_dict(tmp_path / "saved", rows, {"train": 100, "held_out": 12, "final": 8})
    data = DataConfig(source=str(folder), validation_split="held_out", test_split="final")
    train, validation, test = load_splits(data, seed=0, columns=QA_COLUMNS)
    assert (len(train), validation["prompt"], test["prompt"]) == (
        100, [r["prompt"] for r in rows[100:112]], [r["prompt"] for r in rows[112:120]])
    with pytest.raises(ConfigError, match="no such split") as caught:
        load_splits(DataConfig(source=str(folder), validation_split="dev"), seed=0, columns=QA_COLUMNS)
    assert caught.value.key == "dataset.validation_split" and caught.value.allowed == ["train", "held_out", "final"]


def test_a_saved_single_dataset_is_the_train_split_carved_as_a_file_is(tmp_path):
    folder = save_dataset(tmp_path / "saved", bundled_rows("support_qa.jsonl"))
    from_folder = load_splits(DataConfig(source=str(folder), max_eval_examples=None), seed=0, columns=QA_COLUMNS)
    from_file = load_splits(DataConfig(source="bundled:support-qa", max_eval_examples=None), seed=0,
                            columns=QA_COLUMNS)
    assert [len(s) for s in from_folder] == [972, 108, 120]
    # The same rows in the same order: the same seeded carving, so a sweep may switch to the saved copy.
    assert [s["prompt"] for s in from_folder] == [s["prompt"] for s in from_file]


def test_a_split_folder_of_a_saved_dataset_dict_is_a_single_dataset(tmp_path):
    folder = save_dataset_dict(tmp_path / "saved", bundled_rows("support_intents.jsonl"), {"train": 80, "test": 20})
    train, validation, test = load_splits(DataConfig(source=str(folder / "test"), validation_fraction=0.25,
                                                     test_fraction=0.0), seed=0, columns=["text", "label"])
    assert (len(train), len(validation), test) == (15, 5, None)


# ---------------------------------------------------------------------------------- data checks


def test_data_checks_read_a_saved_classification_dataset(tmp_path):
    rows = bundled_rows("support_intents.jsonl")
    folder = save_dataset_dict(tmp_path / "saved", rows, {"train": 300, "test": 60, "unused": 40})
    objective = get_objective("sequence_classification")(MODEL, DataConfig(source=str(folder)), BUDGET, seed=0)
    report = validate_data(objective)
    assert report.ok, [f.message for f in report.errors]
    # The rows trials read: train then the folder's test split; an extra split is not checked.
    assert report.stats["rows"]["file"] == 360
    assert (report.stats["rows"]["train"], report.stats["rows"]["test"]) == (270, 60)  # validation carved
    labels = report.stats["labels"]
    assert sum(labels["test"].values()) == 60 and set(labels["test"]) <= {r["label"] for r in rows}


def test_data_checks_find_a_saved_datasets_missing_column_by_name(tmp_path):
    rows = [{"question": r["prompt"], "response": r["response"]} for r in bundled_rows("support_qa.jsonl")[:60]]
    folder = save_dataset(tmp_path / "saved", rows)
    report = validate_data(get_objective("causal_lm")(MODEL, DataConfig(source=str(folder)), BUDGET, seed=0))
    [error] = report.errors
    assert error.check == "columns" and "has no column 'prompt'" in error.message
    assert "'question'" in error.message and "dataset.prompt_column: question" in error.fix


def _turns(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Where is order {1000 + i}?"},
            {"role": "assistant", "content": f"Order {1000 + i} ships in {i % 7 + 1} days."}]


def test_a_saved_chat_dataset_is_detected_and_its_bad_rows_found_by_number(tmp_path):
    rows = [{"messages": _turns(i)} for i in range(60)]
    rows[6]["messages"] = rows[6]["messages"][:1]  # row 7: no assistant turn
    folder = save_dataset_dict(tmp_path / "saved", rows, {"train": 50, "validation": 10})
    data = DataConfig(source=str(folder))
    assert source_columns(data) == ["messages"] and detect_format(source_columns(data)) == "messages"
    objective = get_objective("causal_lm")(MODEL, data, TrainBudget(max_seq_length=128),
                                           options=ObjectiveOptions(chat_template=CHATML))
    [error] = validate_data(objective).errors
    assert error.check == "conversations" and "no assistant turn" in error.message and error.examples == [7]


# ---------------------------------------------------------------------------------- a sweep


def test_a_sweep_runs_on_a_saved_dataset_dict(write_sweep, tmp_path):
    folder = save_dataset_dict(tmp_path / "saved", bundled_rows("support_qa.jsonl"),
                               {"train": 128, "validation": 16, "test": 16})
    path = write_sweep(dataset={"source": str(folder)})
    assert main(["launch", str(path)]) == 0
    sweep = load_sweep(path)
    trials = load_existing_study(sweep.study_name, sweep.storage_url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(0 < t.value < 20 for t in trials)


# ---------------------------------------------------------------------------------- refused, saying why once


def test_a_folder_neither_split_files_nor_save_to_disk_says_what_it_has_and_what_is_expected(
        write_sweep, tmp_path, capsys):
    folder = save_dataset(tmp_path / "half-copied", bundled_rows("support_qa.jsonl")[:40])
    (folder / "state.json").unlink()  # a copy that lost a file: no longer a save_to_disk folder
    (folder / "notes.txt").write_text("preprocessed on Monday")
    with pytest.raises(ConfigError) as caught:
        load_splits(DataConfig(source=str(folder)), seed=0, columns=QA_COLUMNS)
    message = str(caught.value)
    assert caught.value.key == "dataset.source"
    assert message.count("neither split files nor a save_to_disk folder") == 1
    assert "it has: data-00000-of-00001.arrow, dataset_info.json, notes.txt" in message
    assert "one file per split (.csv, .json, .jsonl, .parquet)" in message
    assert "dataset_dict.json" in message and "dataset_info.json and state.json" in message

    assert main(["launch", str(write_sweep(dataset={"source": str(folder)}))]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert error.count("neither split files nor a save_to_disk folder") == 1 and error.count("got '") == 1


def test_a_split_that_does_not_load_is_named_once_at_launch(write_sweep, tmp_path, capsys):
    folder = save_dataset_dict(tmp_path / "saved", bundled_rows("support_qa.jsonl"), {"train": 100, "test": 10})
    path = write_sweep(dataset={"source": str(folder), "validation_split": "dev"})
    assert main(["launch", str(path)]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert "dataset.validation_split: the data has 1 error(s); first [splits]: no such split; got 'dev'" in error
    assert error.count("got '") == 1 and error.count(str(path)) == 1


def test_a_saved_folder_missing_a_shard_says_which_file(tmp_path):
    folder = save_dataset_dict(tmp_path / "saved", bundled_rows("support_qa.jsonl"), {"train": 100, "test": 10})
    shard = next((folder / "test").glob("*.arrow"))
    shard.unlink()
    with pytest.raises(ConfigError) as caught:
        load_splits(DataConfig(source=str(folder)), seed=0, columns=QA_COLUMNS)
    message = str(caught.value)
    assert message.count("could not load the save_to_disk folder (FileNotFoundError") == 1 and str(shard) in message
    report = validate_data(get_objective("causal_lm")(MODEL, DataConfig(source=str(folder)), BUDGET, seed=0))
    assert [(f.check, "not readable as a save_to_disk folder" in f.message) for f in report.errors] == [
        ("source", True)]
