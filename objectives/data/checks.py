"""Data validation before a sweep: find what would waste a sweep, and say how to fix it.

`validate_data(objective)` reads the data file itself first (`read_rows`, objectives/data/files.py),
so a missing column or a value of the wrong type is reported with its row numbers instead of crashing deep inside tokenization;
then it loads the exact splits trials will use (`load_splits`, the sweep's seed) and checks them
with the model's own tokenizer:

    report = validate_data(sweep.make_objective())
    console.print(report.render())      # a table of findings, rows per split, token lengths, labels
    report.errors                       # findings that must stop a launch; warnings do not

Every check is one small function listed in `CHECKS`: adding a check is a function plus a line.
Row numbers in findings count the data file's examples from 1 (for JSON Lines: its line
numbers); for a hub dataset, which cannot be read row by row, they count the loaded train,
validation and test rows in that order.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from spaces import ConfigError

from .conversations import CHAT_FORMATS, ROLES, conversation_problems, prompt_text, training_template
from .fairness import check_groups as fairness_groups
from .files import UnreadableFile, read_rows
from ..settings import DataConfig
from .sources import (
    Splits,
    from_pretrained,
    held_out_splits,
    load_saved_dataset,
    load_splits,
    local_data_file,
    resolve_model_path,
    saved_dataset_kind,
)

Level = Literal["error", "warning", "info"]

MAX_EXAMPLES = 5  # row numbers a finding lists
IMBALANCE_RATIO = 0.1  # smallest class below this share of the largest: a warning
# Findings after which the splits are not loaded: loading would crash, or check rows that are not there.
BLOCKING_CHECKS = ("source", "columns", "types", "conversations")
SPLITS = ("train", "validation", "test")
NEAR_DUPLICATE = "equal once lowercased, with punctuation removed and whitespace collapsed"


@dataclass
class Finding:
    """One thing `validate_data` noticed.

    Args:
        level: "error" stops a launch (the data cannot train, or metrics would mean nothing);
            "warning" is worth a look; "info" is context.
        check: the name of the check that found it (see `CHECKS`).
        message: what is wrong, with counts and the column or split.
        fix: what to change, or None.
        examples: a few row numbers (see the module docstring for how rows are counted).
        split: the split it concerns ("train", "validation", "test"); None for the whole file.
        count: how many rows (or labels) are affected, where that is a number.
        cause: the ConfigError this finding reports (the source or its splits could not be read), so a
            launch can raise it as it is instead of quoting it inside another one.

    Example:
        >>> Finding("warning", "duplicates", "3 rows repeat an earlier row", count=3).count
        3
    """

    level: Level
    check: str
    message: str
    fix: str | None = None
    examples: list[int] = field(default_factory=list)
    split: str | None = None
    count: int | None = None
    accepted: bool = False  # an error the sweep accepts (`dataset.checks: {check: warn}`): shown as a warning
    cause: ConfigError | None = field(default=None, repr=False, compare=False)


@dataclass
class DataReport:
    """What `validate_data` found, and statistics of the data trials will use.

    `stats` holds `rows` (per split, and `file`), `tokens` (per split: p50, p95, max, truncated,
    and for prompt -> response tasks `no_response`), `max_seq_length` and, for classification,
    `labels` (per split: label -> count).

    Example:
        >>> report = DataReport([Finding("warning", "duplicates", "3 rows repeat an earlier row")], {})
        >>> report.ok, len(report.warnings)
        (True, 1)
    """

    findings: list[Finding]
    stats: dict[str, Any]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def accepted(self) -> list[Finding]:
        """Errors the sweep accepts (`dataset.checks`): warnings now, recorded in the study at launch."""
        return [f for f in self.findings if f.accepted]

    @property
    def ok(self) -> bool:
        """No error: a sweep may start (warnings and accepted errors do not stop it)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `json.dumps(report.to_dict())` works."""
        return {"ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [_finding_dict(f) for f in self.findings], "stats": self.stats}

    def render(self):
        """A rich renderable: a headline, the findings (errors first), then rows, token lengths and labels per split."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        source = self.stats.get("source", "the data")
        if self.errors:
            headline = Text(f"Data check of {source}: {len(self.errors)} error(s), {len(self.warnings)} warning(s). "
                            "Errors stop a sweep; fix them first.", style="bold red")
        elif self.warnings:
            accepted = f" ({len(self.accepted)} accepted error(s))" if self.accepted else ""
            headline = Text(f"Data check of {source}: no error, {len(self.warnings)} warning(s){accepted}.",
                            style="bold yellow")
        else:
            headline = Text(f"Data check of {source}: no problem found.", style="bold green")
        parts: list[Any] = [headline]

        if self.findings:
            table = Table(title="Findings", title_justify="left", show_lines=True)
            for column in ("Level", "Check", "Split", "Finding", "Fix", "Rows"):
                table.add_column(column, overflow="fold")
            order = {"error": 0, "warning": 1, "info": 2}
            styles = {"error": "red", "warning": "yellow", "info": "cyan"}
            for f in sorted(self.findings, key=lambda f: order[f.level]):
                # Text, not markup: messages quote data, which may hold [brackets].
                table.add_row(Text("accepted" if f.accepted else f.level, style=styles[f.level]), Text(f.check), Text(f.split or ""),
                              Text(f.message), Text(f.fix or ""), Text(", ".join(map(str, f.examples))))
            parts.append(table)

        rows, tokens = self.stats.get("rows", {}), self.stats.get("tokens", {})
        splits = [s for s in SPLITS if s in rows]
        if splits:
            causal = any("no_response" in tokens.get(s, {}) for s in splits)
            title = f"Splits (max_seq_length {self.stats.get('max_seq_length', '?')})"
            table = Table(title=title, title_justify="left")
            for column in ("Split", "Examples", "Tokens p50", "p95", "max", "Truncated",
                           *(["No response token"] if causal else [])):
                table.add_column(column, justify="left" if column == "Split" else "right")
            for split in splits:
                lengths = tokens.get(split, {})
                cells = [lengths.get(k, "") for k in ("p50", "p95", "max", "truncated",
                                                      *(["no_response"] if causal else []))]
                table.add_row(split, str(rows[split]), *map(str, cells))
            parts.append(table)

        labels = self.stats.get("labels")
        if labels:
            table = Table(title="Labels", title_justify="left")
            table.add_column("Label")
            present = [s for s in SPLITS if s in labels]
            for split in present:
                table.add_column(split, justify="right")
            names = sorted({name for split in present for name in labels[split]},
                           key=lambda name: -labels.get("train", {}).get(name, 0))
            for name in names:
                table.add_row(Text(name), *(str(labels[s].get(name, 0)) for s in present))
            parts.append(table)
        return Group(*parts)


