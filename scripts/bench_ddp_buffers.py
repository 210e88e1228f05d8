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
import os
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

STEPS = 5  # forward+backward steps timed per round and side


def _rank(rank: int, world_size: int, port: int, rounds: int, out) -> None:
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
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
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


def main(argv: list[str] | None = None) -> dict[bool, float]:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="4 rounds: a smoke run")
    args = parser.parse_args(argv)
    rounds = 4 if args.quick else args.rounds
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, args.world_size, port, rounds, out))
             for rank in range(args.world_size)]
    for process in ranks:
        process.start()
    medians = out.get()
    for process in ranks:
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
