"""A relaunch against the sweep its study recorded: only what keeps trials comparable may change silently.

Launching a sweep again resumes its study. `best`, `export` and the top tables rank every trial of a study
against the others, which is only fair when the trials measured the same thing. So before `record_sweep`
overwrites the recorded sweep, `check_relaunch` compares the two:

| what changed                                                     | what a relaunch does                          |
|------------------------------------------------------------------|-----------------------------------------------|
| objective (name, args), model, dataset, metric(s) and direction,  | refused (ConfigError listing each change),    |
| constraints, budget (but `budget.sweep`), augmentation,           | unless the launch opts in (`--accept-changes`):|
| evaluation, seed, and any setting not listed below               | then a new *sweep revision* is recorded       |
| the search space                                                 | accepted, reported, recorded (space revisions)|
| n_trials, timeout, budget.sweep, sampler, pruner, backend,        | accepted silently                             |
| tracking, ray, retries, pack, resources, storage, study_name,     |                                               |
| output_dir, name, description, record_metrics, dataset.checks,   |                                               |
| objective.args.num_threads / max_cached_models / task_metrics_every|                                             |

The seed is compared: besides the sampler's draws it seeds each trial's initialisation and data order, and
carves the validation and test splits from train when the data has none, so another seed can evaluate
trials on other examples. A setting not listed as harmless is compared, so a new one is safe by default.

Each trial is stamped with the revision it ran under (`REVISION`); a study written before revisions
existed is revision 0 throughout. Readers rank the trials of the latest revision only (`latest_revision`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from spaces import ConfigError

from ..settings import SweepSpec

REVISION = "revision"  # trial user attr: the sweep revision the trial started under (0 without one)
STUDY_REVISIONS = "sweep_revisions"  # [{revision, at, changes: [{key, was, now}], previous_sweep}]
STUDY_SPACE_REVISIONS = "space_revisions"  # [{at, revision, changes: [{key, was, now}], previous_space}]

# Settings that decide how long, where and in which order trials run, not what a finished trial measures
# (every key below them too). The search space is compared on its own (`space_changes`).
HARMLESS = (
    "name", "description", "space", "n_trials", "timeout", "budget.sweep", "sampler", "pruner", "backend",
    "tracking", "ray", "retries", "pack", "resources", "storage", "study_name", "output_dir",
    "record_metrics",  # recorded beside the ranked metric; the ranking is unchanged
    "dataset.checks",  # how data-check findings are treated (`--accept`), not the data trained on
    "objective.args.num_threads", "objective.args.max_cached_models",  # speed and memory only
    "objective.args.task_metrics_every",  # the final evaluation always computes every metric
)
UNSET = "(unset)"


@dataclass(frozen=True)
class Change:
    """One setting that differs between the recorded sweep and a relaunch.

    Example:
        >>> str(Change("budget.max_steps", 60, 20))
        'budget.max_steps: 60 → 20'
    """

    key: str
    was: Any
    now: Any

    def __str__(self) -> str:
        return f"{self.key}: {_shown(self.was)} → {_shown(self.now)}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "was": self.was, "now": self.now}


def _shown(value: Any) -> str:
    return UNSET if value is None else str(value)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"a.b.c": leaf}; lists are leaves.

    Example:
        >>> flatten({"budget": {"max_steps": 60, "sweep": None}, "seed": 0})
        {'budget.max_steps': 60, 'budget.sweep': None, 'seed': 0}
    """
    if not isinstance(data, dict) or (prefix and not data):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _differences(old: dict[str, Any], new: dict[str, Any], *, prefix: str = "") -> list[Change]:
    was, now = flatten(old, prefix), flatten(new, prefix)
    return [Change(key, was.get(key), now.get(key)) for key in dict.fromkeys([*was, *now])
            if was.get(key) != now.get(key)]


def _harmless(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in HARMLESS)


