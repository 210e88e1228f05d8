"""The one reader of a user's data file row by row.

The data checks (objectives/data/checks.py) and `ftsweep select`'s pool (search/aftersweep/select.py)
read a file through `read_rows`, so its values are typed the same for both, and as `datasets` types them
when it loads the file for training (objectives/data/sources.py, which `FILE_TYPES` tells which of its
builders reads a suffix): a CSV column of numbers only is numbers, an empty CSV cell is None.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pool.csv"
    >>> _ = path.write_text("text,id\\nwhere is my parcel?,7\\nreset my password,8\\n")
    >>> read_rows(path)
    ([{'text': 'where is my parcel?', 'id': 7}, {'text': 'reset my password', 'id': 8}], [1, 2])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The file types read row by row, and the `datasets` builder that loads each for training.
FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SHOWN_LINES = 5  # line numbers a message lists


class UnreadableFile(ValueError):
    """A data file that cannot be read as rows: `message` says what is wrong (without the file's name, which
    the caller knows under its own key), `fix` how to mend it, `rows` the row (line) numbers at fault."""

    def __init__(self, message: str, fix: str, rows: Sequence[int] = ()) -> None:
        super().__init__(f"{message}. {fix}")
        self.message, self.fix, self.rows = message, fix, list(rows)


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The file's rows as dicts, with their row numbers counted from 1 (JSON Lines: their line numbers).

    CSV goes through pandas, as `datasets` reads it: a numbers-only column holds numbers, an empty cell
    None. Parquet is read with pyarrow; a .json file is a list of objects, or JSON Lines (as `datasets`
    accepts); any other suffix is read as JSON Lines. Raises `UnreadableFile`.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "qa.jsonl"
        >>> _ = path.write_text('{"prompt": "hi"}\\n\\n[1, 2]\\n')
        >>> read_rows(path)
        Traceback (most recent call last):
        ...
        objectives.data.files.UnreadableFile: line 3 is not a JSON object (a JSON list). Fix: write one JSON object per line, e.g. {"prompt": "...", "response": "..."}.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types (ArrowInvalid, OSError)
            raise UnreadableFile(f"not readable as Parquet ({type(exc).__name__}: {_first_line(exc)})",
                                 "Fix: write it again with pandas' to_parquet or pyarrow.") from None
        return rows, list(range(1, len(rows) + 1))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                             "Fix: save it as UTF-8.") from None
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # JSON Lines in a .json file, which `datasets` reads too
        if isinstance(document, list) and all(isinstance(row, dict) for row in document):
            return document, list(range(1, len(document) + 1))
        if document is not None and (not isinstance(document, dict) or "\n" in text.strip()):
            raise UnreadableFile("is JSON but not a list of objects",
                                 'Fix: write one object per example: [{"prompt": ..., "response": ...}, ...].')
    return _read_json_lines(text)


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise UnreadableFile(f"not readable as CSV ({type(exc).__name__}: {_first_line(exc)})",
                             "Fix: save it as CSV with a header row.") from None
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    rows = [{str(k): _native(v) for k, v in record.items()} for record in records]
    return rows, list(range(1, len(rows) + 1))


def _read_json_lines(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    rows, numbers, bad = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(row, dict):
            bad.append((number, f"a JSON {_json_type(row)}"))
            continue
        rows.append(row)
        numbers.append(number)
    if bad:
        lines = [number for number, _ in bad]
        first, why = bad[0]
        message = (f"line {first} is not a JSON object ({why})" if len(bad) == 1 else
                   f"{_lines_text(lines)} are not JSON objects (line {first}: {why})")
        raise UnreadableFile(message, 'Fix: write one JSON object per line, e.g. {"prompt": "...", "response": "..."}.',
                             lines)
    return rows, numbers


def _lines_text(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:SHOWN_LINES]))
    more = f" and {len(numbers) - SHOWN_LINES} more" if len(numbers) > SHOWN_LINES else ""
    return f"line {shown}" if len(numbers) == 1 else f"lines {shown}{more}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list"}.get(type(value), "value")


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars -> int/float/bool


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
