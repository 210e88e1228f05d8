"""Trained runs: what `ftsweep train` wrote (`run.yaml` + `adapter/`), read back for `select` and `gate`.

The one loader of trained runs: `load_trained` finds the files, `load_adapter` sets the run's
objective up as in training and wraps its base model in the trained adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spaces import ConfigError

from ..settings import RunSpec
from ..sweep import load_run, run_objective


@dataclass
class TrainedRun:
    """A `ftsweep train` output directory: the run spec it was trained with and its adapter.

    Example:
        >>> trained = load_trained(trained_dir)  # a `ftsweep train` output (conftest.py)
        >>> trained.adapter_dir.name, trained.run.objective.name
        ('adapter', 'causal_lm')
    """

    directory: Path
    adapter_dir: Path
    run_file: Path
    run: RunSpec
    objective_cls: type


def load_trained(path: str | Path) -> TrainedRun:
    """Read a trained run: its output directory, its `adapter/` subdirectory, or its `run.yaml`.

    Raises ConfigError naming what is missing (an export directory gets told to train first).
    """
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
        >>> objective, model = load_adapter(load_trained(trained_dir))
        >>> type(model).__name__, model.training
        ('PeftModelForCausalLM', False)
    """
    from peft import PeftModel

    run = trained.run
    objective = run_objective(run, trained.objective_cls, source=str(trained.run_file), budget=budget,
                              metrics=metrics)
    objective.setup()
    try:
        model = PeftModel.from_pretrained(objective.base_model, str(trained.adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or modules that do not match the base model
        raise ConfigError(f"the adapter does not fit the run's base model ({' '.join(str(exc).split())[:300]})",
                          source=str(trained.run_file), key="model.name_or_path", value=run.model.name_or_path,
                          hint="Fix: keep run.yaml and adapter/ together as `ftsweep train` wrote them.") from None
    model.eval()
    return objective, model
