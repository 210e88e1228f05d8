"""Data validation (objectives/data/checks.py): the bundled data passes; each bad input is found.

Every bad input is a small real file in tmp_path, checked through a real objective on the bundled
tiny model, and the counts are compared with ones computed here independently (from the splits
`load_splits` makes, and the objective's own tokenization).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from objectives import TASKS, DataConfig, ModelConfig, TrainBudget, get_objective, load_splits
from objectives.data.checks import CHECKS, SPLITS, DataReport, Finding, _Data, normalize, validate_data

MODEL = ModelConfig(name_or_path="bundled:tiny-support-lm")
BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
BUNDLED = {"causal_lm": "bundled:support-qa", "sequence_classification": "bundled:support-intents"}
TOPICS = ["refunds", "invoices", "passwords", "deliveries", "warranties", "gift cards", "returns", "promo codes"]


def objective_for(task: str, source: str | Path, budget: TrainBudget = BUDGET, **data):
    return get_objective(task)(MODEL, DataConfig(source=str(source), **data), budget, seed=0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def qa_rows(n: int, start: int = 0) -> list[dict]:
    """n distinct prompt/response pairs (distinct even once normalized)."""
    return [{"prompt": f"How long do {TOPICS[i % len(TOPICS)]} take for order {1000 + i}?",
             "response": f"Order {1000 + i} is handled within {i % 9 + 1} days."} for i in range(start, start + n)]


def intent_rows(n: int, labels: tuple[str, ...] = ("refund", "invoice")) -> list[dict]:
    return [{"text": f"Question {i} about my {TOPICS[i % len(TOPICS)]}, order {2000 + i}.",
             "label": labels[i % len(labels)]} for i in range(n)]


def found(report: DataReport, check: str, split: str | None = None) -> list[Finding]:
    return [f for f in report.findings if f.check == check and (split is None or f.split == split)]


def untruncated_lengths(objective) -> dict[str, list[tuple[int, int]]]:
    """Per split, (tokens, prompt tokens) of every example, from the task's own `tokenize` with room
    for everything: an independent measure of what `max_seq_length` would cut."""
    from transformers import AutoTokenizer

    wide = type(objective.task)(objective.data_config, options=objective.options,
                                budget=objective.budget.model_copy(update={"max_seq_length": 100_000}))
    tokenizer = AutoTokenizer.from_pretrained(objective.check_sources())
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    splits = load_splits(objective.data_config, seed=objective.seed, columns=wide.required_columns())
    encoded = wide.tokenize(tokenizer, *splits)[:3]
    return {name: [(len(row["input_ids"]), row["labels"].count(-100) if isinstance(row["labels"], list) else 0)
                   for row in split]
            for name, split in zip(("train", "validation", "test"), encoded) if split is not None}


# ---------------------------------------------------------------------------------- good data


@pytest.mark.parametrize("task", TASKS.names())
def test_bundled_data_passes_with_statistics(task):
    report = validate_data(objective_for(task, BUNDLED[task]))
    assert report.ok and report.findings == [], report.findings
    assert report.stats["rows"] == {"file": 1200, "train": 972, "validation": 108, "test": 120}
    for split in ("train", "validation", "test"):
        tokens = report.stats["tokens"][split]
        assert 0 < tokens["p50"] <= tokens["p95"] <= tokens["max"] <= BUDGET.max_seq_length
        assert tokens["truncated"] == 0
    if task == "sequence_classification":
        assert sum(report.stats["labels"]["train"].values()) == 972 and len(report.stats["labels"]["train"]) == 20
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True
    console = Console(record=True, width=120)
    console.print(report.render())
    assert "no problem found" in console.export_text()


def test_every_check_is_registered_once():
    assert len(CHECKS) == len(set(CHECKS)) and all(callable(check) for check in CHECKS)


def _run_checks(objective) -> list[tuple[str, Finding]]:
    """Every check in CHECKS, in order, as validate_data runs them: (its name, each finding)."""
    data = _Data(objective)
    data.findings.extend(data.read())
    found = []
    for check in CHECKS:
        findings = list(check(data))
        data.findings.extend(findings)
        found += [(check.__name__, finding) for finding in findings]
    return found


@pytest.mark.parametrize("task", TASKS.names())
def test_every_check_names_its_findings_after_itself_on_data_with_many_problems(task, tmp_path):
    # The contract of a check: a function of the data that returns Findings named after itself, and
    # that finds nothing to say (rather than crashing) on data it cannot look at.
    rows = qa_rows(40) if task == "causal_lm" else intent_rows(40)
    text = "prompt" if task == "causal_lm" else "text"
    rows += [dict(rows[0]), dict(rows[1], **{text: rows[1][text].upper()}), {**rows[2], text: "   "}]
    found = _run_checks(objective_for(task, write_jsonl(tmp_path / "data.jsonl", rows)))
    assert {"check_duplicates", "check_near_duplicates", "check_empty", "check_leakage"} <= {name for name, _ in found}
    for name, finding in found:
        assert isinstance(finding, Finding) and finding.level in ("error", "warning", "info")
        assert finding.check == name.removeprefix("check_"), (name, finding)
    # Nothing to read at all: only the source error, every other check stays silent.
    missing = _run_checks(objective_for(task, tmp_path / "missing.jsonl"))
    assert [(name, f.check) for name, f in missing] == [] and \
        [f.check for f in validate_data(objective_for(task, tmp_path / "missing.jsonl")).findings] == ["source"]


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_missing_column_names_the_file_the_column_and_the_columns_present(tmp_path, suffix):
    rows = [{"prompt": r["prompt"], "answer": r["response"]} for r in qa_rows(20)]
    path = (write_jsonl if suffix == ".jsonl" else write_csv)(tmp_path / f"qa{suffix}", rows)
    report = validate_data(objective_for("causal_lm", path))
    [error] = report.errors
    assert error.check == "columns"
    assert str(path) in error.message and "'response'" in error.message
    assert "'prompt'" in error.message and "'answer'" in error.message  # the columns present
    assert "dataset.response_column: answer" in error.fix  # the one unused column is the likely one
    # Nothing later crashed on the missing column; the split checks wait for the fix.
    assert [f.check for f in report.findings] == ["columns", "splits"]
    assert not report.ok


def test_wrong_types_are_errors_with_their_row_numbers(tmp_path):
    rows = intent_rows(20)
    rows[2]["text"] = 12345  # line 3
    rows[4]["text"] = ["a", "list"]  # line 5
    rows[6]["label"] = ["refund"]  # line 7
    del rows[8]["text"]  # line 9: absent
    report = validate_data(objective_for("sequence_classification", write_jsonl(tmp_path / "intents.jsonl", rows)))
    text, label = found(report, "types")
    assert (text.level, text.count, text.examples) == ("error", 3, [3, 5, 9])
    assert "'text'" in text.message and "rows 3, 5, 9" in text.message
    assert "a number in 1 row" in text.message and "a list in 1 row" in text.message
    assert "null or absent in 1 row" in text.message
    assert (label.level, label.count, label.examples) == ("error", 1, [7])
    assert not found(report, "lengths") and not found(report, "leakage")  # not tokenized: it would crash


def test_a_csv_number_column_and_empty_cells_are_wrong_types(tmp_path):
    # pandas (which `datasets` reads CSV with) makes a numbers-only column numbers, an empty cell null.
    rows = [{"prompt": str(1000 + i), "response": f"Answer {i}."} for i in range(10)]
    rows[3]["response"] = ""
    report = validate_data(objective_for("causal_lm", write_csv(tmp_path / "qa.csv", rows)))
    prompt, response = found(report, "types")
    assert (prompt.count, prompt.examples) == (10, [1, 2, 3, 4, 5])
    assert (response.count, response.examples) == (1, [4]) and "null" in response.message


def test_all_duplicate_rows_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "same.jsonl", qa_rows(1) * 12)
    report = validate_data(objective_for("causal_lm", path))
    [duplicates] = found(report, "duplicates")
    assert (duplicates.level, duplicates.count) == ("error", 11)
    assert duplicates.examples == [2, 3, 4, 5, 6]
    assert not report.ok


def test_some_duplicate_rows_are_a_warning(tmp_path):
    rows = qa_rows(30)
    path = write_jsonl(tmp_path / "qa.jsonl", rows + rows[:3])
    [duplicates] = found(validate_data(objective_for("causal_lm", path, test_fraction=0.0)), "duplicates")
    assert (duplicates.level, duplicates.count, duplicates.examples) == ("warning", 3, [31, 32, 33])
    assert "row 31 repeats row 1" in duplicates.message


def test_test_rows_leaked_into_train_are_counted_as_the_splits_hold_them(tmp_path):
    # A local file has one split, so the held-out ones are carved from it: a row repeated in the
    # file can land on both sides. The leak count must be what the carved splits really share.
    unique, repeated = qa_rows(40), qa_rows(10, start=100)
    path = write_jsonl(tmp_path / "qa.jsonl", unique + repeated * 4)
    objective = objective_for("causal_lm", path, validation_fraction=0.2, test_fraction=0.2)
    report = validate_data(objective)

    splits = load_splits(objective.data_config, seed=0, columns=["prompt", "response"])
    train, validation = set(splits.train["prompt"]), set(splits.validation["prompt"])
    expected = {"test": sum(p in train for p in splits.test["prompt"]),
                "validation": sum(p in train for p in splits.validation["prompt"])}
    assert expected["test"] > 0 and expected["validation"] > 0
    leaks = {f.split: f for f in found(report, "leakage") if "in train" in f.message}
    assert {split: f.count for split, f in leaks.items()} == expected
    assert all(f.level == "error" for f in leaks.values()) and not report.ok
    # Examples are the file's line numbers of the repeated rows (lines 41-80).
    assert all(41 <= row <= 80 for f in leaks.values() for row in f.examples)
    between = sum(p in validation for p in splits.test["prompt"])
    assert [f.count for f in found(report, "leakage") if "in validation" in f.message] == ([between] if between else [])


def test_leakage_compares_normalized_inputs(tmp_path):
    # Responses differ, and the prompt only in case and punctuation: still the same question.
    rows = qa_rows(40)
    variants = [{"prompt": r["prompt"].upper().rstrip("?") + " !", "response": "Another answer."} for r in rows]
    objective = objective_for("causal_lm", write_jsonl(tmp_path / "qa.jsonl", rows + variants))
    report = validate_data(objective)
    splits = load_splits(objective.data_config, seed=0, columns=["prompt", "response"])
    train = {normalize(p) for p in splits.train["prompt"]}
    expected = sum(normalize(p) in train for p in splits.test["prompt"])
    assert expected > 0
    assert [f.count for f in found(report, "leakage", "test") if "in train" in f.message] == [expected]


def test_class_imbalance_is_a_warning_with_the_ratio(tmp_path):
    rows = intent_rows(200, labels=("refund",)) + intent_rows(8, labels=("invoice",))
    rows[-8:] = [{**row, "text": row["text"] + " Invoice please."} for row in rows[-8:]]
    objective = objective_for("sequence_classification", write_jsonl(tmp_path / "intents.jsonl", rows))
    report = validate_data(objective)
    counts = Counter(load_splits(objective.data_config, seed=0, columns=["text", "label"]).train["label"])
    [imbalance] = [f for f in found(report, "labels", "train") if "imbalanced" in f.message]
    assert imbalance.level == "warning" and imbalance.count == counts["invoice"]
    assert f"1:{counts['refund'] / counts['invoice']:.0f}" in imbalance.message
    assert report.stats["labels"]["train"] == dict(counts)
    assert report.ok  # a warning does not stop a sweep


def test_a_single_label_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "intents.jsonl", intent_rows(30, labels=("refund",)))
    [error] = found(validate_data(objective_for("sequence_classification", path)), "labels")
    assert (error.level, error.count) == ("error", 1)


def test_a_held_out_label_that_train_never_shows_is_a_warning(tmp_path):
    rows = intent_rows(40)
    objective = objective_for("sequence_classification", tmp_path / "intents.jsonl")
    # Relabel one row that the split (seed 0) holds out as test: a class train never sees.
    write_jsonl(tmp_path / "intents.jsonl", rows)
    test_text = load_splits(objective.data_config, seed=0, columns=["text", "label"]).test["text"][0]
    rows = [{**row, "label": "warranty"} if row["text"] == test_text else row for row in rows]
    write_jsonl(tmp_path / "intents.jsonl", rows)
    [unseen] = [f for f in found(validate_data(objective), "labels") if "never shows" in f.message]
    assert (unseen.level, unseen.split, unseen.count) == ("warning", "test", 1) and "'warranty'" in unseen.message


def test_over_long_examples_are_counted_per_split_as_the_objective_tokenizes(tmp_path):
    rows = qa_rows(60)
    for i in range(0, 60, 4):  # some responses far past max_seq_length
        rows[i]["response"] = " ".join(["The refund reaches your card within five working days."] * (1 + i % 5))
    for i in range(2, 60, 10):  # some prompts that fill it alone
        rows[i]["prompt"] = "Please help, " * 30 + rows[i]["prompt"]
    budget = BUDGET.model_copy(update={"max_seq_length": 40})
    objective = objective_for("causal_lm", write_jsonl(tmp_path / "qa.jsonl", rows), budget)
    report = validate_data(objective)

    lengths = untruncated_lengths(objective)
    for split, pairs in lengths.items():
        truncated = sum(total > 40 and prompt < 40 for total, prompt in pairs)
        dropped = sum(prompt >= 40 for _, prompt in pairs)
        assert report.stats["tokens"][split]["truncated"] == truncated
        assert report.stats["tokens"][split]["no_response"] == dropped
        assert report.stats["tokens"][split]["max"] == max(total for total, _ in pairs)
        assert [f.count for f in found(report, "lengths", split)] == ([truncated] if truncated else [])
        assert [f.count for f in found(report, "prompt_lengths", split)] == ([dropped] if dropped else [])
    assert sum(report.stats["tokens"][s]["truncated"] for s in lengths) > 0
    assert sum(report.stats["tokens"][s]["no_response"] for s in lengths) > 0
    assert all(f.level == "warning" for f in found(report, "lengths") + found(report, "prompt_lengths"))


def test_over_long_texts_are_counted_for_classification(tmp_path):
    rows = intent_rows(40)
    for i in range(0, 40, 3):
        rows[i]["text"] += " I have been waiting for a very long time and nobody answers my emails." * (1 + i % 3)
    budget = BUDGET.model_copy(update={"max_seq_length": 24})
    objective = objective_for("sequence_classification", write_jsonl(tmp_path / "intents.jsonl", rows), budget)
    report = validate_data(objective)
    for split, pairs in untruncated_lengths(objective).items():
        truncated = sum(total > 24 for total, _ in pairs)
        assert report.stats["tokens"][split]["truncated"] == truncated
        assert [f.count for f in found(report, "lengths", split)] == ([truncated] if truncated else [])
    assert found(report, "lengths")


def test_prompts_that_never_leave_room_for_a_response_are_an_error(tmp_path):
    rows = [{**row, "prompt": "Please help, " * 30 + row["prompt"]} for row in qa_rows(20)]
    budget = BUDGET.model_copy(update={"max_seq_length": 40})
    report = validate_data(objective_for("causal_lm", write_jsonl(tmp_path / "qa.jsonl", rows), budget))
    assert {f.split: f.level for f in found(report, "prompt_lengths")} == {
        "train": "error", "validation": "error", "test": "warning"}


def test_whitespace_rows_are_a_warning_and_a_whole_empty_column_an_error(tmp_path):
    rows = qa_rows(20)
    rows[1]["prompt"], rows[5]["prompt"] = "   ", "\n\t"
    report = validate_data(objective_for("causal_lm", write_jsonl(tmp_path / "qa.jsonl", rows)))
    [empty] = found(report, "empty")
    assert (empty.level, empty.count, empty.examples) == ("warning", 2, [2, 6]) and "'prompt'" in empty.message

    blank = [{**row, "response": " "} for row in qa_rows(20)]
    report = validate_data(objective_for("causal_lm", write_jsonl(tmp_path / "blank.jsonl", blank)))
    [empty] = found(report, "empty")
    assert (empty.level, empty.count) == ("error", 20) and "'response'" in empty.message


def test_near_duplicates_differ_only_in_case_punctuation_and_whitespace(tmp_path):
    rows = qa_rows(20)
    rows.append({"prompt": "  " + rows[3]["prompt"].upper().replace(" ", "   "), "response": rows[3]["response"] + "!"})
    rows.append(dict(rows[5]))  # an exact duplicate: reported as such, not as a near one
    report = validate_data(objective_for("causal_lm", write_jsonl(tmp_path / "qa.jsonl", rows), test_fraction=0.0))
    [near] = found(report, "near_duplicates")
    assert (near.level, near.count, near.examples) == ("warning", 1, [21])
    assert "lowercased" in near.message and "row 21 ~ row 4" in near.message and "1 of 22 rows" in near.message
    assert [f.count for f in found(report, "duplicates")] == [1]


def test_the_same_text_with_different_labels_is_a_warning(tmp_path):
    rows = intent_rows(20)
    rows.append({"text": rows[0]["text"].lower(), "label": "invoice" if rows[0]["label"] == "refund" else "refund"})
    [conflict] = found(validate_data(objective_for("sequence_classification",
                                                   write_jsonl(tmp_path / "intents.jsonl", rows))), "label_conflicts")
    assert (conflict.level, conflict.count, conflict.examples) == ("warning", 1, [1, 21])


def test_prompt_response_formatting_problems_are_warnings(tmp_path):
    rows = qa_rows(20)
    rows[0]["prompt"] = f"Question: {rows[0]['prompt']}\nAnswer:"  # already formatted
    rows[1]["response"] = "Answer: " + rows[1]["response"]
    rows[2]["response"] = rows[2]["prompt"].lower()
    report = validate_data(objective_for("causal_lm", write_jsonl(tmp_path / "qa.jsonl", rows)))
    formatting = {f.examples[0]: f for f in found(report, "formatting")}
    assert sorted(formatting) == [1, 2, 3]
    assert all((f.level, f.count, len(f.examples)) == ("warning", 1, 1) for f in formatting.values())
    assert "prompts that already contain" in formatting[1].message and "'Answer:'" in formatting[1].message
    assert "start with 'Answer:'" in formatting[2].message
    assert "repeat their prompt" in formatting[3].message


def test_lines_that_are_not_json_objects_are_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(5)) + "{not json\n[1, 2]\n")
    [error] = validate_data(objective_for("causal_lm", path)).findings
    assert (error.level, error.check, error.examples, error.count) == ("error", "source", [6, 7], 2)


def test_a_report_renders_errors_and_round_trips_through_json(tmp_path):
    path = write_jsonl(tmp_path / "same.jsonl", qa_rows(1) * 12)
    report = validate_data(objective_for("causal_lm", path))
    console = Console(record=True, width=160)
    console.print(report.render())
    text = console.export_text()
    assert "error(s)" in text and "duplicates" in text and "leakage" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["errors"] == len(report.errors)
    assert {f["check"] for f in data["findings"]} == {f.check for f in report.findings}


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_local_format_is_read_row_by_row(tmp_path, suffix):
    rows = qa_rows(30)
    rows[7]["prompt"] = " "
    path = tmp_path / f"qa{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif suffix == ".csv":
        write_csv(path, rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    report = validate_data(objective_for("causal_lm", path))
    assert [(f.check, f.examples) for f in report.findings] == [("empty", [8])]
    assert report.stats["rows"]["file"] == 30 and sum(report.stats["tokens"][s]["truncated"] for s in SPLITS) == 0
