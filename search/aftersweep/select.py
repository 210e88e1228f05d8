"""`ftsweep select`: which unlabeled examples to label next (active learning by uncertainty).

A trained adapter (what `ftsweep train` wrote) reads every row of an unlabeled pool; the rows it is
least sure about are the ones whose labels teach it most, so the top k are written out for labeling:

    ftsweep select --adapter runs/intents-trial-3 --pool unlabeled.jsonl --k 50 --strategy margin

Uncertainty, for a probability distribution p over classes (or over the vocabulary):

    entropy           -sum_i p_i log p_i (nats)
    margin            1 - (p_1 - p_2), p_1 and p_2 the two largest probabilities
    least_confidence  1 - p_1

The run's task scores each row (`Task.score_uncertainty`): sequence_classification scores the
softmax of the class logits. causal_lm formats each row as in training (the run's prompt template
or chat template, over the columns it names), greedy-decodes an answer (up to `max_new_tokens`) and
averages the score of the distributions the answer was read from: one per generated token, the
end-of-sequence token included (deciding to stop is part of the answer), each the softmax of the
model's raw logits. For least_confidence that is 1 - the mean probability of the greedy tokens.

Rows are ranked by descending uncertainty; rows equal to 6 decimals keep their pool order, so the
selection is deterministic. The output (JSON lines) holds each selected row's own fields plus
`uncertainty`, `strategy`, `pool_row` (1-based position in the pool) and the model's guess, in the
task's `prediction_field`: `predicted_label` (classification) or `predicted_response` (causal_lm).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.data.files import UnreadableFile, read_rows
from objectives.evaluation.metrics import UNCERTAINTY_STRATEGIES, uncertainty  # noqa: F401 (uncertainty: part of this module's API)
from objectives.tasks import Scored
from spaces import ConfigError

from ..sweep import run_objective
from .trained import TrainedRun, load_adapter, load_trained

STRATEGIES = UNCERTAINTY_STRATEGIES
POOL_SUFFIXES = (".jsonl", ".csv")
ADDED_FIELDS = ("uncertainty", "strategy", "pool_row", "predicted_label", "predicted_response")
TIE_DECIMALS = 6  # batched inference differs from unbatched in the last float bits; equal texts must tie


# ---------------------------------------------------------------------------------------- uncertainty


def score_pool(objective, model, rows: Sequence[Mapping[str, Any]], *, strategy: str, batch_size: int,
               max_new_tokens: int | None = None) -> list[Scored]:
    """Score every row with the adapter (set up by `load_adapter`), as the run's task reads it."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    with torch.no_grad():
        return objective.task.score_uncertainty(model, objective.tokenizer, objective.tokenized_data.state, rows,
                                                strategy=strategy, batch_size=batch_size,
                                                max_new_tokens=max_new_tokens)


# ---------------------------------------------------------------------------------------- the pool


