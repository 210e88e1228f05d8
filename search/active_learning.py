"""`ftsweep select`: which unlabeled examples to label next (active learning by uncertainty).

A trained adapter (what `ftsweep train` wrote) reads every row of an unlabeled pool; the rows it is
least sure about are the ones whose labels teach it most, so the top k are written out for labeling:

    ftsweep select --adapter runs/intents-trial-3 --pool unlabeled.jsonl --k 50 --strategy margin

Uncertainty, for a probability distribution p over classes (or over the vocabulary):

    entropy           -sum_i p_i log p_i (nats)
    margin            1 - (p_1 - p_2), p_1 and p_2 the two largest probabilities
    least_confidence  1 - p_1

sequence_classification scores the softmax of the class logits. causal_lm formats each row as in
training (the run's prompt template or chat template, over the columns it names), greedy-decodes an
answer (up to `max_new_tokens`) and averages the score of the distributions the answer was
read from: one per generated token, the end-of-sequence token included (deciding to stop is part of
the answer), each the softmax of the model's raw logits. For least_confidence that is 1 - the mean
probability of the greedy tokens.

Rows are ranked by descending uncertainty; rows equal to 6 decimals keep their pool order, so the
selection is deterministic. The output (JSON lines) holds each selected row's own fields plus
`uncertainty`, `strategy`, `pool_row` (1-based position in the pool) and the model's guess:
`predicted_label` (classification) or `predicted_response` (causal_lm).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spaces import ConfigError

STRATEGIES = ("entropy", "margin", "least_confidence")
POOL_SUFFIXES = (".jsonl", ".csv")
ADDED_FIELDS = ("uncertainty", "strategy", "pool_row", "predicted_label", "predicted_response")
TIE_DECIMALS = 6  # batched inference differs from unbatched in the last float bits; equal texts must tie


# ---------------------------------------------------------------------------------------- trained runs


@dataclass
class TrainedRun:
    """A `ftsweep train` output directory: the run spec it was trained with and its adapter.

    Example:
        >>> trained = load_trained("runs/demo-trial-23")  # doctest: +SKIP
        >>> trained.adapter_dir.name, trained.run.objective.name  # doctest: +SKIP
        ('adapter', 'causal_lm')
    """

    directory: Path
    adapter_dir: Path
    run_file: Path
    run: Any  # search.spec.RunSpec
    objective_cls: type


def load_trained(path: str | Path) -> TrainedRun:
    """Read a trained run: its output directory, its `adapter/` subdirectory, or its `run.yaml`.

    Raises ConfigError naming what is missing (an export directory gets told to train first).
    """
    from .spec import load_run

    given = Path(path).expanduser()
    if not given.exists():
        raise ConfigError("no such adapter directory", key="--adapter", value=str(path))
    directory = given.parent if given.is_file() or (given / "adapter_config.json").exists() else given
    adapter_dir, run_file = directory / "adapter", directory / "run.yaml"
    if not ((adapter_dir / "adapter_config.json").exists() and run_file.exists()):
        hint = "Fix: pass the directory `ftsweep train` wrote (its output_dir), or its adapter/ subdirectory."
        if (directory / "winner.yaml").exists():
            hint = (f"This is an export (a config, no trained weights). Fix: ftsweep train {directory / 'winner.yaml'}, "
                    "then pass the directory it writes.")
        raise ConfigError("not a trained run: it needs run.yaml and adapter/adapter_config.json",
                          key="--adapter", value=str(path), hint=hint)
    run, objective_cls = load_run(run_file)
    return TrainedRun(directory.resolve(), adapter_dir.resolve(), run_file.resolve(), run, objective_cls)


def load_adapter(trained: TrainedRun, *, budget: Any = None, metrics: Sequence[str] = ()):
    """Set up the run's objective as in training and wrap its base model in the trained adapter.

    The objective reads the run's data (so a classifier gets the class ids it was trained with) and
    loads the base model once. Returns (objective, peft_model), the model in eval mode. `budget`
    replaces the run's (e.g. a common max_seq_length); `metrics` are those the objective should compute.

    Example:
        >>> objective, model = load_adapter(load_trained("runs/demo-trial-23"))  # doctest: +SKIP
    """
    from peft import PeftModel

    run = trained.run
    objective = trained.objective_cls(
        run.model, run.dataset, budget or run.budget, seed=run.seed, options=run.objective.args,
        source=str(trained.run_file), metrics=metrics,
    )
    objective.setup()
    try:
        model = PeftModel.from_pretrained(objective.base_model, str(trained.adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or modules that do not match the base model
        raise ConfigError(f"the adapter does not fit the run's base model ({' '.join(str(exc).split())[:300]})",
                          source=str(trained.run_file), key="model.name_or_path", value=run.model.name_or_path,
                          hint="Fix: keep run.yaml and adapter/ together as `ftsweep train` wrote them.") from None
    model.eval()
    return objective, model


# ---------------------------------------------------------------------------------------- uncertainty


def uncertainty(probs, strategy: str):
    """The uncertainty of each distribution in `probs` (a tensor [..., classes]) under `strategy`.

    Example:
        >>> import torch
        >>> round(float(uncertainty(torch.tensor([0.5, 0.5]), "margin")), 3)
        1.0
        >>> round(float(uncertainty(torch.tensor([0.9, 0.1]), "least_confidence")), 3)
        0.1
    """
    import torch

    if strategy == "entropy":
        return torch.special.entr(probs).sum(-1)
    if strategy == "margin":
        top = probs.topk(2, dim=-1).values
        return 1 - (top[..., 0] - top[..., 1])
    if strategy == "least_confidence":
        return 1 - probs.max(-1).values
    raise ConfigError("unknown uncertainty strategy", key="--strategy", value=strategy, allowed=STRATEGIES)


@dataclass
class Scored:
    uncertainty: float
    prediction: str  # the predicted label, or the greedy response


def score_pool(objective, model, rows: Sequence[Mapping[str, Any]], *, strategy: str, batch_size: int,
               max_new_tokens: int | None = None) -> list[Scored]:
    """Score every row with the adapter (set up by `load_adapter`): its text (classification) or its
    prompt, formatted from the row's columns as in training (causal_lm)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    with torch.no_grad():
        if objective.peft_task_type == "SEQ_CLS":
            texts = [row[objective.data_config.text_column] for row in rows]
            return _score_texts(objective, model, texts, strategy, batch_size, device)
        if objective.peft_task_type == "CAUSAL_LM":
            return _score_prompts(objective, model, rows, strategy, batch_size, device,
                                  max_new_tokens or objective.options.max_new_tokens)
    raise ConfigError(f"select ranks sequence_classification and causal_lm adapters, not {objective.name}",
                      key="objective.name", value=objective.name)


