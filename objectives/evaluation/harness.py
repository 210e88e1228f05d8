"""lm-evaluation-harness tasks as sweep metrics, run in-process on a trial's live adapter model.

The sweep's `evaluation:` block (`EvaluationSettings`) names lm-eval tasks: built-in ones, whose data comes
from the hub (or its cache, as on any cluster), or the user's own task YAMLs in `include_path` with local
data (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`). Each task's metrics become
`lm_eval:TASK/METRIC` (`METRIC,FILTER` when the task filters its answers, e.g.
`lm_eval:gsm8k/exact_match,strict-match`): the sweep's metric, a recorded one or a constraint.

The model is wrapped as it is (lm-eval's `HFLM` takes a model object): no save and reload of the adapter.
lm-eval is imported only when a sweep names an evaluation (`pip install 'ftsweep[lmeval]'`).

Example:
    >>> parse_metric("lm_eval:my_qa/exact_match")
    ('my_qa', 'exact_match')
    >>> metric_name("gsm8k", "exact_match,strict-match")
    'lm_eval:gsm8k/exact_match,strict-match'
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spaces import ConfigError

from ..settings import Direction, EvaluationSettings

PREFIX = "lm_eval:"
INSTALL = "pip install 'ftsweep[lmeval]'"


def is_harness_metric(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_metric(name: str) -> tuple[str, str]:
    """(task, metric) of `lm_eval:TASK/METRIC`; ValueError when it is not of that form."""
    task, slash, metric = name.removeprefix(PREFIX).partition("/")
    if not name.startswith(PREFIX) or not slash or not task or not metric:
        raise ValueError(f"{name!r} is not lm_eval:TASK/METRIC")
    return task, metric


def metric_name(task: str, key: str) -> str:
    """The sweep's name of lm-eval's result `key` ("acc,none") of `task`: lm_eval:TASK/acc."""
    metric, _, filtered = key.partition(",")
    return f"{PREFIX}{task}/{metric if filtered in ('', 'none') else key}"


def require_lm_eval(source: str | None = None, key: str = "evaluation"):
    """The lm_eval module, or a ConfigError saying how to install it."""
    try:
        import lm_eval
    except ImportError as exc:
        raise ConfigError(f"lm-evaluation-harness is not installed here ({exc})", source=source, key=key,
                          hint=f"Fix: {INSTALL}.") from None
    return lm_eval


def check_metric(name: str, settings: EvaluationSettings | None, *, source: str | None = None,
                 key: str = "metric.name") -> Direction:
    """The natural direction of an `lm_eval:TASK/METRIC` metric (lm-eval's own registry), checked against
    the sweep's `evaluation:` block; which metrics a task really reports is checked at launch
    (`Harness.check`), when its data is read."""
    try:
        task, metric = parse_metric(name)
    except ValueError:
        raise ConfigError("an lm-eval metric is named lm_eval:TASK/METRIC", source=source, key=key, value=name,
                          hint="Fix: e.g. lm_eval:my_qa/exact_match, with my_qa under evaluation.tasks.") from None
    if settings is None or task not in settings.tasks:
        raise ConfigError(f"lm-eval task '{task}' is not run by this sweep", source=source, key=key, value=name,
                          allowed=[f"{PREFIX}{t}/..." for t in settings.tasks] if settings else None,
                          hint=f"Fix: add it to evaluation.tasks (evaluation: {{tasks: [{task}]}}).")
    require_lm_eval(source, key)
    from lm_eval.api.registry import is_higher_better

    with _quiet():
        try:
            higher = is_higher_better(metric.partition(",")[0])
        except (KeyError, ValueError):
            higher = True  # a metric of the task's own (a Python function in its folder): lm-eval's default
    return "maximize" if higher is not False else "minimize"


class Harness:
    """The evaluation's lm-eval tasks, loaded once per worker; `evaluate(model, tokenizer)` runs them.

    Example:
        >>> harness = Harness(EvaluationSettings(tasks=["routing_mc"], include_path="eval_tasks", limit=8))
        >>> metrics, per_document = harness.evaluate(model, tokenizer)  # doctest: +SKIP
        >>> sorted(metrics), len(per_document["lm_eval:routing_mc/acc"]["scores"])  # doctest: +SKIP
        (['lm_eval:routing_mc/acc'], 8)
    """

    def __init__(self, settings: EvaluationSettings, *, batch_size: int = 32, source: str | None = None) -> None:
        self.settings = settings
        self.batch_size = settings.batch_size or batch_size
        self.source = source
        self._tasks: dict[str, Any] | None = None

    def tasks(self) -> dict[str, Any]:
        """lm-eval's task objects (their data read), once; a ConfigError that says why a task cannot load."""
        if self._tasks is None:
            self._tasks = self._load()
        return self._tasks

    def _load(self) -> dict[str, Any]:
        require_lm_eval(self.source)
        from lm_eval.tasks import TaskManager, get_task_dict

        settings = self.settings
        include = settings.include_path
        if include is not None and not Path(include).expanduser().is_dir():
            raise ConfigError("evaluation.include_path is not a folder", source=self.source,
                              key="evaluation.include_path", value=include,
                              hint="Fix: a folder of lm-eval task YAMLs, relative to where ftsweep runs.")
        with _quiet():
            manager = TaskManager(include_path=str(Path(include).expanduser()) if include else None,
                                  include_defaults=include is None)
            if include is not None and set(settings.tasks) - set(manager.all_tasks):
                manager = TaskManager(include_path=str(Path(include).expanduser()))  # built-in tasks too
        known = set(manager.all_tasks)
        for i, name in enumerate(settings.tasks):
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                raise ConfigError(
                    f"lm-eval has no task '{name}'" + (f" (close: {', '.join(close)})" if close else ""),
                    source=self.source, key=f"evaluation.tasks.{i}", value=name,
                    hint="Fix: a task defined in evaluation.include_path (its `task:` name) or a built-in one "
                    "(`lm_eval ls tasks` lists them).")
        loaded: dict[str, Any] = {}
        for i, name in enumerate(settings.tasks):
            try:
                with _quiet():
                    tasks = get_task_dict([name], manager)
            except Exception as exc:  # noqa: BLE001 -- whatever the task's loader raises, said with the task
                raise self._unloadable(i, name, exc) from None
            for task_name, task in _leaves(tasks):
                if settings.num_fewshot is not None:
                    task.set_config(key="num_fewshot", value=settings.num_fewshot)
                loaded[task_name] = task
        return loaded

    def _unloadable(self, index: int, name: str, exc: Exception) -> ConfigError:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if offline or "offline" in why.lower() or "connect" in why.lower():
            return ConfigError(
                f"lm-eval task '{name}' could not read its data, which comes from the hub, and this machine is "
                f"offline or cannot reach it ({why})", source=self.source, key=f"evaluation.tasks.{index}",
                value=name, hint="Fix: run it once where the hub is reachable to fill the datasets cache "
                "(HF_DATASETS_CACHE), or copy the data and define the task in evaluation.include_path with "
                "`dataset_path: json` and `dataset_kwargs: {data_files: ...}`.")
        return ConfigError(f"lm-eval task '{name}' could not be loaded ({why})", source=self.source,
                           key=f"evaluation.tasks.{index}", value=name,
                           hint="Fix: check the task's YAML (dataset_path, data_files, doc_to_text...).")

    def plan(self, wanted, *, max_steps: int, eval_every: int) -> HarnessPlan:
        """Load every task (its data) and check that the lm_eval metrics in `wanted` are among the ones they
        report: what the evaluation will run, for the launch line."""
        reported = self.metric_names()
        for name in wanted:
            if is_harness_metric(name) and name not in reported:
                task = parse_metric(name)[0]
                raise ConfigError(f"lm-eval task '{task}' does not report this metric", source=self.source,
                                  key="metric", value=name, allowed=[m for m in reported if parse_metric(m)[0] == task])
        return HarnessPlan(reported, self.settings, max_steps=max_steps, eval_every=eval_every)

    def metric_names(self) -> list[str]:
        """`lm_eval:TASK/METRIC` of every metric the tasks report (their metric_list, with each filter)."""
        names = []
        for task_name, task in self.tasks().items():
            filters = [f["name"] for f in (task.config.filter_list or [])] if getattr(task.config, "filter_list", None) \
                else ["none"]
            for metric in task.aggregation():
                names += [metric_name(task_name, f"{metric},{f}") for f in filters]
        return names

    def evaluate(self, model, tokenizer) -> tuple[dict[str, float], dict[str, dict[str, list]]]:
        """Every task's metrics of `model` (a PEFT model as it is, or any causal LM; its train/eval modes left as
        found), and each metric's per-document scores (lm-eval's samples): metric -> {"rows": doc ids, "scores":
        one value per document}, for paired comparisons between trials (the same documents in each)."""
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        modes = {module: module.training for module in model.modules()}
        try:
            with _quiet():
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
                results = evaluate(lm, self.tasks(), limit=self.settings.limit, bootstrap_iters=0,
                                   verbosity="ERROR", log_samples=True)
        finally:
            for module, training in modes.items():
                module.train(training)
        metrics = {}
        for task_name, values in (results or {}).get("results", {}).items():
            for key, value in values.items():
                if "," in key and "_stderr" not in key and isinstance(value, (int, float)):
                    metrics[metric_name(task_name, key)] = float(value)
        per_example: dict[str, dict[str, list]] = {}
        for task_name, samples in (results or {}).get("samples", {}).items():
            for sample in samples:
                for metric in sample.get("metrics", ()):
                    value = sample.get(metric)
                    if isinstance(value, (int, float)):  # corpus-level metrics keep tuples per document: no pairing
                        name = metric_name(task_name, f"{metric},{sample.get('filter', 'none')}")
                        entry = per_example.setdefault(name, {"rows": [], "scores": []})
                        entry["rows"].append(int(sample["doc_id"]))
                        entry["scores"].append(float(value))
        return metrics, per_example


class HarnessPlan:
    """What a sweep's lm-eval evaluation runs: `line()` for the launch."""

    def __init__(self, metrics: list[str], settings: EvaluationSettings, *, max_steps: int, eval_every: int) -> None:
        self.metrics = metrics
        self.settings = settings
        self.max_steps, self.eval_every = max_steps, eval_every

    def resolved_args(self) -> dict[str, Any]:
        return {}

    def line(self) -> str:
        """Example:
            >>> HarnessPlan(["lm_eval:qa/exact_match"], EvaluationSettings(tasks=["qa"], limit=20), max_steps=60,
            ...             eval_every=20).line()
            'lm-eval: lm_eval:qa/exact_match, 20 rows per task, at the final evaluation (step 60)'
        """
        every = self.settings.every
        when = f"at the final evaluation (step {self.max_steps})" if not every else \
            f"every {every * self.eval_every} steps and at the final evaluation"
        rows = f"{self.settings.limit} rows per task" if self.settings.limit else "every row of each task"
        return f"lm-eval: {', '.join(self.metrics)}, {rows}, {when}"


def _leaves(tasks: dict) -> Iterator[tuple[str, Any]]:
    """(name, task) of every task in lm-eval's (possibly nested, for groups) task dict."""
    for key, value in tasks.items():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield getattr(key, "group_name", key) if not isinstance(key, str) else key, value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's progress bars, notes and warnings off: a trial's evaluation is one line of the sweep's display."""
    loggers = [logging.getLogger(name) for name in ("lm-eval", "lm_eval")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
