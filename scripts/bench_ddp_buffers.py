"""What DDP's buffer broadcast costs a LoRA step: the same model wrapped twice, with and without it, side by side.

    python scripts/bench_ddp_buffers.py [--world-size 2] [--rounds 30]
    python scripts/bench_ddp_buffers.py --quick     # 4 rounds (what the test runs)

ftsweep stopped passing `ddp_broadcast_buffers=False` to Trainer: torch 2.13's DDP deprecates `broadcast_buffers`,
and its replacement (`forward_sync_buffers`) cannot be passed through Trainer. This measures what that costs. Each
of N gloo ranks (one CPU thread each) wraps the bench model (bench_pruning.py's tiny Llama with LoRA r 8 on q/v)
in two DDPs, `broadcast_buffers=True` (DDP's default: every forward broadcasts the buffers, the rotary tables
here, from rank 0) and `False`; each round times 5 forward+backward steps of one, then of the other (order
alternating), after a barrier. Rank 0 prints the median ms per step of each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

STEPS = 5  # forward+backward steps timed per round and side


RENDEZVOUS_TIMEOUT_S = 120  # a rank that cannot join fails the run instead of waiting torch's 30 minutes
RUN_TIMEOUT_S = 900  # the whole run, --rounds 30 included; a lost rank is noticed within seconds


def _rank(rank: int, world_size: int, store: str, rounds: int, out) -> None:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from objectives import ModelConfig, resolve_model_path

    warnings.simplefilter("ignore")  # the deprecation of broadcast_buffers, once per wrap
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(1)
    # A file store, not a TCP port picked beforehand: a free port can be taken by any process before rank 0
    # binds it, and the ranks then wait for each other until the timeout.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=dt.timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm")))
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    batch = torch.randint(0, base.config.vocab_size, (16 // world_size, 64))
    wrapped = {flag: torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=flag) for flag in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for flag in (True, False) if round_ % 2 else (False, True):
            dist.barrier()
            started = time.perf_counter()
            for _ in range(STEPS):
                wrapped[flag](input_ids=batch, labels=batch).loss.backward()
            times[flag].append((time.perf_counter() - started) / STEPS * 1000)
    if rank == 0:
        out.put({flag: statistics.median(values) for flag, values in times.items()})
    dist.destroy_process_group()


def _wait_for_result(out, ranks) -> dict[bool, float]:
    """Rank 0's medians; a RuntimeError naming the ranks' exit codes if one of them ended without them."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=2)
        except queue.Empty:
            if any(process.exitcode not in (None, 0) for process in ranks) or all(
                    process.exitcode is not None for process in ranks):
                break
    for process in ranks:
        if process.exitcode is None:
            process.terminate()
    codes = ", ".join(f"rank {rank}: {process.exitcode}" for rank, process in enumerate(ranks))
    raise RuntimeError(f"the ranks ended without a result ({codes}); their errors are printed above")


def main(argv: list[str] | None = None) -> dict[bool, float]:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="4 rounds: a smoke run")
    args = parser.parse_args(argv)
    rounds = 4 if args.quick else args.rounds
    context = mp.get_context("spawn")
    out = context.Queue()
    with tempfile.TemporaryDirectory(prefix="ftsweep-bench-ddp-") as tmp:
        ranks = [context.Process(target=_rank, args=(rank, args.world_size, f"{tmp}/store", rounds, out))
                 for rank in range(args.world_size)]
        for process in ranks:
            process.start()
        try:
            medians = _wait_for_result(out, ranks)
        finally:
            for process in ranks:
                process.join(30)
                if process.exitcode is None:
                    process.kill()
                    process.join()
    print(f"Machine: {common.machine()}")
    print(f"Date: {dt.date.today().isoformat()}")
    print(f"{args.world_size} gloo ranks, {rounds} rounds of {STEPS} steps each side, median ms per step:")
    print(f"  broadcast_buffers=True  (DDP's default, what trials run now): {medians[True]:.2f}")
    print(f"  broadcast_buffers=False (what ftsweep passed before):         {medians[False]:.2f}")
    print(f"buffer broadcast: {medians[True] - medians[False]:+.2f} ms per step")
    return medians


if __name__ == "__main__":
    main()