def _normalized(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded sweep with today's defaults filled in, so a setting added to ftsweep since the study was
    written does not read as a change; as recorded when it no longer validates."""
    try:
        spec = SweepSpec.model_validate(recorded)
    except ValidationError:
        return recorded
    data = spec.model_dump(mode="json", exclude={"storage"})
    if isinstance(data.get("metric"), dict):  # `metric: eval_loss` and `metric: [eval_loss]` are one metric
        data["metric"] = [data["metric"]]
    return data


def sweep_changes(recorded: dict[str, Any], launched: dict[str, Any]) -> list[Change]:
    """What differs in what makes trials comparable, between a recorded sweep and a relaunch's
    (`SweepSpec.model_dump(mode="json")` each).

    Example:
        >>> from search.sweep import load_sweep
        >>> dump = lambda overrides: load_sweep("demo", overrides).spec.model_dump(mode="json")
        >>> [str(c) for c in sweep_changes(dump([]), dump(["budget.max_steps=20", "n_trials=8"]))]
        ['budget.max_steps: 60 → 20']
    """
    return [c for c in _differences(_normalized(recorded), _normalized(launched)) if not _harmless(c.key)]


def space_changes(recorded: dict[str, Any], launched: dict[str, Any]) -> list[Change]:
    """What differs between two resolved spaces (`SearchSpace.to_dict()`), their labels (name, description) aside.

    Example:
        >>> from search.sweep import load_sweep
        >>> space = lambda overrides: load_sweep("demo", overrides).space.to_dict()
        >>> [str(c) for c in space_changes(space([]), space(["space.override.learning_rate.high=0.001"]))]
        ['space.params.learning_rate.high: 0.03 → 0.001']
    """
    strip = lambda space: {k: v for k, v in (space or {}).items() if k not in ("name", "description")}  # noqa: E731
    return _differences(strip(recorded), strip(launched), prefix="space")


def latest_revision(study_attrs: dict[str, Any]) -> int:
    """The study's current sweep revision: 0 until a relaunch accepted a change (`--accept-changes`).

    Example:
        >>> latest_revision({}), latest_revision({STUDY_REVISIONS: [{"revision": 1}, {"revision": 2}]})
        (0, 2)
    """
    revisions = study_attrs.get(STUDY_REVISIONS) or []
    return revisions[-1]["revision"] if revisions else 0


def trial_revision(trial) -> int:
    """The sweep revision a trial ran under (0: before any accepted change, or a study older than revisions)."""
    return trial.user_attrs.get(REVISION, 0)


def sweep_of_revision(study_attrs: dict[str, Any], revision: int) -> dict[str, Any] | None:
    """The sweep recorded for `revision` (what `export` reproduces an older trial with): the latest revision's
    is the study's sweep, an older one's was kept by the revision that replaced it; None if unknown.

    Example:
        >>> attrs = {"sweep": {"seed": 1}, STUDY_REVISIONS: [{"revision": 1, "previous_sweep": {"seed": 0}}]}
        >>> sweep_of_revision(attrs, 0), sweep_of_revision(attrs, 1)
        ({'seed': 0}, {'seed': 1})
    """
    if revision == latest_revision(study_attrs):
        return study_attrs.get("sweep")
    replaced_by = next((r for r in study_attrs.get(STUDY_REVISIONS) or [] if r["revision"] == revision + 1), None)
    return replaced_by.get("previous_sweep") if replaced_by else None


def check_relaunch(study, *, recorded_sweep: dict[str, Any] | None, launched_sweep: dict[str, Any],
                   recorded_space: dict[str, Any] | None, launched_space: dict[str, Any], accept_changes: bool,
                   source: str | None, write: bool = True) -> list[str]:
    """Compare a relaunch with the sweep `study` recorded, before it is overwritten (`record_sweep` calls it).

    Refuses a change of what makes trials comparable with a ConfigError listing each one, unless
    `accept_changes`: then it records a new sweep revision on the study. A changed space is recorded as a
    space revision. Returns lines for the user (what was recorded); none for a first launch or a plain resume.
    With `write=False` (`launch --dry-run`) it refuses and tells the same, and records nothing.

    Example:
        >>> import optuna
        >>> from search.sweep import load_sweep
        >>> study = optuna.create_study()
        >>> first, shorter = load_sweep("demo"), load_sweep("demo", ["budget.max_steps=20"])
        >>> dump = lambda sweep: sweep.spec.model_dump(mode="json")
        >>> check_relaunch(study, recorded_sweep=dump(first), launched_sweep=dump(shorter),
        ...                recorded_space=first.space.to_dict(), launched_space=shorter.space.to_dict(),
        ...                accept_changes=True, source="demo.yaml")
        ['Sweep revision 1 recorded (budget.max_steps: 60 → 20): `best` and `export` now rank its trials only.']
    """
    if recorded_sweep is None:  # a new study (or one ftsweep did not create): nothing to compare with
        return []
    changes = sweep_changes(recorded_sweep, launched_sweep)
    name = study.study_name
    if changes and not accept_changes:
        listed = "; ".join(map(str, changes))
        raise ConfigError(
            f"study '{name}' was launched with other settings, and its trials would not be comparable with "
            f"this launch's ({len(changes)} change(s): {listed})", source=source, key=changes[0].key,
            value=changes[0].now,
            hint=f"Fix: a new study for these settings (--set study_name=NEW, or another `name:` in the sweep "
            f"file); or keep study '{name}' and record the change as a new sweep revision with "
            "`ftsweep launch ... --accept-changes` (`best` and `export` then rank only the new revision's trials).",
        )
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    notes = []
    revision = latest_revision(study.user_attrs)
    if changes:
        revision += 1
        entry = {"revision": revision, "at": now, "changes": [c.to_dict() for c in changes],
                 "previous_sweep": recorded_sweep}  # `export --trial N` reproduces an older trial with it
        if write:
            study.set_user_attr(STUDY_REVISIONS, [*(study.user_attrs.get(STUDY_REVISIONS) or []), entry])
        recorded = "recorded" if write else "would be recorded"
        notes.append(f"Sweep revision {revision} {recorded} ({'; '.join(map(str, changes))}): `best` and `export` "
                     "now rank its trials only.")
    moved = space_changes(recorded_space, launched_space) if recorded_space is not None else []
    if moved:
        entry = {"at": now, "revision": revision, "changes": [c.to_dict() for c in moved],
                 "previous_space": recorded_space}
        if write:
            study.set_user_attr(STUDY_SPACE_REVISIONS, [*(study.user_attrs.get(STUDY_SPACE_REVISIONS) or []), entry])
        notes.append(f"The search space changed since the last launch ({'; '.join(map(str, moved))}): finished "
                     "trials keep their params and still rank; new trials sample the new space.")
    return notes
