"""The one reader of user files (objectives/data/files.py): rows typed as `datasets` types them, row numbers
that are a JSON Lines file's line numbers, and one exception naming what is wrong and how to fix it."""

from __future__ import annotations

import json

import pytest

from objectives import DataConfig, load_splits
from objectives.data.files import FILE_TYPES, UnreadableFile, read_rows


def test_a_csv_column_of_numbers_reads_as_numbers_as_datasets_loads_it(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("prompt,response,stars,score\nhi,hello,4,0.5\nbye,,5,\nyes,sure,3,1.5\nno,sorry,1,2.0\n")
    rows, numbers = read_rows(path)
    assert rows[:2] == [{"prompt": "hi", "response": "hello", "stars": 4, "score": 0.5},
                        {"prompt": "bye", "response": None, "stars": 5, "score": None}]
    assert numbers == [1, 2, 3, 4]
    assert all(type(row["stars"]) is int for row in rows)  # Python's, not numpy's
    # The training loader (`datasets`, through load_splits) sees the same values.
    loaded = load_splits(DataConfig(source=str(path), validation_fraction=0.5, test_fraction=0.0), seed=0,
                         columns=["stars"])
    assert sorted(row["stars"] for split in (loaded.train, loaded.validation) for row in split) == [1, 3, 4, 5]


def test_json_lines_rows_are_numbered_by_their_lines(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert read_rows(path) == ([{"prompt": "a"}, {"prompt": "b"}], [1, 3])


@pytest.mark.parametrize(("content", "message", "rows"), [
    ('{"prompt": "a"}\nnot json\n', "line 2 is not a JSON object (not valid JSON: Expecting value)", [2]),
    ('{"prompt": "a"}\n[1, 2]\n"text"\n', "lines 2, 3 are not JSON objects (line 2: a JSON list)", [2, 3]),
])
def test_bad_json_lines_are_named_with_a_fix(tmp_path, content, message, rows):
    path = tmp_path / "qa.jsonl"
    path.write_text(content)
    with pytest.raises(UnreadableFile) as caught:
        read_rows(path)
    assert (caught.value.message, caught.value.rows) == (message, rows)
    assert caught.value.fix.startswith("Fix: ") and str(caught.value) == f"{message}. {caught.value.fix}"


def test_a_json_file_is_a_list_of_objects_or_json_lines(tmp_path):
    rows = [{"prompt": "a", "n": 1}, {"prompt": "b", "n": 2}]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(rows))
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_rows(listed) == read_rows(lines) == (rows, [1, 2])
    other = tmp_path / "other.json"
    other.write_text('{"data": [1, 2, 3]}\n')  # one object, not a row per example
    assert read_rows(other) == ([{"data": [1, 2, 3]}], [1])
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps([[1, 2]]))
    with pytest.raises(UnreadableFile, match="not a list of objects"):
        read_rows(nested)


def test_parquet_and_unreadable_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "n": 1}]), path)
    assert read_rows(path) == ([{"prompt": "a", "n": 1}], [1])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UnreadableFile, match="not readable as CSV"):
        read_rows(empty)
    assert set(FILE_TYPES) == {".jsonl", ".json", ".csv", ".parquet"}
