"""Trials bigger than one device: one trial as a `torch.distributed` job of G rank processes (DDP or FSDP).

`run_distributed_trial(objective, params, report, group=RankGroup(world_size=G))` starts G processes on this machine, each
joining one process group (gloo on CPUs, NCCL on GPUs, on loopback) and running the same
`Objective.run_trial`: transformers' Trainer sees `WORLD_SIZE` and trains data-parallel (with `strategy="fsdp"`,
the model sharded over the ranks: FSDP2 with PEFT's auto-wrap policy), each rank on
its shard of every global batch (`budget.batch_size` / G rows), gradients averaged, tokens counted across
ranks, evaluation gathered. So a G-process trial with the same global batch has the eval history of the
trial in one process (tests/objectives/engine/test_distributed.py).

The caller (a backend's worker) stays the trial's only voice: rank 0 sends it each evaluation through a pipe
and waits for its prune/continue answer, which rank 0 then broadcasts to every rank (`broadcast_object_list`),
so all ranks stop at the same evaluation -- the way optuna-integration's `TorchDistributedTrial` shares rank
0's `should_prune`, without the storage in every rank. Only the caller records and logs (W&B once per trial).

Every rank must run the same collectives in the same order, or they wait on each other for ever. So whatever
a rank decides alone that leads to collectives is decided once: prune (rank 0's report, broadcast) and, at
every evaluation, save and stop (`callback.RankAgreement`: rank 0's decisions, broadcast) -- a checkpoint's
save gathers across ranks, and each rank timed `checkpoint_interval_s` on its own clock.

A rank that dies ends the trial: the caller stops every rank (no process group left hanging, nothing left
running: each rank also dies with its parent) and raises `RankLost`. Ranks that deadlock do too, after
`deadlock_after_s`: each rank's watchdog thread publishes whether its main thread waits inside a collective
(a frame in torch.distributed or DDP, or autograd's backward, where DDP waits for its gradient all-reduce)
while the process uses no CPU; when every rank has waited so for that long, none can be computing, so none
will ever answer the others -- a trial merely slow between evaluations computes, or waits elsewhere (data,
a checkpoint write, the caller's prune decision), and is never taken for one. On GPUs (NCCL) a waiting rank
spins or returns at once, so this rarely fires there: NCCL's own watchdog and `timeout_s` (the process
group's timeout, for a hung collective) cover it. Checkpoints are rank 0's, as Trainer writes them; a re-run
resumes from them on every rank.

Example (2 processes on CPU, gloo):

    .. code-block:: python

        final = run_distributed_trial(objective, {"learning_rate": 3e-3, "lora_r": 8}, group=RankGroup(world_size=2))
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .trial import Reporter, TrialDiverged, TrialOptions, TrialPaused

# What every rank imports before its trial: the forkserver imports it once per worker, so a rank starts in
# about a second instead of an interpreter's ~6 s on 2 CPU cores. `objectives` first: it quiets upstream
# noise that importing PEFT would print (objectives.engine.arguments).
_PRELOAD = ["objectives", "torch", "transformers", "transformers.trainer", "peft", "datasets"]
_FORKSERVER = None


@dataclass(frozen=True, kw_only=True)
class RankGroup:
    """The process group a distributed trial runs as.

    Example:
        >>> RankGroup(world_size=2).strategy
        'ddp'
    """

    world_size: int
    """Rank processes, one per device (or CPU share)."""
    devices: tuple[str, ...] = ()
    """The GPU ids the ranks use, one per rank; empty: CPUs (gloo)."""
    strategy: str = "ddp"
    """"ddp" (a model copy per rank) or "fsdp" (sharded, FSDP2)."""
    timeout_s: float = 600.0
    """The process group's timeout, for a hung collective."""
    deadlock_after_s: float = 60.0
    """How long every rank may wait in a collective, using no CPU, before the trial fails (module docstring)."""


class RankLost(RuntimeError):
    """A rank of a distributed trial died, or its process group hung past the timeout: the trial fails, and
    the same params may well succeed on a re-run (retried like a preempted trial)."""