def _score_texts(objective, model, texts, strategy, batch_size, device) -> list[Scored]:
    tok = objective.tokenizer
    id2label = {i: label for label, i in objective.label2id.items()}
    scored = []
    for start in range(0, len(texts), batch_size):
        # Tokenized as in training: truncated to max_seq_length, padded per batch.
        batch = tok(list(texts[start:start + batch_size]), truncation=True, max_length=objective.budget.max_seq_length,
                    padding=True, return_tensors="pt").to(device)
        probs = model(**batch).logits.double().softmax(-1)
        values = uncertainty(probs, strategy)
        for value, label in zip(values.tolist(), probs.argmax(-1).tolist()):
            scored.append(Scored(value, id2label[label]))
    return scored


def _score_prompts(objective, model, rows, strategy, batch_size, device, max_new_tokens) -> list[Scored]:
    import torch

    from objectives.causal_lm import _batches, _needs_unpadded_batches

    tok = objective.tokenizer
    fmt = objective.prompt_format()
    pad, eos = tok.pad_token_id, tok.eos_token_id
    # The prompt's ids and no response: exactly what the model read before answering in training.
    encoded = [fmt.prefix_ids() + tok(fmt.format_prompt(row), add_special_tokens=False)["input_ids"] for row in rows]
    scored: list[Scored | None] = [None] * len(encoded)
    # Left padding, so every answer starts right after its own prompt (as in generate_responses).
    for batch in _batches(encoded, batch_size, same_length=_needs_unpadded_batches(model)):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        attention_mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                      device=device)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, output_logits=True,
                             return_dict_in_generate=True)
        generated = out.sequences[:, width:]
        # [batch, steps, vocab]: the raw logits each generated token was chosen from.
        per_token = uncertainty(torch.stack(out.logits, dim=1).double().softmax(-1), strategy)
        for row, i in enumerate(batch):
            tokens = generated[row].tolist()
            # Up to and including the first end-of-sequence token; later steps only pad finished rows.
            length = tokens.index(eos) + 1 if eos in tokens else len(tokens)
            value = float(per_token[row, :length].mean())
            scored[i] = Scored(value, tok.decode(tokens[:length], skip_special_tokens=True).strip())
    return scored  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- the pool


