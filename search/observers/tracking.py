"""Experiment tracking: one W&B run per trial plus a sweep run, offline-first, never breaking a sweep.

The study store stays the source of truth; trackers are mirrors. Every call into a tracker is
guarded: a tracker that raises is disabled with one warning and the sweep goes on.

    tracking:
      wandb: auto        # auto | online | offline | off
      project: ftsweep
      entity: null
      tags: [lora]

`auto` logs online when an API key exists and the server answers within a few seconds, otherwise
offline (and says how to `wandb sync` later). `online` falls back to offline the same way.

W&B's environment counts where the sweep file is silent: `WANDB_MODE` decides what `auto` does and can
only turn the other modes down (`disabled` turns logging off without importing wandb, `offline`/`dryrun`
keep an `online` sweep offline); `WANDB_PROJECT`, `WANDB_ENTITY`, `WANDB_DIR`, `WANDB_RUN_GROUP` and
`WANDB_TAGS` fill what `tracking:` leaves unset. `wandb: off` is always off.

One sweep run per study, however many processes work on it: its W&B id is kept on the study (every
writer resumes the same run), and one process writes it: the launch that prepared the study when it stays to
the end, or with `launch --workers 0` the last worker out (`claim_sweep_run`).

Adding another logger (TensorBoard, MLflow...) means one class with the three `TrialTracker`
methods and one `SweepTracker` with `trial()` and `sweep_end()`.
"""

from __future__ import annotations

import importlib
import logging
import netrc
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from spaces import ConfigError

from ..results.export import export
from ..results.report import write_report
from ..results.tables import top_trials, trial_details
from ..settings import TrackingConfig
from ..store.record import STUDY_WANDB_CLAIM, STUDY_WANDB_RUN_BY, sweep_run_id
from ..store.storage import WORKER_ID

log = logging.getLogger("ftsweep.tracking")
DEFAULT_BASE_URL = "https://api.wandb.ai"
DEFAULT_PROJECT = "ftsweep"
INSTALL_HINT = "pip install 'ftsweep[wandb]'"
# WANDB_MODE's values (wandb.Settings.mode) as this module's modes: `dryrun` is W&B's old name for offline,
# `run` for online, and `shared` is online with several processes writing one run.
ENV_MODES = {"disabled": "off", "offline": "offline", "dryrun": "offline", "online": "online", "run": "online",
             "shared": "online"}
# How long claimants of the sweep run wait before reading back whose claim stands (see claim_sweep_run).
CLAIM_SETTLE_S = 2.0


# ------------------------------------------------------------------------------------- interface