def _finding_dict(finding: Finding) -> dict[str, Any]:
    return {name: value for name, value in asdict(finding).items() if name != "cause"}  # its text is the message


def normalize(text: str) -> str:
    """The form near duplicates and leaks are compared in: lowercase, no punctuation, single spaces.

    Example:
        >>> normalize("  How do REFUNDS   work?!")
        'how do refunds work'
    """
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


_PUNCTUATION = re.compile(r"[^\w\s]")


def validate_data(objective) -> DataReport:
    """Check the data `objective` will train on; nothing is trained and nothing is written.

    Args:
        objective: an objective instance, set up or not (`sweep.make_objective()`). Its data
            config, budget (max_seq_length), options (prompt_template), model (for the tokenizer)
            and seed are the ones the sweep uses.

    Returns:
        A `DataReport`; `report.errors` are what must be fixed before a sweep.

    Example:
        >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
        >>> objective = get_objective("sequence_classification")(
        ...     ModelConfig(name_or_path="bundled:tiny-support-lm"), DataConfig(source="bundled:support-intents"),
        ...     TrainBudget(max_seq_length=64))
        >>> validate_data(objective).ok
        True
    """
    accepted = accepted_checks(objective.data_config, source=objective.source)
    data = _Data(objective)
    data.findings.extend(data.read())
    for check in CHECKS:
        data.findings.extend(check(data))
    for finding in data.findings:
        if finding.level != "error" or finding.check not in ACCEPTABLE_CHECKS:
            continue
        if finding.check in accepted:
            finding.level, finding.accepted = "warning", True
        else:
            how = f"dataset.checks: {{{finding.check}: warn}} in the sweep file, or --accept {finding.check}"
            finding.fix = f"{finding.fix or 'Fix the data.'} Or go on with it as it is: {how}."
    return DataReport(data.findings, data.stats)


def accepted_checks(config, *, source: str | None = None) -> set[str]:
    """The checks whose errors `config.checks` accepts ('warn'); refuses a name no check has.

    Example:
        >>> from objectives import DataConfig
        >>> sorted(accepted_checks(DataConfig(source="d.jsonl", checks={"leakage": "warn", "labels": "error"})))
        ['leakage']
    """
    for name in config.checks:
        if name not in ACCEPTABLE_CHECKS:
            refused = name in (*BLOCKING_CHECKS, "source", "splits")
            raise ConfigError(
                f"the '{name}' check cannot be accepted: trials could not read the data" if refused
                else f"there is no data check named '{name}'", source=source, key=f"dataset.checks.{name}",
                value=config.checks[name], allowed=list(ACCEPTABLE_CHECKS),
                hint="Fix: fix the data for this one." if refused
                else "Fix: use a check name `ftsweep validate-data` reports.",
            )
    return {name for name, level in config.checks.items() if level == "warn"}