def read_pool(path: str | Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a .jsonl or .csv pool; every row must hold text in each of `columns`.

    Raises ConfigError naming the file, the missing column and the columns present.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("pool file not found", key="--pool", value=str(path))
    suffix = path.suffix.lower()
    if suffix not in POOL_SUFFIXES:
        raise ConfigError("unsupported pool file type", key="--pool", value=str(path), allowed=list(POOL_SUFFIXES))
    rows: list[dict[str, Any]] = []
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [dict(row) for row in csv.DictReader(f)]
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"line {number} is not valid JSON ({exc.msg})", source=str(path), key="--pool") from None
            if not isinstance(row, dict):
                raise ConfigError(f"line {number} is not a JSON object", source=str(path), key="--pool",
                                  value=row)
            rows.append(row)
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
    """The columns the model reads: the text (classification), or those the prompt template names
    (causal_lm: `prompt`, or every `{column}` of the run's prompt_template)."""
    run = trained.run
    if trained.objective_cls.peft_task_type == "SEQ_CLS":
        return [run.dataset.text_column]
    objective = trained.objective_cls(run.model, run.dataset, run.budget, options=run.objective.args)
    return [c for c in objective.required_columns() if c != run.dataset.response_column]


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
        >>> chosen = select("runs/intents-trial-3", "unlabeled.jsonl", 50, strategy="margin")  # doctest: +SKIP
        >>> chosen.out, len(chosen.rows)  # doctest: +SKIP
        (PosixPath('unlabeled.to_label.jsonl'), 50)
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
    prediction = "predicted_label" if objective.peft_task_type == "SEQ_CLS" else "predicted_response"
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


# ---------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, metavar="DIR",
                   help="a `ftsweep train` output directory (run.yaml + adapter/), or its adapter/ subdirectory")
    p.add_argument("--pool", required=True, metavar="FILE",
                   help="unlabeled rows, .jsonl or .csv, with the task's input column (text, or prompt for causal_lm)")
    p.add_argument("--k", type=int, required=True, metavar="N", help="how many rows to select for labeling")
    p.add_argument("--strategy", choices=STRATEGIES, default="entropy",
                   help="uncertainty measure (default entropy); causal_lm averages it over the generated tokens")
    p.add_argument("--out", metavar="FILE", help="where to write the selected rows (default <pool>.to_label.jsonl)")
    p.add_argument("--batch-size", type=int, metavar="N", help="rows per forward pass (default the run's eval_batch_size)")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="causal_lm: longest answer decoded per prompt (default the run's objective.args.max_new_tokens)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def cmd_select(args: argparse.Namespace) -> int:
    """Rank unlabeled examples by a trained adapter's uncertainty and write the top N for labeling."""
    from rich.console import Console
    from rich.table import Table

    from .results import format_value

    chosen = select(args.adapter, args.pool, args.k, strategy=args.strategy, out=args.out,
                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, force=args.force)
    console = Console(highlight=False)
    for note in chosen.notes:
        console.print(f"[yellow]note:[/] {note}")
    shown = chosen.rows[:10]
    table = Table(title=f"Most uncertain rows ({chosen.strategy})"
                  + (f", the first {len(shown)} of {len(chosen.rows)}" if len(shown) < len(chosen.rows) else ""))
    table.add_column("pool row", justify="right")
    table.add_column("uncertainty", justify="right")
    table.add_column(chosen.prediction_field.replace("_", " "))
    for row in shown:
        table.add_row(str(row["pool_row"]), format_value(row["uncertainty"]), str(row[chosen.prediction_field])[:60])
    console.print(table)
    console.print(f"Wrote {len(chosen.rows)} of {chosen.pool_size} rows to {chosen.out}. Label them, add them to "
                  "the training data, then sweep again (warm-started with --enqueue winner.yaml).")
    return 0
