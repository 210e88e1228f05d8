"""Per-example scores of a trial's evaluations, kept in the trial's folder (not in the study: hundreds of
numbers per evaluation), for paired comparisons between trials scored on the same rows.

    <scores_dir>/step-20.json   {"choice_accuracy": {"rows": [3, 8, ...], "scores": [1.0, 0.0, ...]}, ...}

Written whole under a temporary name and renamed, so a reader in another process never sees half a file.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_scores(folder, 20, {"exact_match": {"rows": [0, 4], "scores": [1.0, 0.0]}})
    >>> read_scores(folder, 20)["exact_match"]["scores"], read_scores(folder, 40)
    ([1.0, 0.0], None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path


def scores_file(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step}.json"


def write_scores(folder: str | Path, step: int, per_example: Mapping[str, Mapping[str, list]]) -> None:
    """The evaluation at `step`'s per-example scores: metric -> {"rows", "scores"}."""
    path = scores_file(folder, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({name: {"rows": list(v["rows"]), "scores": list(v["scores"])}
                                   for name, v in per_example.items()}))
    partial.replace(path)


def read_scores(folder: str | Path, step: int) -> dict[str, dict[str, list]] | None:
    """What `write_scores` wrote for `step`, or None when that evaluation wrote none."""
    path = scores_file(folder, step)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def paired(first: Mapping[str, list], second: Mapping[str, list]) -> tuple[list[float], list[float]]:
    """The two trials' scores on the rows both scored, in row order; NaN scores (rows a metric leaves out)
    dropped from both.

    Example:
        >>> paired({"rows": [1, 2, 3], "scores": [1.0, 0.0, 1.0]}, {"rows": [2, 3, 4], "scores": [1.0, 1.0, 0.0]})
        ([0.0, 1.0], [1.0, 1.0])
    """
    theirs = dict(zip(second["rows"], second["scores"]))
    pairs = [(a, theirs[row]) for row, a in zip(first["rows"], first["scores"]) if row in theirs]
    pairs = [(a, b) for a, b in pairs if a == a and b == b]  # NaN != NaN
    return [a for a, _ in pairs], [b for _, b in pairs]