# ---------------------------------------------------------------------------------- the data


class _Data:
    """What the checks look at: the file's rows, the splits trials use, the tokenizer, and what the
    task says about its columns (`Task.data_profile`)."""

    def __init__(self, objective) -> None:
        self.objective = objective
        self.task = objective.task
        self.config = objective.data_config
        self.profile = self.task.data_profile()
        self.columns: list[str] = list(self.profile.columns)
        self.text_columns = list(self.profile.text_columns)
        self.label_column = self.profile.label_column
        self.input_column = self.profile.input_column  # what a leak is judged on: the prompt, or the text to classify
        self.rows: list[dict[str, Any]] | None = None
        self.row_numbers: list[int] = []
        self.present: list[str] = []  # the columns the data has
        self.splits: Splits | None = None
        self.findings: list[Finding] = []
        self.stats: dict[str, Any] = {"source": self.config.source}

    @property
    def blocked(self) -> bool:
        """A missing column or a wrongly typed value was found: tokenizing the rows would fail."""
        return any(f.level == "error" and f.check in BLOCKING_CHECKS for f in self.findings)

    @property
    def complete(self) -> bool:
        """The rows are read and every required column is in them."""
        return self.rows is not None and all(c in self.present for c in self.columns)

    def config_key(self, column: str) -> str:
        """The sweep-file key that names `column` (e.g. 'dataset.prompt_column')."""
        for key in ("prompt_column", "response_column", "text_column", "label_column"):
            if getattr(self.config, key) == column:
                return f"dataset.{key}"
        return "dataset"

    def read(self) -> list[Finding]:
        """Read the rows: the file (or save_to_disk folder) itself when it is local, else the loaded splits
        (a hub dataset, a folder of split files)."""
        try:
            path = local_data_file(self.config, self.objective.source)
        except ConfigError as err:
            return [_from_config_error(err, "source")]
        saved = path is not None and path.is_dir() and saved_dataset_kind(path) is not None
        if path is None or not (path.is_file() or saved):
            return self._read_splits()
        try:
            rows, numbers = _read_saved(path, self.config) if saved else read_rows(path)
        except UnreadableFile as problem:
            return [Finding("error", "source", f"{self.config.source}: {problem.message}", fix=problem.fix,
                            examples=problem.rows[:MAX_EXAMPLES], count=len(problem.rows) or None)]
        if not rows:
            return [Finding("error", "source", f"{self.config.source} holds no example",
                            fix="Fix: point dataset.source at a file with one example per row.")]
        self.rows, self.row_numbers = rows, numbers
        self.present = list(dict.fromkeys(key for row in rows for key in row))
        self.stats["rows"] = {"file": len(rows)}
        return []

    def _read_splits(self) -> list[Finding]:
        found = self.load()
        if self.splits is None:
            return found
        self.rows = [row for split in self.splits if split is not None for row in split]
        self.row_numbers = list(range(1, len(self.rows) + 1))
        self.present = list(self.columns)
        return found

    def load(self) -> list[Finding]:
        """Load the splits trials use, exactly as the objective does (same config, seed and columns)."""
        try:
            self.splits = load_splits(self.config, seed=self.objective.seed, columns=self.columns,
                                      source=self.objective.source)
        except ConfigError as err:
            return [_from_config_error(err, "splits")]
        rows = self.stats.setdefault("rows", {})
        rows.update({name: len(split) for name, split in self.named_splits()})
        return []

    def named_splits(self) -> list[tuple[str, Any]]:
        if self.splits is None:
            return []
        return [(name, split) for name, split in zip(SPLITS, self.splits) if split is not None]

    @cached_property
    def _rows_by_example(self) -> dict[tuple, list[int]]:
        found: dict[tuple, list[int]] = {}
        for row, number in zip(self.rows or [], self.row_numbers):
            found.setdefault(_key(row, self.columns), []).append(number)
        return found

    def input_text(self, row: dict[str, Any]) -> str | None:
        """What a leak is judged on, as text: the input column, or what a chat or instruction row asks (its
        turns before the answer; an Alpaca row's instruction and input together)."""
        fmt = self.profile.conversation_format
        if fmt is not None:
            return prompt_text(row, fmt)
        value = row.get(self.input_column)
        return value if isinstance(value, str) else None

    @cached_property
    def _rows_by_input(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for row, number in zip(self.rows or [], self.row_numbers):
            value = self.input_text(row)
            if value is not None:
                found.setdefault(normalize(value), []).append(number)
        return found

    def rows_of(self, examples: Iterable[dict[str, Any]]) -> list[int]:
        """Row numbers (in the file) of a few examples taken from a split."""
        numbers: list[int] = []
        for example in examples:
            numbers.extend(self._rows_by_example.get(_key(example, self.columns), []))
            if len(numbers) >= MAX_EXAMPLES:
                break
        return sorted(set(numbers))[:MAX_EXAMPLES]

    def rows_with_input(self, normalized: Iterable[str]) -> list[int]:
        """Row numbers (in the file) whose input column normalizes to one of `normalized`."""
        numbers: list[int] = []
        for text in normalized:
            numbers.extend(self._rows_by_input.get(text, []))
            if len(numbers) >= MAX_EXAMPLES:
                break
        return sorted(set(numbers))[:MAX_EXAMPLES]

    @cached_property
    def tokenizer(self):
        """The objective's tokenizer when it is set up, else the model's, loaded as setup() does."""
        if self.objective.tokenizer is not None:
            return self.objective.tokenizer
        import transformers

        model = self.objective.model_config
        path = resolve_model_path(model, source=self.objective.source)
        return from_pretrained(transformers.AutoTokenizer.from_pretrained, path, config=model,
                               source=self.objective.source)

    @cached_property
    def token_lengths(self) -> dict[str, list[tuple[int, int]]] | None:
        """Per split, (full length, prompt length) of every example in tokens, as the task encodes it
        (a task without a prompt part: 0); None when the task does not say (`Task.token_lengths`)."""
        lengths: dict[str, list[tuple[int, int]]] = {}
        for name, split in self.named_splits():
            measured = self.task.token_lengths(self.tokenizer, split) if len(split) else []
            if measured is None:
                return None
            lengths[name] = measured
        return lengths


def _key(row: dict[str, Any], columns: Sequence[str]) -> tuple:
    return tuple(_hashable(row.get(c)) for c in columns)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


def _from_config_error(err: ConfigError, check: str) -> Finding:
    message = str(err)
    if err.hint:
        message = message.removesuffix(f". {err.hint}")
    return Finding("error", check, message, fix=err.hint, cause=err)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _rows_text(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:MAX_EXAMPLES]))
    return f"row {shown}" if len(numbers) == 1 else f"rows {shown}" + (", ..." if len(numbers) > MAX_EXAMPLES else "")


