"""What padding-free batches and sequence packing save, per trial: wall time and real tokens per second.

    python scripts/bench_sequence_packing.py [--repeats 3] [--steps 60] [--quick]

Two workloads, each trained by ftsweep's own objective (`Objective.run_trial`, one LoRA trial with fixed
params) in three ways -- `budget.padding_free` and `budget.packing` off (padded batches, the default),
padding-free, packed -- alternating the three within each repeat, medians reported:

    demo   the demo sweep's data, model and budget (bundled:support-qa on bundled:tiny-support-lm,
           batch 16, max_seq_length 64, the demo's step count): short prompt/response pairs of similar length
    chat   multi-turn chat built here from the same QA pairs: 1 to 8 exchanges per conversation, so lengths
           vary ~10x (ChatML template, batch 8, max_seq_length 256), the case packing is for

Per trial: wall seconds (training and the final evaluation; set-up is done once per mode, before),
examples and real (non-pad) tokens through the model, the share of computed positions that were padding,
and real tokens per second. Packing trains on more examples per step (a packed row holds several), so
compare tokens/s, not wall.

Also measured: the cost of tokenizing the chat data through TRL's path (a template with generation markers,
transformers' assistant masks) against the hand-written prefix masking, and TRL's SFTTrainer preparing the
same data, all to the same ids and labels.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from objectives.data.conversations import CHATML, CHATML_WITH_MARKERS  # noqa: E402 (after the path above)

PARAMS = {"learning_rate": 3e-3, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "attention",
          "peft_method": "lora"}
MODES = {"padded": {}, "padding_free": {"padding_free": True}, "packing": {"packing": True},
         "packing+padding_free": {"packing": True, "padding_free": True}}


def build_chat(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Conversations of 1 to 8 support exchanges (from the bundled QA pairs), one per line."""
    import random

    from objectives.data.sources import ASSETS

    pairs = [json.loads(line) for line in (ASSETS / "datasets" / "support_qa.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(n):
            turns = [{"role": "system", "content": "You help shop customers."}] if rng.random() < 0.3 else []
            for pair in rng.sample(pairs, rng.randint(1, 8)):
                turns += [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": pair["response"]}]
            out.write(json.dumps({"messages": turns}) + "\n")
    return path


def workloads(steps: int, chat_file: Path) -> dict:
    from objectives import DataConfig, ObjectiveOptions

    return {
        "demo": dict(data=DataConfig(source="bundled:support-qa", max_eval_examples=64), options=ObjectiveOptions(),
                     budget=dict(max_steps=steps, eval_every=steps, batch_size=16, max_seq_length=64)),
        "chat": dict(data=DataConfig(source=str(chat_file), max_eval_examples=32),
                     options=ObjectiveOptions(chat_template=CHATML),
                     budget=dict(max_steps=steps, eval_every=steps, batch_size=8, eval_batch_size=16,
                                 max_seq_length=256)),
    }


class Counting:
    """Wraps a task's collator: counts examples, real tokens and computed positions of every batch."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.examples = self.real = self.computed = 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.computed += batch["input_ids"].numel()
        self.real += sum(len(e["input_ids"]) for e in examples)  # the examples' own tokens, whatever the padding
        self.examples += sum(len(e.get("seq_lengths", [0])) for e in examples) if "seq_lengths" in examples[0] \
            else len(examples)
        return batch


def prepared(name: str, spec: dict, mode: str):
    from objectives import ModelConfig, TrainBudget, get_objective

    objective = get_objective("causal_lm")(ModelConfig(name_or_path="bundled:tiny-support-lm"), spec["data"],
                                           TrainBudget(**spec["budget"], **MODES[mode]), seed=0,
                                           options=spec["options"])
    objective.setup()
    made = objective.task.collator
    objective.counters = []

    def counting(tokenizer):
        counter = Counting(made(tokenizer))
        objective.counters.append(counter)
        return counter

    objective.task.collator = counting
    return objective


def tokenize_costs(chat_file: Path, repeats: int) -> dict[str, float]:
    """Seconds to tokenize the chat data: prefix masking, TRL's generation-marker masks, TRL's SFTTrainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from objectives import ModelConfig, resolve_model_path
    from objectives.data.conversations import encode_chat, to_messages

    path = resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm"))
    tok = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in chat_file.read_text().splitlines()]
    conversations = [to_messages(r, "messages") for r in rows]
    times: dict[str, list[float]] = {"prefix masking (hand-written)": [], "generation markers (TRL's path)": [],
                                     "SFTTrainer dataset preparation": []}
    same = True
    for _ in range(repeats):
        start = time.perf_counter()
        by_prefix = [encode_chat(tok, m, CHATML, "prefix") for m in conversations]
        times["prefix masking (hand-written)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        by_markers = [encode_chat(tok, m, CHATML_WITH_MARKERS, "markers") for m in conversations]
        times["generation markers (TRL's path)"].append(time.perf_counter() - start)
        same &= by_prefix == by_markers
        marked = AutoTokenizer.from_pretrained(path)
        marked.chat_template = CHATML_WITH_MARKERS
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), processing_class=marked,
                                 train_dataset=Dataset.from_list(rows),
                                 args=SFTConfig(output_dir=out, assistant_only_loss=True, max_length=None,
                                                report_to=[], use_cpu=True, dataset_num_proc=None))
            times["SFTTrainer dataset preparation"].append(time.perf_counter() - start)
        same &= [(r["input_ids"], r["labels"]) for r in trainer.train_dataset] == by_prefix
    print(f"\nTokenizing {len(rows)} chat rows (median of {repeats}; all three give the same ids and labels: {same})")
    print("| path | seconds | rows/s |\n|---|---:|---:|")
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {len(rows) / seconds:,.0f} |")
    return medians


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per trial (the demo's: 60)")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 6 steps: checks the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 1, 6
    import torch
    import transformers

    import objectives

    torch.manual_seed(0)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        chat_file = build_chat(Path(tmp) / "chat.jsonl", n=120 if args.quick else 600)
        for name, spec in workloads(args.steps, chat_file).items():
            prepared_modes = {mode: prepared(name, spec, mode) for mode in MODES}
            walls: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.repeats):
                for mode, objective in prepared_modes.items():  # alternating: drift hits every mode alike
                    start = time.perf_counter()
                    objective.run_trial(PARAMS)
                    walls[mode].append(time.perf_counter() - start)
            results[name] = {}
            for mode, objective in prepared_modes.items():
                counter = objective.counters[-1]
                wall = statistics.median(walls[mode])
                results[name][mode] = {"wall_s": wall, "examples": counter.examples, "real_tokens": counter.real,
                                       "padding_share": 1 - counter.real / counter.computed,
                                       "tokens_per_s": counter.real / wall}
        results["tokenize_s"] = tokenize_costs(chat_file, args.repeats)

    print(f"\nPer trial (median of {args.repeats}, {args.steps} steps; training and one evaluation, set-up excluded)")
    print("| workload | mode | wall s | examples | real tokens | padding | real tokens/s | vs padded |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in ("demo", "chat"):
        base = results[name]["padded"]["tokens_per_s"]
        for mode, r in results[name].items():
            print(f"| {name} | {mode} | {r['wall_s']:.2f} | {r['examples']} | {r['real_tokens']:,} | "
                  f"{r['padding_share']:.0%} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x |")
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, ftsweep at {Path(objectives.__file__).parent}")
    chat = results["chat"]
    print(f"packing / padded on chat: real tokens/s {chat['packing']['tokens_per_s'] / chat['padded']['tokens_per_s']:.2f}x,"
          f" padding-free {chat['padding_free']['tokens_per_s'] / chat['padded']['tokens_per_s']:.2f}x")
    return results


if __name__ == "__main__":
    main()
