"""`ftsweep train winner.yaml`: the final fit of an exported config.

Trains with the run's params, budget and seed; evaluates on validation and on the test split that
no trial of the sweep ever saw; writes next to the adapter everything needed to reproduce it:

    <output_dir>/adapter/      PEFT adapter (PeftModel.from_pretrained(base, this))
    <output_dir>/run.yaml      the resolved run spec (overrides applied)
    <output_dir>/metrics.json  validation and test metrics, base model/tokenizer reference, and how
                               closely the sweep trial's value was reproduced
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from spaces import ConfigError

from ..results.export import package_versions, safe_join
from ..settings import RunSpec
from ..sweep import run_objective


def output_dir_for(run: RunSpec) -> Path:
    return Path(run.output_dir or Path("runs") / run.name).expanduser().resolve()


def train_run(run: RunSpec, objective_cls, *, source: str | None = None, force: bool = False) -> dict[str, Any]:
    """Fit `run`, save adapter + metrics, and return the metrics record.

    Example:
        >>> from search.results.export import export
        >>> from search.sweep import load_run
        >>> [exported] = export(study, tmp / "winner")
        >>> run, cls = load_run(exported.directory / "winner.yaml", [f"output_dir={tmp / 'final'}"])
        >>> train_run(run, cls)["reproduction"]["relative_error"] < 0.01  # the trial's value, reproduced
        True
    """
    out = output_dir_for(run)
    if (out / "adapter").exists() and not force:
        raise ConfigError("this run's output already holds an adapter", key="output_dir", value=str(out),
                          hint="Fix: --set output_dir=ANOTHER_DIR, or pass --force.")
    # The metrics the sweep computed (its target, recorded ones, answer metrics), now on the test split too.
    computed = {*run.provenance.get("metrics", {}), *str(run.provenance.get("metric") or "").split(", ")}
    objective = run_objective(run, objective_cls, source=source, output_dir=out,
                              metrics=sorted(computed & set(objective_cls.available_metrics())))
    objective.setup()
    metrics = objective.fit(run.params, out, merge_validation=run.merge_validation)
    record: dict[str, Any] = {
        "run": run.name,
        "metrics": metrics,
        "base_model": run.model.name_or_path,
        "tokenizer": run.model.name_or_path,  # the tokenizer is the base model's own
        "revision": run.model.revision,
        "adapter": str(out / "adapter"),
        "merge_validation": run.merge_validation,
        "versions": package_versions(),
    }
    metric, value = run.provenance.get("metric"), run.provenance.get("value")
    if metric in metrics and isinstance(value, (int, float)) and value != 0 and math.isfinite(value):
        record["reproduction"] = {
            "metric": metric,
            "trial_value": value,
            "value": metrics[metric],
            "relative_error": abs(metrics[metric] - value) / abs(value),
            "comparable": not run.merge_validation and run.budget.model_dump() == _trial_budget(run),
        }
    safe_join(out, "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    safe_join(out, "run.yaml").write_text(yaml.safe_dump(run.model_dump(mode="json", by_alias=True), sort_keys=False))
    return record


def _trial_budget(run: RunSpec) -> dict:
    # The trial's own budget, recorded at export: same budget and seed means like-for-like figures.
    return run.provenance.get("budget", run.budget.model_dump())