# ---------------------------------------------------------------------------------- reading files
# A file is read by objectives/data/files.py (`read_rows`); a save_to_disk folder here, through `datasets`.


def _read_saved(folder: Path, config: DataConfig) -> tuple[list[dict[str, Any]], list[int]]:
    """The examples of a save_to_disk folder's splits that trials read -- train, then the folder's own
    validation and test splits when it has them -- numbered from 1 in that order."""
    try:
        splits = load_saved_dataset(folder)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (missing shard, bad JSON, arrow errors)
        raise UnreadableFile(f"not readable as a save_to_disk folder ({type(exc).__name__}: {exc})",
                             "Fix: save it again with save_to_disk; every split folder and .arrow file it names must "
                             "be there.") from None
    used = dict.fromkeys(name for name in (config.train_split, *held_out_splits(config, list(splits)))
                         if name is not None and name in splits)
    rows = [row for name in used for row in splits[name]]
    return rows, list(range(1, len(rows) + 1))


# ---------------------------------------------------------------------------------- checks: the file


def check_columns(data: _Data) -> list[Finding]:
    """Every column the objective reads is in the data."""
    if data.rows is None:
        return []
    missing = [c for c in data.columns if c not in data.present]
    findings = []
    for column in missing:
        unused = [c for c in data.present if c not in data.columns]
        guess = (difflib.get_close_matches(column, unused, n=1, cutoff=0.5)
                 or (unused if len(unused) == len(missing) == 1 else []))  # one unused column for one missing
        key = data.config_key(column)
        fix = f"Fix: rename the field to '{column}' in the data, or set {key}"
        fix += f": {guess[0]} in the sweep file." if guess else " in the sweep file to the column that holds it."
        findings.append(Finding(
            "error", "columns",
            f"{data.config.source} has no column '{column}' ({key}, needed by {data.task.name}); "
            f"columns present: {', '.join(repr(c) for c in data.present) or 'none'}", fix=fix))
    return findings


