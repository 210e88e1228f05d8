"""Data layouts users have (objectives/data/sources.py): a folder of split files, whose splits are used as
given and only the missing ones carved; bad folders refused with what is wrong."""

from __future__ import annotations

import json

import pytest

from objectives import DataConfig, load_splits
from spaces import ConfigError

COLUMNS = ["prompt", "response"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(prefix: str, n: int):
    return [{"prompt": f"{prefix} question {i}", "response": f"{prefix} answer {i}"} for i in range(n)]


def test_a_folder_of_split_files_gives_exactly_those_splits(tmp_path):
    _write(tmp_path / "train.jsonl", _rows("train", 40))
    _write(tmp_path / "validation.jsonl", _rows("val", 7))
    _write(tmp_path / "test.jsonl", _rows("test", 5))
    splits = load_splits(DataConfig(source=str(tmp_path)), seed=0, columns=COLUMNS)
    assert len(splits.train) == 40 and len(splits.validation) == 7 and len(splits.test) == 5
    assert {r["prompt"].split()[0] for r in splits.validation} == {"val"}  # the user's own, not carved from train
    assert {r["prompt"].split()[0] for r in splits.test} == {"test"}


def test_a_split_the_folder_lacks_is_carved_from_train(tmp_path):
    # csv, and the "dev" name for the validation split.
    (tmp_path / "train.csv").write_text("prompt,response\n" + "".join(f"q{i},a{i}\n" for i in range(50)))
    (tmp_path / "dev.csv").write_text("prompt,response\n" + "".join(f"d{i},b{i}\n" for i in range(6)))
    splits = load_splits(DataConfig(source=str(tmp_path), test_fraction=0.1), seed=0, columns=COLUMNS)
    assert len(splits.validation) == 6 and {r["prompt"][0] for r in splits.validation} == {"d"}
    assert len(splits.test) == 5 and len(splits.train) == 45  # test carved (seeded) from train


@pytest.mark.parametrize(("files", "words"), [
    ({"notes.txt": "hello"}, "neither split files nor a save_to_disk folder"),
    ({"train.jsonl": None, "validation.csv": "prompt,response\nq,a\n"}, "mixes formats"),
    ({"train.jsonl": None, "validation.jsonl": [{"question": "q", "answer": "a"}] * 3}, "columns differ"),
])
def test_a_folder_that_cannot_be_used_is_refused_saying_why(tmp_path, files, words):
    for name, content in files.items():
        if content is None:
            _write(tmp_path / name, _rows("train", 20))
        elif isinstance(content, list):
            _write(tmp_path / name, content)
        else:
            (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=words) as caught:
        load_splits(DataConfig(source=str(tmp_path)), seed=0, columns=COLUMNS)
    assert caught.value.key == "dataset.source"


def test_data_files_with_globs_name_each_split(tmp_path):
    _write(tmp_path / "part-1.jsonl", _rows("a", 20))
    _write(tmp_path / "part-2.jsonl", _rows("b", 20))
    _write(tmp_path / "held-out.jsonl", _rows("val", 6))
    data = DataConfig(source=str(tmp_path), data_files={"train": "part-*.jsonl", "validation": "held-out.jsonl"},
                      test_fraction=0.1)
    splits = load_splits(data, seed=0, columns=COLUMNS)
    assert len(splits.train) + len(splits.test) == 40 and len(splits.validation) == 6
    assert {r["prompt"][0] for r in splits.train} == {"a", "b"}  # both files


def test_a_data_files_glob_that_matches_nothing_is_refused(tmp_path):
    _write(tmp_path / "train.jsonl", _rows("a", 20))
    data = DataConfig(source=str(tmp_path), data_files={"train": "train.jsonl", "validation": "val-*.jsonl"})
    with pytest.raises(ConfigError, match="matches no file") as caught:
        load_splits(data, seed=0, columns=COLUMNS)
    assert caught.value.key == "dataset.data_files.validation"