def read_pool(path: str | Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a .jsonl or .csv pool, read as the data checks read a data file (`read_rows`); every
    row must hold text in each of `columns`.

    Raises ConfigError naming the file, the missing column and the columns present.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("pool file not found", key="--pool", value=str(path))
    suffix = path.suffix.lower()
    if suffix not in POOL_SUFFIXES:
        raise ConfigError("unsupported pool file type", key="--pool", value=str(path), allowed=list(POOL_SUFFIXES))
    try:
        rows, _ = read_rows(path)  # as the data checks and `datasets` read a file: a CSV's number columns are numbers
    except UnreadableFile as problem:
        raise ConfigError(problem.message, source=str(path), key="--pool", hint=problem.fix) from None
    if not rows:
        raise ConfigError("the pool has no rows", source=str(path), key="--pool")
    present = list(dict.fromkeys(k for row in rows for k in row))
    missing = [c for c in columns if c not in present]
    if missing:
        raise ConfigError(f"the pool has no column '{missing[0]}', which the adapter's task reads",
                          source=str(path), key="--pool", value=missing[0], allowed=f"columns present: {present}",
                          hint="Fix: rename the column in the pool (or train with dataset.text_column / "
                          "prompt_column, or the prompt template, naming it).")
    for column in columns:
        bad = [n for n, row in enumerate(rows, start=1) if not isinstance(row.get(column), str)]
        if not bad:
            continue
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ConfigError(f"{'row' if len(bad) == 1 else 'rows'} {shown} {'holds' if len(bad) == 1 else 'hold'} "
                          f"no text in column '{column}'", source=str(path), key="--pool",
                          value=rows[bad[0] - 1].get(column), hint="Fix: drop those rows or fill them in.")
    return rows


def input_columns(trained: TrainedRun) -> list[str]:
    """The columns the model reads (`Task.input_columns`): the text (classification), or those the
    prompt template names (causal_lm: `prompt`, or every `{column}` of the run's prompt_template)."""
    run = trained.run
    return run_objective(run, trained.objective_cls).task.input_columns()


# ---------------------------------------------------------------------------------------- select


@dataclass
class Selection:
    """What `select` chose: the selected rows (pool fields plus the added ones), best first."""

    rows: list[dict[str, Any]]
    out: Path
    pool_size: int
    strategy: str
    prediction_field: str
    notes: list[str] = field(default_factory=list)


def default_out(pool: str | Path) -> Path:
    """`unlabeled.jsonl` -> `unlabeled.to_label.jsonl`, next to the pool."""
    pool = Path(pool)
    return pool.with_name(f"{pool.stem}.to_label.jsonl")


def rank(values: Sequence[float]) -> list[int]:
    """Pool indices by descending uncertainty; values equal to TIE_DECIMALS decimals keep pool order.

    Example:
        >>> rank([0.1, 0.7, 0.1, 0.7000000001])
        [1, 3, 0, 2]
    """
    keys = [round(v, TIE_DECIMALS) if math.isfinite(v) else -math.inf for v in values]
    return sorted(range(len(values)), key=lambda i: -keys[i])  # sorted() is stable: ties keep pool order


def select(adapter: str | Path, pool: str | Path, k: int, *, strategy: str = "entropy",
           out: str | Path | None = None, batch_size: int | None = None, max_new_tokens: int | None = None,
           force: bool = False) -> Selection:
    """Rank `pool` by the adapter's uncertainty and write the `k` most uncertain rows to `out`.

    Example:
        >>> pool = tmp / "unlabeled.jsonl"
        >>> _ = pool.write_text("".join(json.dumps({"prompt": q}) + "\\n" for q in
        ...                             ["How do refunds work?", "Where is my parcel?", "Can I change my address?"]))
        >>> chosen = select(trained_dir, pool, 2, strategy="margin")  # trained_dir: a `ftsweep train` output
        >>> chosen.out.name, len(chosen.rows), chosen.prediction_field
        ('unlabeled.to_label.jsonl', 2, 'predicted_response')
    """
    if strategy not in STRATEGIES:
        raise ConfigError("unknown uncertainty strategy", key="--strategy", value=strategy, allowed=STRATEGIES)
    if k < 1:
        raise ConfigError("--k must be at least 1", key="--k", value=k)
    if batch_size is not None and batch_size < 1:
        raise ConfigError("--batch-size must be at least 1", key="--batch-size", value=batch_size)
    out = Path(out).expanduser() if out else default_out(pool)
    if out.exists() and not force:
        # It may already hold labels someone typed in.
        raise ConfigError("the output file exists", key="--out", value=str(out),
                          hint="Fix: choose another --out, or pass --force to overwrite it.")
    trained = load_trained(adapter)
    rows = read_pool(pool, input_columns(trained))
    objective, model = load_adapter(trained)
    scored = score_pool(objective, model, rows, strategy=strategy,
                        batch_size=batch_size or trained.run.budget.eval_batch_size, max_new_tokens=max_new_tokens)
    prediction = objective.task.prediction_field
    chosen = []
    for i in rank([s.uncertainty for s in scored])[:k]:
        # The pool's own fields first; the added ones replace same-named fields from an earlier selection.
        row = {key: value for key, value in rows[i].items() if key not in ADDED_FIELDS}
        row.update({"uncertainty": scored[i].uncertainty, "strategy": strategy, "pool_row": i + 1,
                    prediction: scored[i].prediction})
        chosen.append(row)
    notes = [f"--k {k} is more than the pool's {len(rows)} rows: all of them are written, ranked"] if k > len(rows) else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in chosen), encoding="utf-8")
    return Selection(chosen, out, len(rows), strategy, prediction, notes)