class TrialTracker:
    """Mirror of one trial. The no-op base is what `wandb: off` uses."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, state: str, metrics: dict[str, Any], reason: str | None = None) -> None: ...


class SweepTracker:
    """Hands out trial trackers and records the sweep as a whole when it ends."""

    mode = "off"

    def trial(self, study_name: str, number: int, params: dict[str, Any]) -> TrialTracker:
        return TrialTracker()

    def sweep_end(self, study, output_dir: Path, *, worker: bool = False) -> None:
        """Record the study as a whole. `worker`: called by a worker that joined the study (`ftsweep worker`),
        which writes the sweep run only when `claim_sweep_run` gives it to it."""


# ------------------------------------------------------------------------------------- W&B


def _has_credentials(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = urlparse(base_url).hostname or ""
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _server_answers(base_url: str, timeout: float) -> bool:
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def env_mode(environ=os.environ) -> str | None:
    """WANDB_MODE as one of this module's modes (off, offline, online); None when it is unset.

    Example:
        >>> env_mode({"WANDB_MODE": "dryrun"}), env_mode({"WANDB_MODE": "disabled"}), env_mode({})
        ('offline', 'off', None)
    """
    raw = environ.get("WANDB_MODE", "").strip()
    if not raw:
        return None
    if raw.lower() not in ENV_MODES:
        raise ConfigError("WANDB_MODE is not a W&B mode", key="WANDB_MODE", value=raw, allowed=sorted(ENV_MODES),
                          hint="Fix: unset it, or set e.g. WANDB_MODE=offline (or disabled for no W&B at all).")
    return ENV_MODES[raw.lower()]


def choose_mode(config: TrackingConfig) -> tuple[str, str | None]:
    """(mode, note): the W&B mode to use and, when it differs from what was asked, why.

    `tracking.wandb: off` is off whatever the environment says; otherwise WANDB_MODE decides `auto`'s mode
    and turns the others down, never up (an `offline` sweep stays offline under WANDB_MODE=online)."""
    if config.wandb == "off":
        return "off", None
    env = env_mode()
    if env == "off":  # W&B's own switch: before wandb is imported, so a disabled W&B costs nothing
        return "off", "W&B logging is off: WANDB_MODE=disabled."
    try:
        importlib.import_module("wandb")  # installed? (WandbSweepTracker uses it next)
    except ImportError:
        if config.wandb == "auto":
            return "off", f"W&B logging is off: wandb is not installed ({INSTALL_HINT})."
        raise ConfigError("tracking.wandb needs the wandb package", key="tracking.wandb", value=config.wandb,
                          hint=f"Fix: {INSTALL_HINT}, or set tracking.wandb: off.") from None
    if config.wandb == "offline":
        return "offline", None
    if env == "offline":
        return "offline", None if config.wandb == "auto" else (
            f"W&B offline: WANDB_MODE={os.environ['WANDB_MODE'].strip()} overrides tracking.wandb: online.")
    base_url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    shown = urlparse(base_url).netloc.rsplit("@", 1)[-1]  # never a user:password prefix
    if not _has_credentials(base_url):
        why = "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    elif not _server_answers(base_url, config.connect_timeout_s):
        why = f"the W&B server at {shown} did not answer within {config.connect_timeout_s:g}s"
    else:
        return "online", None
    asked_online = config.wandb == "online" or env == "online"
    level = "offline (fallback)" if asked_online else "offline"
    return "offline", f"W&B {level}: {why}."


def _env_tags() -> list[str]:
    return [tag.strip() for tag in os.environ.get("WANDB_TAGS", "").split(",") if tag.strip()]


def claim_sweep_run(study) -> bool:
    """Whether this worker writes the study's sweep run: True for one worker of all that call it at the end.

    The launch that prepared the study writes it itself unless it handed it to the workers (`launch --workers 0`,
    see `search.store.record.hand_sweep_run`). Then the last worker out writes it: a worker whose study still has
    a queued or running trial leaves it to the worker of that trial. Workers that find the study done together
    (idle workers all leave when the last trial ends) each write their claim, wait CLAIM_SETTLE_S and read it
    back: the claim written last stands, and its worker alone goes on. The claim names the study's finished
    trial count, so a relaunch that adds trials is summarised again (the same W&B run, resumed).

    Example:
        >>> import optuna
        >>> from search.store.record import hand_sweep_run
        >>> study = optuna.create_study()
        >>> hand_sweep_run(study, "launch"); claim_sweep_run(study)  # the launch writes it, no worker
        False
    """
    if study.user_attrs.get(STUDY_WANDB_RUN_BY) == "launch":
        return False
    trials = study.get_trials(deepcopy=False)
    if any(not t.state.is_finished() for t in trials):
        return False
    finished = f"@{len(trials)}"
    if str(study.user_attrs.get(STUDY_WANDB_CLAIM, "")).endswith(finished):
        return False  # another worker summarises the study as it is now
    mine = f"{WORKER_ID}{finished}"
    study.set_user_attr(STUDY_WANDB_CLAIM, mine)
    time.sleep(CLAIM_SETTLE_S)
    return study.user_attrs.get(STUDY_WANDB_CLAIM) == mine


class WandbSweepTracker(SweepTracker):
    """One W&B run per trial (group = study, job type = trial) and one sweep run at the end.

    Project, entity, group and tags: the sweep file's where it sets them, else W&B's environment variables
    (WANDB_PROJECT, WANDB_ENTITY, WANDB_RUN_GROUP, WANDB_TAGS), else ftsweep's defaults (project `ftsweep`,
    the study name as group, no tags)."""

    def __init__(self, config: TrackingConfig, mode: str, run_dir: Path) -> None:
        import wandb

        self.wandb = wandb
        self.config = config
        self.mode = mode
        self.run_dir = run_dir
        self.project = config.project if config.project is not None else (
            os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT)
        self.entity = config.entity if config.entity is not None else (os.environ.get("WANDB_ENTITY") or None)
        self.group = config.group if config.group is not None else (os.environ.get("WANDB_RUN_GROUP") or None)
        self.tags = list(config.tags) if config.tags is not None else _env_tags()
        self.broken: str | None = None
        run_dir.mkdir(parents=True, exist_ok=True)

    def _settings(self):
        # No system metadata: it would record the command line, which may hold a storage password.
        return self.wandb.Settings(
            silent=True, console="off", disable_git=True, x_disable_stats=True, x_disable_meta=True,
            init_timeout=max(self.config.connect_timeout_s * 10, 30.0),
        )

    def _init(self, **kwargs):
        # Everything explicit: W&B would otherwise read its environment for what is None here (WANDB_RUN_ID
        # would give every trial one run), and this class has settled the environment's part already.
        return self.wandb.init(
            project=self.project, entity=self.entity, dir=str(self.run_dir), mode=self.mode,
            reinit="create_new", settings=self._settings(), **kwargs,
        )

    def _guard(self, what: str, fn, *args, **kwargs):
        if self.broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # W&B must never end a sweep
            self.broken = f"{type(exc).__name__}: {exc}"
            log.warning("W&B %s failed (%s); W&B logging is off for the rest of this sweep.", what, self.broken)
            return None

    def trial(self, study_name: str, number: int, params: dict[str, Any]) -> TrialTracker:
        run = self._guard("init", self._init, id=uuid.uuid4().hex[:12], group=self.group or study_name,
                          job_type="trial", name=f"{study_name}-trial-{number}", config=dict(params),
                          tags=list(self.tags))
        return _WandbTrial(self, run) if run is not None else TrialTracker()

    def sweep_end(self, study, output_dir: Path, *, worker: bool = False) -> None:
        if not worker or self._guard("sweep run claim", claim_sweep_run, study):
            self._guard("sweep run", self._sweep_run, study, output_dir)
        self._guard("teardown", self._close)

    def _close(self) -> None:
        # `finish()` only tells W&B's service that a run ended: the service writes the rest of its offline file
        # and closes it afterwards. Tearing the service down waits for every run of this process to be closed,
        # so the sweep's runs are complete on disk (for `wandb sync`, or a reader) when the sweep returns. A run
        # the caller still has open (a notebook's own `wandb.init`) keeps the service, and W&B's exit hook closes it.
        if self.wandb.run is None:
            self.wandb.teardown()

    def _sweep_run(self, study, output_dir: Path) -> None:
        wandb = self.wandb
        # The study's one sweep run: a relaunch that ran more trials (or `report --wandb`) resumes it.
        run = self._init(id=sweep_run_id(study), resume="allow", group=self.group or study.study_name,
                         job_type="sweep", name=f"{study.study_name}-sweep", tags=list(self.tags),
                         config={"sweep": study.user_attrs.get("sweep", {})})
        try:
            columns = ["number", "state", "value", "params", "fail_reason", "duration_s"]
            table = wandb.Table(columns=columns)
            for trial in study.get_trials(deepcopy=False):
                d = trial_details(trial)
                table.add_data(d["number"], d["state"], d["value"], str(d["params"]), d["fail_reason"], d["duration_s"])
            run.log({"trials": table})
            if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
                best = top_trials(study, 1)  # best feasible; the first of the Pareto front for several metrics
                if len(study.directions) == 1 and best:
                    run.summary.update({"best_value": best[0].value, "best_trial": best[0].number})
                elif best:
                    run.summary.update({"pareto_front": [row.number for row in top_trials(study, 1000)]})
                if len(study.directions) == 1 and best:
                    self._log_best_config(run, study)
                self._log_report(run, study, output_dir)
        finally:
            run.finish()

    def _log_best_config(self, run, study) -> None:
        with tempfile.TemporaryDirectory(prefix="ftsweep-best-") as tmp:
            export(study, Path(tmp) / "best")
            artifact = self.wandb.Artifact(f"{study.study_name}-best-config", type="config")
            for path in sorted((Path(tmp) / "best").iterdir()):  # add_dir would print a progress line
                artifact.add_file(str(path))
            run.log_artifact(artifact)

    def _log_report(self, run, study, output_dir: Path) -> None:
        try:
            files = write_report(study, output_dir / "report")
        except ConfigError as exc:  # e.g. matplotlib missing: the pictures are a bonus, not a requirement
            log.info("W&B sweep run without report pictures: %s", exc)
            return
        run.log({f"report/{p.stem}": self.wandb.Image(str(p)) for p in files.images})


class _WandbTrial(TrialTracker):
    def __init__(self, owner: WandbSweepTracker, run) -> None:
        self.owner = owner
        self.run = run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.owner._guard("log", self.run.log, dict(metrics), step=step)

    def finish(self, state: str, metrics: dict[str, Any], reason: str | None = None) -> None:
        def close() -> None:
            summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
            summary["state"] = state
            if reason:
                summary["fail_reason"] = reason
            self.run.summary.update(summary)
            self.run.tags = tuple(self.run.tags or ()) + (state,)
            self.run.finish(exit_code=1 if state == "failed" else 0)

        self.owner._guard("finish", close)


def make_tracker(config: TrackingConfig, output_dir: Path, *, say=print) -> SweepTracker:
    """The tracker a sweep file asks for, after the offline/online decision (said in one line)."""
    mode, note = choose_mode(config)
    if mode == "off":
        if note:
            say(note)
        return SweepTracker()
    # Where the runs go: tracking.dir, else WANDB_DIR, else the sweep's output_dir (W&B adds `wandb/`).
    run_dir = Path(config.dir or os.environ.get("WANDB_DIR") or output_dir).expanduser()
    if note:
        say(f"{note} Runs are kept in {run_dir / 'wandb'}; upload them later with "
            f"`wandb sync {run_dir / 'wandb'}/offline-run-*`.")
    elif mode == "offline":
        say(f"W&B offline: runs in {run_dir / 'wandb'}; upload later with `wandb sync {run_dir / 'wandb'}/offline-run-*`.")
    return WandbSweepTracker(config, mode, run_dir)
