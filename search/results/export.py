"""Carrying a winner out of the study: `winner.yaml`, `training_args.json`, `adapter_config.json`.

    winner.yaml          a RunSpec: objective, model, dataset (causal_lm: with the data format the trial
                         read, not `auto`), every applied param, budget, seed, provenance (study, trial,
                         value, package versions). `ftsweep train` reads it.
    training_args.json   keyword arguments for `transformers.TrainingArguments(**kwargs)`
    adapter_config.json  `peft.PeftConfig.from_pretrained(DIR)` loads it

Everything comes from the study store alone (whichever backend wrote it); no storage URL, token or
password is ever written.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from objectives import get_objective, resolve_model_path
from objectives.data.sources import source_columns
from objectives.engine.worker import BASE_MODEL_PARAM
from spaces import ConfigError

from ..settings import RunSpec
from ..sweep import run_objective
from ..store import record as keys
from ..store.relaunch import sweep_of_revision, trial_revision
from .tables import get_trial, pareto_front, top_trials

EXPORTED_FILES = ("winner.yaml", "training_args.json", "adapter_config.json")
_VERSIONED = ("ftsweep", "optuna", "torch", "transformers", "peft", "datasets")


@dataclass
class Exported:
    trial: int
    directory: Path


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def safe_join(base: Path, *parts: str) -> Path:
    """`base / parts` that is guaranteed to stay inside `base` (no `..` or absolute escapes)."""
    base = base.resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise ConfigError("output path escapes the chosen directory", key="--out", value=str(target),
                          allowed=f"paths inside {base}")
    return target


def sweep_record(study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> dict:
    """The sweep recorded on the study; with `trial`, the sweep of the revision it ran under (a relaunch with
    `--accept-changes` may have changed the budget, data or seed since: search/store/relaunch.py)."""
    record = study.user_attrs.get(keys.STUDY_SWEEP)
    if not record:
        raise ConfigError("this study was not written by ftsweep (it has no sweep record)", key="study",
                          value=study.study_name)
    if trial is not None:
        return sweep_of_revision(study.user_attrs, trial_revision(trial)) or record
    return record


def run_spec_for(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> RunSpec:
    """The RunSpec that reproduces `trial`: the settings of the sweep it ran under plus its applied params."""
    record = sweep_record(study, trial)
    cls = get_objective(record["objective"]["name"])
    config = keys.config_of(trial)
    applied = {k: v for k, v in config.items() if k in cls.accepted_params()}
    model = dict(record["model"])
    if BASE_MODEL_PARAM in applied:  # the trial's own base model becomes the run's model
        model["name_or_path"] = applied.pop(BASE_MODEL_PARAM)
    return RunSpec(
        name=f"{study.study_name}-trial-{trial.number}",
        objective=record["objective"],
        model=model,
        dataset=record["dataset"],
        params=applied,
        budget=record["budget"],
        seed=record.get("seed", 0),
        augmentation=record.get("augmentation"),
        evaluation=record.get("evaluation"),
        provenance={
            "study": study.study_name,
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "metric": study.user_attrs.get(keys.STUDY_METRIC),
            "direction": ", ".join(d.name.lower() for d in study.directions),
            "value": trial.values[0] if trial.state == TrialState.COMPLETE and len(trial.values) == 1 else None,
            **({"values": dict(zip(study.metric_names or [], trial.values))}
               if trial.state == TrialState.COMPLETE and len(study.directions) > 1 else {}),
            **({"constraints": trial.user_attrs[keys.CONSTRAINTS]} if trial.user_attrs.get(keys.CONSTRAINTS) else {}),
            "metrics": trial.user_attrs.get(keys.METRICS, {}),
            "budget": record["budget"],  # the trial's own; `train` says whether its run matched it
            "trial_params": trial.params,  # what --enqueue feeds back to a sampler
            "all_params": config,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
        },
    )


def with_resolved_data_format(run: RunSpec, objective) -> RunSpec:
    """`run` with `dataset.format: auto` replaced by the format `objective` reads the data in (causal_lm's
    `data_format`: messages, sharegpt, alpaca, prompt_completion or prompt_response), so that the exported
    run trains on the data exactly as the trial did even if detection from the columns changes later.
    Tasks that read a single layout (sequence_classification) have no data format: `run` is returned as is.
    """
    if run.dataset.format != "auto" or not hasattr(objective.task, "data_format"):
        return run
    # `data_format` falls back to prompt_response when the data cannot be read (loading it later says why);
    # that guess must not be written down as the trial's format, so an unreadable source stops the export here.
    source_columns(run.dataset)
    dataset = run.dataset.model_copy(update={"format": objective.task.data_format})
    return run.model_copy(update={"dataset": dataset})


def write_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, directory: Path) -> Path:
    """Write the three files for one trial into `directory`."""
    run = run_spec_for(study, trial)
    objective = run_objective(run, get_objective(run.objective.name))  # on the trial's own base model
    run = with_resolved_data_format(run, objective)
    directory.mkdir(parents=True, exist_ok=True)
    safe_join(directory, "winner.yaml").write_text(
        "# A reproducible run of one trial: `ftsweep train winner.yaml` (override with --set key=value).\n"
        + yaml.safe_dump(run.model_dump(mode="json", by_alias=True), sort_keys=False)
    )
    kwargs = objective.training_kwargs(run.params, output_dir="output")
    safe_join(directory, "training_args.json").write_text(json.dumps(kwargs, indent=2) + "\n")
    adapter_config = objective.peft_config(run.params)
    # A bundled model is referred to by its installed path, so PeftModel.from_pretrained can find it.
    adapter_config.base_model_name_or_path = (
        resolve_model_path(run.model) if run.model.name_or_path.startswith("bundled:") else run.model.name_or_path
    )
    adapter_config.revision = run.model.revision
    adapter_config.save_pretrained(str(directory))
    return directory


def export(
    study: optuna.Study,
    out: Path,
    *,
    trial: int | None = None,
    top: int | None = None,
    pareto: bool = False,
    force: bool = False,
    allow_incomplete: bool = False,
) -> list[Exported]:
    """Export the best trial (default), one trial (`trial`), the top-k (`top`, one folder each) or,
    for a multi-objective study, every trial on the Pareto front (`pareto`: one folder each, plus
    `pareto.json` with their metrics and params).

    Example:
        >>> [exported] = export(study, tmp / "winner")
        >>> sorted(p.name for p in exported.directory.iterdir())
        ['adapter_config.json', 'training_args.json', 'winner.yaml']
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError("the export directory already exists and is not empty", key="--out", value=str(out),
                          hint="Fix: choose another directory, or pass --force to overwrite the exported files.")
    if sum(x is not None and x is not False for x in (trial, top, pareto)) > 1:
        raise ConfigError("give one of --trial, --top and --pareto", key="--trial")
    multi = len(study.directions) > 1
    if pareto:
        if not multi:
            raise ConfigError("--pareto needs a multi-objective study; this one optimizes one metric",
                              key="--pareto", value=study.study_name,
                              hint="Fix: export the best trial (no flag) or the K best (--top K).")
        front = pareto_front(study)  # of the latest sweep revision: older ones ran under other settings
        if not front:
            raise ConfigError("the study has no completed (feasible) trial on its Pareto front yet", key="study",
                              value=study.study_name)
        exported = [Exported(t.number, write_trial(study, t, safe_join(out, f"trial-{t.number}"))) for t in front]
        names = list(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))])
        summary = {
            "study": study.study_name,
            "metrics": [{"name": n, "direction": d.name.lower()} for n, d in zip(names, study.directions)],
            "constraints": study.user_attrs.get(keys.STUDY_CONSTRAINTS, []),
            "trials": [{"number": t.number, "directory": f"trial-{t.number}", "values": dict(zip(names, t.values)),
                        "params": keys.config_of(t)} for t in front],
        }
        safe_join(out, "pareto.json").write_text(json.dumps(summary, indent=2) + "\n")
        return exported
    if multi and trial is None and top is None:
        raise ConfigError("a multi-objective study has no single best trial, but a Pareto front of trade-offs",
                          key="study", value=study.study_name,
                          hint="Fix: --pareto (every trial on the front), or --trial N (one you chose from `ftsweep best`).")
    if top is not None:
        rows = top_trials(study, top)
        if not rows:
            raise ConfigError("the study has no completed trial to export", key="study", value=study.study_name)
        chosen = [get_trial(study, row.number) for row in rows]
        return [Exported(t.number, write_trial(study, t, safe_join(out, f"trial-{t.number}"))) for t in chosen]
    if trial is None:
        rows = top_trials(study, 1)
        if not rows:
            raise ConfigError("the study has no completed trial to export", key="study", value=study.study_name)
        trial = rows[0].number
    chosen = get_trial(study, trial)
    if chosen.state != TrialState.COMPLETE and not allow_incomplete:
        raise ConfigError(
            f"trial {trial} is {chosen.state.name.lower()}, not complete: its params never finished a full budget",
            key="--trial", value=trial, hint="Fix: export a complete trial, or pass --allow-incomplete.",
        )
    return [Exported(chosen.number, write_trial(study, chosen, safe_join(out)))]