def run_distributed_trial(objective, params: Mapping[str, Any], report: Reporter | None = None,
                          options: TrialOptions | None = None, *, group: RankGroup) -> dict[str, float]:
    """One trial of `objective` (an Objective not set up here: each rank sets up its own) as the process group
    `group` says; arguments and result as `Objective.run_trial` (`options` as they cross to another process:
    its `on_log` hears rank 0's training logs; `after_training`, `on_evaluate`, `on_checkpoint` and
    `train_dataset` are not taken). Raises optuna.TrialPruned, TrialPaused, TrialDiverged, RankLost, or a rank's
    error."""
    import optuna
    import torch

    context = _context()
    to_rank0, from_caller = context.Pipe()
    options = options or TrialOptions()
    world_size = group.world_size
    board = WaitBoard(context, world_size)
    port = _free_port()
    threads = max(1, torch.get_num_threads() // world_size)  # the worker's CPU share, split
    ranks = [context.Process(target=_rank_main, name=f"ftsweep-rank-{rank}", daemon=True,
                             args=(rank, port, group, threads, objective, dict(params), options.for_another_process(),
                                   from_caller if rank == 0 else None, board))
             for rank in range(world_size)]
    for process in ranks:
        process.start()
    from_caller.close()  # the ranks hold their ends: a dead rank 0 shows as end of file here
    outcome = None
    try:
        outcome = _serve(to_rank0, ranks, report, options.on_log, board, group.deadlock_after_s)
    finally:
        _stop(ranks, finishing=outcome is not None)
        to_rank0.close()
    kind, payload = outcome
    if kind == "pruned":
        raise optuna.TrialPruned(payload)
    if kind == "paused":
        raise TrialPaused(payload)
    if kind == "diverged":
        raise TrialDiverged(payload)
    if kind == "error":
        raise RuntimeError(payload)
    if kind == "lost":
        raise RankLost(f"a rank of the distributed trial was lost: {payload}")
    return payload


def _serve(conn, ranks, report, on_log, board: WaitBoard, deadlock_after_s: float) -> tuple[str, Any]:
    """Answer rank 0 until it sends the trial's outcome; RankLost when a rank dies first, or when every rank
    has waited in a collective for `deadlock_after_s`. (A rank that hangs elsewhere is caught by the process
    group's timeout: its peers' next collective fails and they exit.)"""
    while True:
        stuck = board.deadlocked(deadlock_after_s)
        if stuck is not None:
            raise RankLost(f"the ranks deadlocked: each waited in a collective for {deadlock_after_s:g} s or more, "
                           f"using no CPU ({stuck})")
        if conn.poll(0.2):
            try:
                kind, *payload = conn.recv()
            except EOFError:  # rank 0 went away mid-message
                raise RankLost(_lost(ranks)) from None
            if kind == "eval":
                step, metrics = payload
                try:
                    conn.send((report(step, metrics) or False) if report is not None else False)  # True, False or PAUSE
                except OSError:  # rank 0 died while the backend decided
                    raise RankLost(_lost(ranks)) from None
            elif kind == "log":
                if on_log is not None:
                    on_log(*payload)
            else:
                return kind, payload[0]
        dead = [p for p in ranks if p.exitcode is not None and p.exitcode != 0]
        if (dead or all(p.exitcode is not None for p in ranks)) and not conn.poll(0):
            raise RankLost(_lost(ranks))  # (rank 0's last word, when it sent one, is read first)


class WaitBoard:
    """Where each rank of a trial waits in a collective, and since when: written by each rank's watchdog thread,
    read by the caller (shared memory: one timestamp and one short text per rank)."""

    SLOT = 200  # bytes of text per rank

    def __init__(self, context, world_size: int) -> None:
        self.world_size = world_size
        self.since = context.Array("d", world_size, lock=False)  # time.monotonic() it started waiting; 0: not
        self.where = context.Array("c", world_size * self.SLOT, lock=False)

    def publish(self, rank: int, since: float, where: str) -> None:
        self.where[rank * self.SLOT:(rank + 1) * self.SLOT] = where.encode()[:self.SLOT].ljust(self.SLOT, b"\0")
        self.since[rank] = since

    def deadlocked(self, after_s: float) -> str | None:
        """Each rank's wait ("rank 0: ...; rank 1: ...") when every rank has waited `after_s` or more, else None."""
        since = list(self.since)
        if not all(since) or time.monotonic() - max(since) < after_s:
            return None
        texts = [bytes(self.where[r * self.SLOT:(r + 1) * self.SLOT]).rstrip(b"\0").decode(errors="replace")
                 for r in range(self.world_size)]
        return "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(texts))

    def watch(self, rank: int, interval_s: float = 1.0) -> None:
        """Start this rank's watchdog: every `interval_s`, whether the main thread waits in a collective with the
        process using (almost) no CPU -- under 5 % of a core -- and since when."""
        main = threading.main_thread().ident

        def run() -> None:
            since, last_where, last_cpu = 0.0, "", time.process_time()
            while True:
                time.sleep(interval_s)
                cpu = time.process_time()
                frame = sys._current_frames().get(main)
                where = collective_wait(frame)
                del frame
                if where is None or cpu - last_cpu > 0.05 * interval_s:
                    since = 0.0  # computing, or waiting elsewhere (data, a checkpoint write, the caller)
                elif where != last_where or not since:
                    since = time.monotonic()  # a new wait (the last one ended)
                last_where, last_cpu = where or "", cpu
                self.publish(rank, since, where or "")

        threading.Thread(target=run, name="ftsweep-rank-watchdog", daemon=True).start()


def collective_wait(frame) -> str | None:
    """Where the thread whose innermost frame is `frame` waits in a collective -- e.g. "all_gather, from
    _get_num_items_in_batch (transformers/trainer.py:2387)" -- or None. Waiting in one: the innermost Python frame
    is torch.distributed's (c10d's collectives, FSDP's waits) or DDP's, or autograd's backward (where DDP waits
    for its gradient all-reduce -- or computes, which the watchdog tells apart by the CPU the process uses)."""
    if frame is None:
        return None
    path = frame.f_code.co_filename.replace("\\", "/")
    if frame.f_code.co_name == "_engine_run_backward":
        collective = "backward (DDP's gradient all-reduce)"
    elif "/torch/distributed/" in path or path.endswith("/torch/nn/parallel/distributed.py"):
        collective = frame.f_code.co_name
    else:
        return None
    while frame is not None:  # the first caller outside torch and accelerate says which step of the trial
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/torch/" not in path and "/accelerate/" not in path:
            return f"{collective}, from {frame.f_code.co_name} ({'/'.join(path.split('/')[-2:])}:{frame.f_lineno})"
        frame = frame.f_back
    return collective


def _lost(ranks) -> str:
    states = []
    for rank, process in enumerate(ranks):
        code = process.exitcode
        if code is None:
            states.append(f"rank {rank} running")
        elif code < 0:
            states.append(f"rank {rank} killed by {signal.Signals(-code).name}")
        else:
            states.append(f"rank {rank} exited with {code}")
    return "a rank of the distributed trial was lost (" + ", ".join(states) + ")"


def _stop(ranks, grace_s: float = 5.0, *, finishing: bool = False) -> None:
    """Every rank ended: SIGTERM, then SIGKILL after `grace_s`. `finishing`: rank 0 sent the outcome, so the
    ranks are leaving the group and exiting; they get `grace_s` to do so first (a terminated rank skips its exit
    handlers, and multiprocessing then warns of the semaphores it leaked, tqdm's lock among them)."""
    if finishing:
        deadline = time.monotonic() + grace_s
        for process in ranks:
            process.join(max(0.0, deadline - time.monotonic()))
    for process in ranks:
        if process.exitcode is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in ranks:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join()


def _context():
    """multiprocessing's forkserver, its server having imported _PRELOAD (started once per process)."""
    import multiprocessing

    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(_PRELOAD)
    return _FORKSERVER


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent exits, so no rank outlives a killed worker."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the caller's _stop still ends the ranks
        pass


def group_failed(exc: BaseException) -> bool:
    """Whether `exc` is the process group failing (a peer gone, a collective timed out), not the trial itself:
    torch raises DistError for some, and gloo a plain RuntimeError from its transport for others."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("gloo/transport", "nccl", "connection reset by peer", "connection closed by peer")))


def _rank_main(rank: int, port: int, group: RankGroup, threads: int, objective, params: dict,
               options: TrialOptions, conn, board: WaitBoard) -> None:
    """One rank: join the group, set up the objective, run the trial; rank 0 relays to the caller."""
    _die_with_parent()
    world_size, devices = group.world_size, list(group.devices)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    import optuna
    import torch
    import torch.distributed as dist

    backend = "nccl" if devices and torch.cuda.is_available() else "gloo"
    # The worker's CPU threads, shared by its ranks. Set in the environment too: accelerate otherwise sets one
    # thread per physical core / ranks when OMP_NUM_THREADS is unset (a single thread on a 2-vCPU machine).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=group.timeout_s))
    board.watch(rank)

    def report(step: int, metrics: dict[str, float]) -> bool:
        decision = [False]
        if rank == 0:
            conn.send(("eval", step, metrics))
            decision[0] = conn.recv()
        dist.broadcast_object_list(decision, src=0)  # every rank stops (or pauses) at the same evaluation
        return decision[0]

    def on_log(step: int, logs: dict[str, float]) -> None:
        if rank == 0:
            conn.send(("log", step, logs))

    outcome: tuple[str, Any]
    try:
        objective.strategy = group.strategy
        objective.setup()
        final = objective.run_trial(params, report, replace(options, on_log=on_log))
        outcome = ("done", final)
    except optuna.TrialPruned as exc:
        outcome = ("pruned", str(exc))
    except TrialPaused as exc:
        outcome = ("paused", exc.step)
    except TrialDiverged as exc:
        outcome = ("diverged", str(exc))
    except Exception as exc:  # noqa: BLE001 - the caller fails the trial with this rank's reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if group_failed(exc):  # a peer died or the group timed out: lost, not this trial's own error
            outcome = ("lost", f"rank {rank}: the process group failed ({type(exc).__name__}: {first})")
        else:
            traceback.print_exc()
            outcome = ("error", f"rank {rank}: {type(exc).__name__}: {exc}")
    if rank == 0:
        conn.send(outcome)
    elif outcome[0] in ("error", "lost"):
        os._exit(1)  # the caller sees a lost rank at once; its peers' collectives fail with it
    dist.destroy_process_group()