def check_types(data: _Data) -> list[Finding]:
    """Text columns hold strings; the label column holds class names or integers."""
    if data.rows is None:
        return []
    findings = []
    for column in [c for c in data.columns if c in data.present]:
        is_label = column == data.label_column
        if column not in data.text_columns and not is_label:
            continue
        bad: list[int] = []
        found: Counter[str] = Counter()
        for row, number in zip(data.rows, data.row_numbers):
            value = row.get(column)
            if _label_ok(value) if is_label else isinstance(value, str):
                continue
            bad.append(number)
            found[_type_name(value)] += 1
        if not bad:
            continue
        what = "a class name or an integer" if is_label else "text (a string)"
        kinds = ", ".join(f"{kind} in {_n(n, 'row')}" for kind, n in found.most_common())
        fix = (f"Fix: give every row a '{column}' that is {what}"
               + ("" if is_label else "; quote numbers, join lists into one string") + ", or drop those rows.")
        findings.append(Finding(
            "error", "types",
            f"column '{column}' must hold {what} in every row; {len(bad)} of {len(data.rows)} rows do not: "
            f"{kinds} ({_rows_text(bad)})", fix=fix, examples=bad[:MAX_EXAMPLES], count=len(bad)))
    return findings


def check_conversations(data: _Data) -> list[Finding]:
    """Chat and instruction rows: turns with known roles, an assistant turn with text, a chat template to
    render them with (objectives/data/conversations.py)."""
    fmt = data.profile.conversation_format
    if fmt is None or not data.complete:
        return []
    problems: dict[str, list[int]] = {}
    for row, number in zip(data.rows, data.row_numbers):
        for problem in conversation_problems(row, fmt):
            # "turn 3 has unknown role 'bot'" and "turn 1 has unknown role 'bot'" are one finding.
            problems.setdefault(re.sub(r"^turn \d+ ", "a turn ", problem), []).append(number)
    findings = [Finding("error", "conversations", f"{_n(len(rows), 'row')}: {problem} ({_rows_text(rows)})",
                        fix="Fix: give every row at least one non-empty assistant turn and roles "
                        f"{', '.join(ROLES)} (ShareGPT's human/gpt are read as user/assistant), or drop those rows.",
                        examples=rows[:MAX_EXAMPLES], count=len(rows)) for problem, rows in problems.items()]
    if fmt in CHAT_FORMATS or data.objective.options.chat_template:
        try:
            tokenizer = data.tokenizer
        except (ConfigError, OSError, ValueError):
            return findings  # check_lengths says the tokenizer did not load
        given = data.objective.options.chat_template
        template, masking = training_template(tokenizer, given if isinstance(given, str) else None)
        if template is None:
            findings.append(Finding(
                "error", "conversations", f"{fmt} data is rendered with a chat template, and the tokenizer has none",
                fix="Fix: give the template itself (a Jinja string) in objective.args.chat_template, or use a "
                "tokenizer that has one."))
        else:
            data.stats["chat_template"] = {"masking": masking}
    return findings


def _label_ok(value: Any) -> bool:
    # The objective maps str(label) to a class id: floats are fine only when they are whole numbers
    # (a CSV label column with one empty cell is read as 0.0, 1.0, ...).
    return isinstance(value, (str, int)) or (isinstance(value, float) and value.is_integer())


