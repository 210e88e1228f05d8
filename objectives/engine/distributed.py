"""Trials bigger than one device: one trial as a `torch.distributed` job of G rank processes (DDP or FSDP).

`run_distributed_trial(objective, params, report, world_size=G)` starts G processes on this machine, each
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

A rank that dies ends the trial: the caller stops every rank (no process group left hanging, nothing left
running: each rank also dies with its parent) and raises `RankLost`; a hung collective fails after
`timeout_s` (the process group's own timeout), and then the same. Checkpoints are rank 0's, as Trainer
writes them; a re-run resumes from them on every rank.

Example (2 processes on CPU, gloo):

    .. code-block:: python

        final = run_distributed_trial(objective, {"learning_rate": 3e-3, "lora_r": 8}, world_size=2)
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .trial import Reporter, TrialDiverged

# What every rank imports before its trial: the forkserver imports it once per worker, so a rank starts in
# about a second instead of an interpreter's ~6 s on 2 CPU cores.
_PRELOAD = ["torch", "transformers", "transformers.trainer", "peft", "datasets", "objectives"]
_FORKSERVER = None


class RankLost(RuntimeError):
    """A rank of a distributed trial died, or its process group hung past the timeout: the trial fails, and
    the same params may well succeed on a re-run (retried like a preempted trial)."""


def run_distributed_trial(objective, params: Mapping[str, Any], report: Reporter | None = None,
                          trial_dir: str | Path | None = None, *, world_size: int,
                          devices: Sequence[str] | None = None,
                          on_log: Callable[[int, dict[str, float]], None] | None = None,
                          checkpoints: bool = False, checkpoint_interval_s: float = 0.0,
                          resume_from: str | Path | None = None, timeout_s: float = 600.0,
                          strategy: str = "ddp") -> dict[str, float]:
    """One trial of `objective` (an Objective not set up here: each rank sets up its own) in `world_size`
    processes; arguments and result as `Objective.run_trial`. `devices`: the GPU ids the trial's ranks use,
    one per rank (None: CPUs); `strategy`: "ddp" (a model copy per rank) or "fsdp" (sharded, FSDP2). Raises
    optuna.TrialPruned, TrialDiverged, RankLost, or a rank's error."""
    import optuna
    import torch

    context = _context()
    to_rank0, from_caller = context.Pipe()
    port = _free_port()
    options = {"strategy": strategy, "threads": max(1, torch.get_num_threads() // world_size),  # CPU share, split
               "trial_dir": str(trial_dir) if trial_dir is not None else None, "checkpoints": checkpoints,
               "checkpoint_interval_s": checkpoint_interval_s, "timeout_s": timeout_s,
               "resume_from": str(resume_from) if resume_from is not None else None}
    ranks = [context.Process(target=_rank_main, name=f"ftsweep-rank-{rank}", daemon=True,
                             args=(rank, world_size, port, list(devices or []), objective, dict(params), options,
                                   from_caller if rank == 0 else None))
             for rank in range(world_size)]
    for process in ranks:
        process.start()
    from_caller.close()  # the ranks hold their ends: a dead rank 0 shows as end of file here
    try:
        outcome = _serve(to_rank0, ranks, report, on_log)
    finally:
        _stop(ranks)
        to_rank0.close()
    kind, payload = outcome
    if kind == "pruned":
        raise optuna.TrialPruned(payload)
    if kind == "diverged":
        raise TrialDiverged(payload)
    if kind == "error":
        raise RuntimeError(payload)
    if kind == "lost":
        raise RankLost(f"a rank of the distributed trial was lost: {payload}")
    return payload


def _serve(conn, ranks, report, on_log) -> tuple[str, Any]:
    """Answer rank 0 until it sends the trial's outcome; RankLost when a rank dies first. (A rank that hangs
    is caught by the process group's timeout: its peers' next collective fails and they exit.)"""
    while True:
        if conn.poll(0.2):
            try:
                kind, *payload = conn.recv()
            except EOFError:  # rank 0 went away mid-message
                raise RankLost(_lost(ranks)) from None
            if kind == "eval":
                step, metrics = payload
                try:
                    conn.send(bool(report(step, metrics)) if report is not None else False)
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


def _stop(ranks, grace_s: float = 5.0) -> None:
    """Every rank ended: SIGTERM, then SIGKILL after `grace_s`."""
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


def _rank_main(rank: int, world_size: int, port: int, devices: list[str], objective, params: dict,
               options: dict, conn) -> None:
    """One rank: join the group, set up the objective, run the trial; rank 0 relays to the caller."""
    _die_with_parent()
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
    os.environ["OMP_NUM_THREADS"] = str(options["threads"])
    torch.set_num_threads(options["threads"])
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=options["timeout_s"]))

    def report(step: int, metrics: dict[str, float]) -> bool:
        decision = [False]
        if rank == 0:
            conn.send(("eval", step, metrics))
            decision[0] = conn.recv()
        dist.broadcast_object_list(decision, src=0)  # every rank stops at the same evaluation
        return bool(decision[0])

    def on_log(step: int, logs: dict[str, float]) -> None:
        if rank == 0:
            conn.send(("log", step, logs))

    outcome: tuple[str, Any]
    try:
        objective.strategy = options["strategy"]
        objective.setup()
        final = objective.run_trial(params, report, options["trial_dir"], on_log=on_log,
                                    checkpoints=options["checkpoints"],
                                    checkpoint_interval_s=options["checkpoint_interval_s"],
                                    resume_from=options["resume_from"])
        outcome = ("done", final)
    except optuna.TrialPruned as exc:
        outcome = ("pruned", str(exc))
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