def _type_name(value: Any) -> str:
    if value is None:
        return "null or absent"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else "a non-integer number"
    return {int: "a number", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def check_empty(data: _Data) -> list[Finding]:
    """Text that is empty or only whitespace teaches nothing (all of a column empty: an error)."""
    if data.rows is None:
        return []
    findings = []
    for column in [c for c in data.text_columns if c in data.present]:
        texts = [(row.get(column), n) for row, n in zip(data.rows, data.row_numbers)]
        empty = [n for value, n in texts if isinstance(value, str) and not value.strip()]
        strings = sum(isinstance(value, str) for value, _ in texts)
        if not empty:
            continue
        every = len(empty) == strings
        where = "every row" if every else f"{len(empty)} of {len(texts)} rows"
        findings.append(Finding(
            "error" if every else "warning", "empty",
            f"column '{column}' is empty or whitespace in {where} ({_rows_text(empty)})",
            fix=f"Fix: fill in '{column}' or drop those rows"
            + (f"; or check that {data.config_key(column)} names the right column." if every else "."),
            examples=empty[:MAX_EXAMPLES], count=len(empty)))
    return findings


def check_duplicates(data: _Data) -> list[Finding]:
    """Rows that repeat an earlier row in every column the objective reads."""
    if not data.complete or len(data.rows) < 2:
        return []
    first: dict[tuple, int] = {}
    repeats: list[tuple[int, int]] = []  # (row, the earlier row it repeats)
    for row, number in zip(data.rows, data.row_numbers):
        key = _key(row, data.columns)
        if key in first:
            repeats.append((number, first[key]))
        else:
            first[key] = number
    if not repeats:
        return []
    rows = [n for n, _ in repeats]
    if len(first) == 1:
        return [Finding("error", "duplicates", f"all {len(data.rows)} rows are the same example: nothing to learn "
                        "or evaluate", fix="Fix: check how the file was exported; it needs many distinct examples.",
                        examples=rows[:MAX_EXAMPLES], count=len(repeats))]
    example = f"row {repeats[0][0]} repeats row {repeats[0][1]}"
    return [Finding("warning", "duplicates",
                    f"{len(repeats)} of {len(data.rows)} rows repeat an earlier row exactly (e.g. {example}); "
                    f"only {len(first)} examples are distinct, and repeats land in train and held-out splits alike",
                    fix="Fix: drop the repeated rows (e.g. pandas drop_duplicates) unless the weighting is on purpose.",
                    examples=rows[:MAX_EXAMPLES], count=len(repeats))]


def check_near_duplicates(data: _Data) -> list[Finding]:
    """Rows equal to an earlier row once normalized (case, punctuation, whitespace), though not exactly."""
    if not data.complete:
        return []
    seen: set[tuple] = set()
    first: dict[tuple, int] = {}
    near: list[tuple[int, int]] = []
    for row, number in zip(data.rows, data.row_numbers):
        key = _key(row, data.columns)
        if key in seen:
            continue  # an exact duplicate, reported by check_duplicates
        seen.add(key)
        loose = tuple(normalize(v) if isinstance(v, str) and c in data.text_columns else v
                      for c, v in zip(data.columns, key))
        if loose in first:
            near.append((number, first[loose]))
        else:
            first[loose] = number
    if not near:
        return []
    return [Finding("warning", "near_duplicates",
                    f"{len(near)} of {len(data.rows)} rows nearly repeat an earlier row ({NEAR_DUPLICATE}; "
                    f"e.g. row {near[0][0]} ~ row {near[0][1]})",
                    fix="Fix: keep one of each, unless the variants are on purpose (augmentation).",
                    examples=[n for n, _ in near][:MAX_EXAMPLES], count=len(near))]


def check_label_conflicts(data: _Data) -> list[Finding]:
    """Classification: the same text (normalized) with different labels: noise the model cannot fit."""
    if data.label_column is None or not data.complete:
        return []
    labels: dict[str, set] = {}
    rows: dict[str, list[int]] = {}
    for row, number in zip(data.rows, data.row_numbers):
        text = row.get(data.input_column)
        if isinstance(text, str) and text.strip():
            labels.setdefault(normalize(text), set()).add(str(row.get(data.label_column)))
            rows.setdefault(normalize(text), []).append(number)
    conflicting = [t for t, found in labels.items() if len(found) > 1]
    if not conflicting:
        return []
    examples = sorted(n for t in conflicting for n in rows[t])
    return [Finding("warning", "label_conflicts",
                    f"{_n(len(conflicting), 'text')} (normalized) carry different labels in different rows "
                    f"({_rows_text(examples)})",
                    fix="Fix: decide on one label per text; conflicting rows cap the accuracy any trial can reach.",
                    examples=examples[:MAX_EXAMPLES], count=len(conflicting))]


def check_formatting(data: _Data) -> list[Finding]:
    """Tasks with a prompt template: prompts already formatted with the template, responses that
    start with its answer marker, or that only repeat the prompt."""
    template, response_col = data.profile.prompt_template, data.profile.response_column
    if template is None or response_col is None or not data.complete:
        return []
    before, _, after = (part.strip() for part in template.partition("{prompt}"))
    prompt_col = data.input_column
    findings = []

    def report(rows: list[int], message: str, fix: str) -> None:
        if rows:
            findings.append(Finding("warning", "formatting", f"{message}: {_n(len(rows), 'row')} ({_rows_text(rows)})",
                                    fix=fix, examples=rows[:MAX_EXAMPLES], count=len(rows)))

    pairs = [(row.get(prompt_col), row.get(response_col), n) for row, n in zip(data.rows, data.row_numbers)]
    pairs = [(p, r, n) for p, r, n in pairs if isinstance(p, str) and isinstance(r, str)]
    markers = [m for m in (before, after) if m]
    report([n for p, _, n in pairs if any(m in p for m in markers)],
           f"prompts that already contain the template's text {' or '.join(repr(m) for m in markers)} "
           "(the template adds it again, so the model sees it twice)",
           f"Fix: store the bare question in '{prompt_col}', or set objective.args.prompt_template: "
           "'{prompt}' when the prompts are already formatted.")
    if after:
        report([n for _, r, n in pairs if r.lstrip().startswith(after)],
               f"responses that start with {after!r}, which the template already ends with",
               f"Fix: remove the leading {after!r} from '{response_col}'.")
    report([n for p, r, n in pairs if r.strip() and normalize(r) == normalize(p)],
           "responses that only repeat their prompt", f"Fix: check the '{response_col}' column holds the answers.")
    return findings


# ---------------------------------------------------------------------------------- checks: the splits


def check_splits(data: _Data) -> list[Finding]:
    """The train/validation/test splits trials use can be made (not tried while the rows are broken)."""
    if data.splits is not None or data.rows is None:
        return []  # already loaded (a hub dataset), or the source could not be read at all
    if data.blocked:
        return [Finding("info", "splits", "lengths, labels and leakage per split are checked once the errors "
                        "above are fixed")]
    return data.load()


def check_lengths(data: _Data) -> list[Finding]:
    """Examples longer than budget.max_seq_length are truncated; token length percentiles per split."""
    if data.splits is None or data.blocked:
        return []
    try:
        _ = data.tokenizer  # loaded here so a model problem reads as one, apart from the data's
    except (ConfigError, OSError, ValueError) as err:
        return [Finding("warning", "lengths", f"token lengths not checked: the tokenizer did not load ({err})")]
    try:
        lengths = data.token_lengths
    except (KeyError, IndexError, ValueError) as err:  # a prompt_template with braces besides {prompt}
        return [Finding("warning", "lengths", f"token lengths not checked: prompt_template cannot be applied ({err!r})",
                        fix="Fix: double any literal brace in objective.args.prompt_template ({{ and }}).")]
    if lengths is None:
        return []
    max_len = data.objective.budget.max_seq_length
    data.stats["max_seq_length"] = max_len
    stats = data.stats.setdefault("tokens", {})
    findings = []
    for name, split in data.named_splits():
        full = [total for total, _ in lengths[name]]
        # Rows whose prompt leaves no room for a response are dropped: check_prompt_lengths.
        truncated = [i for i, (total, prompt) in enumerate(lengths[name]) if total > max_len and prompt < max_len]
        stats[name] = {**_percentiles(full), "truncated": len(truncated)}
        if truncated:
            longest = max(full[i] for i in truncated)
            what = "lose the end of their response" if data.profile.response_column else "are cut"
            findings.append(Finding(
                "warning", "lengths",
                f"{len(truncated)} of {len(split)} {name} examples are longer than budget.max_seq_length "
                f"({max_len} tokens) and {what} (longest {longest} tokens; p95 {stats[name]['p95']})",
                fix=_length_fix(stats[name]["p95"], longest, max_len),
                examples=data.rows_of(split[i] for i in truncated[:MAX_EXAMPLES]), split=name, count=len(truncated)))
    return findings


def _length_fix(p95: int, longest: int, max_len: int) -> str:
    if p95 > max_len:
        return f"Fix: raise budget.max_seq_length to about {p95} (95 % of examples fit), or shorten the examples."
    return (f"Fix: only a few are this long: shorten or drop them, or raise budget.max_seq_length to {longest} "
            "to keep them whole (memory and time per step grow with it).")


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def at(q: float) -> int:  # nearest rank: the smallest value with a share q of the values at or below it
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def check_prompt_lengths(data: _Data) -> list[Finding]:
    """Prompt -> response tasks: prompts that fill max_seq_length alone leave no response token; the
    task drops those rows (all of train or validation dropped: the sweep cannot run)."""
    if data.splits is None or data.profile.response_column is None or "tokens" not in data.stats:
        return []
    max_len = data.objective.budget.max_seq_length
    findings = []
    for name, split in data.named_splits():
        dropped = [i for i, (_, prompt) in enumerate(data.token_lengths[name]) if prompt >= max_len]
        data.stats["tokens"][name]["no_response"] = len(dropped)
        if not dropped:
            continue
        fatal = len(dropped) == len(split) and name != "test"
        findings.append(Finding(
            "error" if fatal else "warning", "prompt_lengths",
            f"{len(dropped)} of {len(split)} {name} prompts fill budget.max_seq_length ({max_len} tokens) with the "
            "template alone, leaving no response token; the objective drops those rows",
            fix="Fix: raise budget.max_seq_length or shorten the prompts (or objective.args.prompt_template).",
            examples=data.rows_of(split[i] for i in dropped[:MAX_EXAMPLES]), split=name, count=len(dropped)))
    return findings


def check_labels(data: _Data) -> list[Finding]:
    """Classification: label counts per split; one label only (error), imbalance in train, and
    held-out labels that train never shows."""
    if data.splits is None or data.label_column is None:
        return []
    counts = {name: Counter(str(label) for label in split[data.label_column]) for name, split in data.named_splits()}
    data.stats["labels"] = {name: dict(c.most_common()) for name, c in counts.items()}
    every = set().union(*counts.values())
    if len(every) < 2:
        return [Finding("error", "labels", f"column '{data.label_column}' has {len(every)} distinct value(s) "
                        f"({', '.join(map(repr, sorted(every)))}); classification needs at least 2", count=len(every),
                        fix=f"Fix: check {data.config_key(data.label_column)} names the label column, and that the "
                        "data holds examples of every class.")]
    findings = []
    train = counts["train"]
    if len(train) >= 2:
        (big, most), (small, least) = train.most_common()[0], train.most_common()[-1]
        if least < IMBALANCE_RATIO * most:
            findings.append(Finding(
                "warning", "labels",
                f"train labels are imbalanced: '{small}' has {least} rows, '{big}' {most} "
                f"(1:{most / least:.0f}, below 1:{1 / IMBALANCE_RATIO:.0f})", split="train", count=least,
                fix="Fix: collect or oversample the rare classes, and prefer f1_macro over accuracy as the metric."))
    for name in ("validation", "test"):
        unseen = sorted(set(counts.get(name, ())) - set(train))
        if unseen:
            rows = sum(counts[name][label] for label in unseen)
            findings.append(Finding(
                "warning", "labels",
                f"{name} has label(s) that train never shows: {', '.join(map(repr, unseen))} ({rows} rows)",
                fix="Fix: make sure every class has training examples (more data, or a stratified split).",
                split=name, count=len(unseen)))
    return findings


def check_leakage(data: _Data) -> list[Finding]:
    """Held-out examples whose input (normalized) also appears in train, or test inputs also in
    validation: their metrics measure memory, not generalization."""
    if data.splits is None or data.blocked:
        return []
    def texts(split) -> list[str]:
        if data.profile.conversation_format is None:  # a column of text: read as a column (fast)
            return [normalize(v) if isinstance(v, str) else str(v) for v in split[data.input_column]]
        return [normalize(text) for text in map(data.input_text, split) if text is not None]

    inputs = {name: texts(split) for name, split in data.named_splits()}
    findings = []
    for held, seen_in in (("validation", "train"), ("test", "train"), ("test", "validation")):
        if held not in inputs or seen_in not in inputs:
            continue
        known = set(inputs[seen_in])
        leaked = [text for text in inputs[held] if text in known]
        if not leaked:
            continue
        findings.append(Finding(
            "error", "leakage",
            f"{len(leaked)} of {len(inputs[held])} {held} examples have a '{data.input_column}' that is also in "
            f"{seen_in} ({NEAR_DUPLICATE}): {held} metrics would reward memorizing, not generalizing",
            fix="Fix: drop duplicated inputs before splitting (duplicates of one example end up on both sides), "
            "or remove them from the held-out split.",
            examples=data.rows_with_input(leaked), split=held, count=len(leaked)))
    return findings


def check_groups(data: _Data) -> list[Finding]:
    """Classification with dataset.group_column: the groups fairness metrics compare (objectives/data/fairness.py)."""
    column = data.profile.group_column
    if data.splits is None or not column:
        return []
    splits = dict(data.named_splits())
    try:
        warnings = fairness_groups(splits["train"], splits["validation"], column, label_column=data.label_column,
                                   source=data.objective.source)
    except ConfigError as err:
        return [Finding("error", "groups", err.message, fix=err.hint)]
    data.stats["groups"] = {name: dict(Counter(str(g) for g in split[column]).most_common())
                            for name, split in splits.items()}
    return [Finding("warning", "groups", text) for text in warnings]


# The checks, in order: the file's rows, then (once those can be split) the splits trials use.
CHECKS: list[Callable[[_Data], Iterable[Finding]]] = [
    check_columns,
    check_types,
    check_conversations,
    check_empty,
    check_duplicates,
    check_near_duplicates,
    check_label_conflicts,
    check_formatting,
    check_splits,
    check_lengths,
    check_prompt_lengths,
    check_labels,
    check_groups,
    check_leakage,
]

# Checks whose errors a sweep may accept: all but those after which the data cannot be read or split.
ACCEPTABLE_CHECKS = tuple(name for name in (check.__name__.removeprefix("check_") for check in CHECKS)
                          if name not in (*BLOCKING_CHECKS, "splits"))

__all__ = ["ACCEPTABLE_CHECKS", "CHECKS", "DataReport", "Finding", "accepted_checks", "normalize", "validate_data"]
