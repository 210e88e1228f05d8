"""Framework overhead on a GPU: tokens/s inside an ftsweep trial vs a bare PEFT loop, and seconds between trials.

    python scripts/bench_gpu.py --model-dir /tmp/bench-llama [--batch-size 8] [--rounds 3] [--trials 3] [--json out.json]
    python scripts/bench_gpu.py --tiny --model-dir /tmp/bench-tiny      # CPU smoke run (what the test runs)

What is built (once, into --model-dir; reused when its spec matches)
    A random-init Llama-style model saved with `save_pretrained` in bf16 (default: hidden 1024, 24 layers,
    16 heads, MLP 4096, vocab 32000, untied head: 0.47B parameters), the bundled tiny-support-lm
    tokenizer (its 1,536 ids fit the 32,000-row embedding; usable offline), and `data.jsonl`: synthetic
    prompt/response pairs whose response alone is longer than --seq-len, so causal_lm's tokenization
    truncates every example to exactly --seq-len tokens. No batch carries padding; the script checks it.

What is measured
    Both sides train the same model, data and LoRA config (r=16, alpha=32, dropout 0.05 on q/k/v/o:
    the trial's `target_modules: attention`), batch --batch-size x --seq-len, bf16 autocast over bf16
    weights (LoRA weights in fp32, PEFT's default), fused AdamW (Trainer's default optimizer here),
    linear decay, gradient clipping at 1.0.

    bare loop   `get_peft_model` on a separately loaded copy of the model, then a plain
                DataLoader -> forward -> backward -> clip -> AdamW -> scheduler loop. The data are the
                token ids the objective's `setup()` produced, batched by the same collator.
    trial       `get_objective("causal_lm")` set up once, then `run_trial(params, report)` with the same
                params each time: one evaluation at the end (eval_every = max_steps), a reporter that
                never prunes -- what an Optuna-backend trial runs.
    order       --rounds rounds of [one bare run, --trials consecutive trials], so slow drift (clocks,
                the machine's CPU) hits both sides alike; then, with --freeze-trials N, one more round
                after `gc.freeze()` (see below). The ratio is the median trial (all but the very
                first) over the median bare run.

    tokens/s    non-padding input tokens of the timed steps / their wall time. The window is the
                steps after --warmup to the last one; both ends wait for the GPU
                (`torch.cuda.synchronize`), nothing syncs inside it. In a trial the ends are
                `run_trial(options=TrialOptions(on_log=...))` calls: the objective forwards Trainer's training log every
                `logging_steps` (5) steps, right after that step's optimizer step and before the
                evaluation, so --warmup and --steps must be multiples of it. A trial's tokens are
                steps x batch x seq-len (every example is full-length, checked); the bare loop sums
                attention masks. Evaluation time is never in the window.
    between     from the end of one trial's last training step (its last training log) to the first
                training batch of the next trial (the first call of the collator that `collator()`
                returned to the new Trainer). Its parts come from the same timestamps plus three
                overridden objective hooks (a subclass that only records the time):
                  eval      last training log -> `clean_metrics` of the final evaluation
                  teardown  -> `run_trial` returns (Trainer wrap-up, `unload()`, `gc.collect()`,
                               `torch.cuda.empty_cache()`, temporary directory removed)
                  adapter   next `run_trial` call -> `training_arguments()` (pristine check,
                               `get_peft_model`)
                  args      -> `collator()` (TrainingArguments built)
                  trainer   -> first training batch (Trainer construction, `train()` set-up: optimizer,
                               scheduler, dataloader)
    warm-up excess  the first --warmup steps' wall time minus the same number of steady steps: what
                the first steps of a run cost beyond steady state (cudaMalloc after `empty_cache`,
                kernel selection) -- outside "between", reported beside it.

    gc.freeze   a measured proposal, not what ftsweep does today: after `setup()` the process holds
                ~0.5M Python objects (torch, transformers, datasets), and every full `gc.collect()`
                walks all of them -- run_trial's own in its teardown, and accelerate's
                `free_memory()` at the start of each `Trainer.train()`. The last round runs with them
                frozen.

Prints a table, the ratio, the versions, GPU and date; --json writes the same figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python scripts/bench_gpu.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

TOKENIZER_SOURCE = REPO_ROOT / "objectives" / "assets" / "models" / "tiny-support-lm"
WORDS_SOURCE = REPO_ROOT / "objectives" / "assets" / "datasets" / "support_qa.jsonl"
SPEC_FILE = "bench_spec.json"

# ~0.5B Llama-style: 24 x (4 x 1024^2 attention + 3 x 1024 x 4096 MLP) + 2 x 32000 x 1024 = 0.468B.
FULL_MODEL = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
              "intermediate_size": 4096, "vocab_size": 32000, "tie_word_embeddings": False}
TINY_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "intermediate_size": 172, "vocab_size": 1536, "tie_word_embeddings": False}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
TRIAL_PARAMS = {"learning_rate": 2e-4, "lr_scheduler_type": "linear", "lora_r": LORA["r"],
                "lora_alpha": LORA["lora_alpha"], "lora_dropout": LORA["lora_dropout"], "target_modules": "attention"}
FULL_DEFAULTS = {"seq_len": 512, "batch_size": 8, "steps": 100, "warmup": 10, "rounds": 3, "trials": 3,
                 "freeze_trials": 3}
TINY_DEFAULTS = {"seq_len": 64, "batch_size": 4, "steps": 10, "warmup": 5, "rounds": 2, "trials": 2,
                 "freeze_trials": 2}


# --------------------------------------------------------------------------- assets


def build_assets(model_dir: Path, model_kwargs: dict, *, seq_len: int, rows: int, seed: int = 0) -> dict:
    """Write model, tokenizer and data.jsonl into model_dir, unless a matching build is already there."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = {"model": model_kwargs, "seq_len": seq_len, "rows": rows, "seed": seed, "dtype": "bfloat16"}
    spec_path = model_dir / SPEC_FILE
    if spec_path.exists() and json.loads(spec_path.read_text()).get("spec") == spec:
        return json.loads(spec_path.read_text())
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_SOURCE)
    if len(tokenizer) > model_kwargs["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(tokenizer)} ids, more than vocab_size {model_kwargs['vocab_size']}")
    tokenizer.model_max_length = 1 << 20  # the objective truncates to max_seq_length itself; no length warnings
    tokenizer.save_pretrained(model_dir)

    config = LlamaConfig(**model_kwargs, max_position_embeddings=max(2048, seq_len),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    with torch.device(device):  # random init on the GPU: seconds instead of a minute of CPU init
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    del model

    # Words from the bundled QA set, so the tokenizer knows them; the response alone (one word >= one
    # token) is longer than seq_len, the prompt (< seq_len / 8 words, a few tokens each) far shorter.
    words = sorted({w for line in WORDS_SOURCE.read_text().splitlines() for v in json.loads(line).values()
                    for w in v.split()})
    rng = random.Random(seed)
    with open(model_dir / "data.jsonl", "w") as f:
        for _ in range(rows):
            prompt = " ".join(rng.choices(words, k=max(2, seq_len // 16)))
            response = " ".join(rng.choices(words, k=seq_len + 8))
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    record = {"spec": spec, "parameters": n_params, "build_s": round(time.perf_counter() - started, 1)}
    spec_path.write_text(json.dumps(record, indent=1))
    return record


# --------------------------------------------------------------------------- timing helpers


def _clock(sync: bool = True) -> float:
    """perf_counter after the GPU finished everything queued (when `sync` and there is a GPU)."""
    import torch

    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _run_figures(t_first_batch: float, t_warm: float, t_end: float, *, warmup: int, steps: int, tokens: int) -> dict:
    steady = (t_end - t_warm) / (steps - warmup)
    return {
        "tokens_per_s": tokens / (t_end - t_warm),
        "step_s": steady,
        "warmup_excess_s": (t_warm - t_first_batch) - warmup * steady,
    }


# --------------------------------------------------------------------------- bare loop


class BareLoop:
    """A plain PEFT training loop on its own loaded copy of the model; each `run()` a fresh adapter."""

    def __init__(self, model_dir: Path, dataset, collator, args, dtype) -> None:
        import torch
        from transformers import AutoModelForCausalLM, TrainingArguments

        self.dataset, self.collator, self.args = dataset, collator, args
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device)
        # Same optimizer implementation as the trial's Trainer default (adamw_torch_fused on this stack).
        self.fused = self.on_gpu and "fused" in str(TrainingArguments(output_dir="unused").optim)
        self.autocast_dtype = dtype if self.on_gpu and dtype in (torch.bfloat16, torch.float16) else None

    def run(self) -> dict:
        import torch
        from peft import LoraConfig, get_peft_model
        from torch.utils.data import DataLoader

        args, device = self.args, self.device
        torch.manual_seed(0)
        model = get_peft_model(self.base, LoraConfig(task_type="CAUSAL_LM", **LORA))
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=TRIAL_PARAMS["learning_rate"], weight_decay=0.0, fused=self.fused)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / args.steps))
        loader = DataLoader(self.dataset, batch_size=args.batch_size, shuffle=True, collate_fn=self.collator,
                            drop_last=True, pin_memory=self.on_gpu, generator=torch.Generator().manual_seed(0))
        batches = itertools.chain.from_iterable(itertools.repeat(loader))
        autocast = (torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        t_first_batch = _clock()
        tokens = 0
        for step in range(1, args.steps + 1):
            batch = next(batches)
            n_tokens = int(batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += n_tokens
            if step == args.warmup:
                t_warm, tokens = _clock(), 0
        t_end = _clock()
        if not torch.isfinite(loss):
            raise RuntimeError(f"bare loop loss became {loss.item()}")
        model.unload()
        return _run_figures(t_first_batch, t_warm, t_end, warmup=args.warmup, steps=args.steps, tokens=tokens)


# --------------------------------------------------------------------------- ftsweep trials


def timed_objective_class():
    """The causal_lm objective plus timestamps at three of its own hooks; behaviour unchanged."""
    from objectives import get_objective

    base_cls = get_objective("causal_lm")

    class TimedCausalLM(base_cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.marks: dict[str, float] = {}

        def training_arguments(self, params, output_dir):
            self.marks["adapter_ready"] = _clock()
            return super().training_arguments(params, output_dir)

        def collator(self):
            self.marks["args_ready"] = _clock()
            collate = super().collator()
            marks = self.marks

            def timed_collate(features):
                # The first call after Trainer construction is the first training batch (no sync: the
                # GPU is idle here, and a sync per batch would disturb the timed steps).
                marks.setdefault("first_batch", time.perf_counter())
                return collate(features)

            return timed_collate

        def clean_metrics(self, raw):
            self.marks.setdefault("eval_done", _clock())
            return super().clean_metrics(raw)

    return TimedCausalLM


def trial_runs(objective, args, n: int) -> list[dict]:
    """`n` run_trial calls with the same params; per trial its figures and timestamps."""
    from objectives import TrialOptions

    seq_tokens = args.batch_size * args.seq_len
    results = []
    for _ in range(n):
        objective.marks = {}
        logs: dict[int, float] = {}

        def on_log(step: int, _train_logs: dict, logs: dict = logs) -> None:
            if step in (args.warmup, args.steps):  # the window's two ends only: no sync inside it
                logs[step] = _clock()

        t_call = _clock()
        metrics = objective.run_trial(TRIAL_PARAMS, lambda step, m: False, TrialOptions(on_log=on_log))
        t_return = _clock()
        marks = objective.marks
        if int(metrics["steps"]) != args.steps or args.warmup not in logs or args.steps not in logs:
            raise RuntimeError(f"trial did not log steps {args.warmup} and {args.steps}: {sorted(logs)}, {metrics}")
        figures = _run_figures(marks["first_batch"], logs[args.warmup], logs[args.steps], warmup=args.warmup,
                               steps=args.steps, tokens=(args.steps - args.warmup) * seq_tokens)
        figures.update(
            eval_loss=metrics["eval_loss"],
            t_call=t_call, t_first_batch=marks["first_batch"], t_train_end=logs[args.steps], t_return=t_return,
            adapter_s=marks["adapter_ready"] - t_call,
            args_s=marks["args_ready"] - marks["adapter_ready"],
            trainer_s=marks["first_batch"] - marks["args_ready"],
            eval_s=marks["eval_done"] - logs[args.steps],
            teardown_s=t_return - marks["eval_done"],
        )
        results.append(figures)
    return results


def between_trials(trials: list[dict]) -> list[dict]:
    """Gap k -> k+1: the end of k's training to k+1's first training batch, and its parts."""
    gaps = []
    for prev, nxt in itertools.pairwise(trials):
        gaps.append({
            "between_s": nxt["t_first_batch"] - prev["t_train_end"],
            "eval_s": prev["eval_s"],
            "teardown_s": prev["teardown_s"],
            "loop_s": nxt["t_call"] - prev["t_return"],
            "adapter_s": nxt["adapter_s"],
            "args_s": nxt["args_s"],
            "trainer_s": nxt["trainer_s"],
        })
    return gaps


# --------------------------------------------------------------------------- main


def environment() -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "?"
    return {
        "date": dt.date.today().isoformat(),
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                   else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"),
        "python": platform.python_version(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="where the model, tokenizer and data are built (reused)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model and a few steps: a CPU smoke run")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps per bare run and per trial (multiple of 5)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (multiple of 5)")
    parser.add_argument("--rounds", type=int, help="rounds of one bare run followed by --trials trials")
    parser.add_argument("--trials", type=int, help="consecutive trials per round")
    parser.add_argument("--freeze-trials", type=int,
                        help="a last round (one bare run, N trials) after gc.freeze(): what freezing set-up's "
                        "objects would save (0: none)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    for key, value in (TINY_DEFAULTS if args.tiny else FULL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps % 5 or args.warmup % 5 or not 0 < args.warmup < args.steps:
        parser.error("--warmup and --steps must be multiples of 5 (the trial's logging interval), 0 < warmup < steps")
    if args.trials < 2 or args.rounds < 1 or args.freeze_trials == 1:
        parser.error("need --rounds >= 1, --trials >= 2 and --freeze-trials 0 or >= 2 (gaps need two trials)")

    import torch
    import transformers

    from objectives import DataConfig, ModelConfig, TrainBudget

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    env = environment()
    model_dir = Path(args.model_dir)
    # Enough training rows that no timed step meets a short end-of-epoch batch, and (full size) enough
    # validation rows for the default max_eval_examples of 256: test and validation take ~10 % each.
    train_rows = args.steps * args.batch_size
    rows = int(train_rows / 0.8) + 64 if args.tiny else max(int(train_rows / 0.8) + 64, 2900)
    built = build_assets(model_dir, TINY_MODEL if args.tiny else FULL_MODEL, seq_len=args.seq_len, rows=rows)
    dtype_name = "float32" if args.tiny and not torch.cuda.is_available() else "bfloat16"
    dtype = getattr(torch, dtype_name)

    objective = timed_objective_class()(
        ModelConfig(name_or_path=str(model_dir), dtype=dtype_name),
        DataConfig(source=str(model_dir / "data.jsonl")),
        TrainBudget(max_steps=args.steps, eval_every=args.steps, batch_size=args.batch_size,
                    max_seq_length=args.seq_len),
    )
    trial_lora = objective.peft_config(TRIAL_PARAMS)
    if (trial_lora.r, trial_lora.lora_alpha, trial_lora.lora_dropout, set(trial_lora.target_modules)) != (
            LORA["r"], LORA["lora_alpha"], LORA["lora_dropout"], set(LORA["target_modules"])):
        raise SystemExit(f"the trial's LoRA config differs from the bare loop's: {trial_lora}")
    t0 = time.perf_counter()
    objective.setup()
    setup_s = time.perf_counter() - t0
    lengths = {len(ids) for ids in objective.train_dataset["input_ids"]}
    if lengths != {args.seq_len}:
        raise SystemExit(f"training examples are not all {args.seq_len} tokens long: lengths {sorted(lengths)[:5]}...")
    if len(objective.train_dataset) < train_rows:
        raise SystemExit(f"only {len(objective.train_dataset)} training rows for {train_rows} per run")

    from transformers import DataCollatorForSeq2Seq

    from objectives.tasks.causal_lm import IGNORE_INDEX

    # The collator causal_lm's `collator()` returns (that method is timed in the subclass, so built here).
    collator = DataCollatorForSeq2Seq(objective.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    bare_loop = BareLoop(model_dir, objective.train_dataset, collator, args, dtype)
    # Rounds of one bare run then --trials trials, so drift (clocks, the VM's CPU) hits both sides alike.
    bare, trials, gaps = [], [], []
    for _ in range(args.rounds):
        bare.append(bare_loop.run())
        round_trials = trial_runs(objective, args, args.trials)
        trials += round_trials
        gaps += between_trials(round_trials)
    frozen_summary = None
    if args.freeze_trials:
        # Every object alive after set-up (modules, model, data: ~0.5M objects) leaves the collector's
        # view, so each full gc.collect() (run_trial's, and accelerate's at the start of train())
        # only walks what trials create. One more round, under the same conditions for both sides.
        gc.collect()
        gc.freeze()
        frozen_bare = bare_loop.run()
        frozen = trial_runs(objective, args, args.freeze_trials)
        gc.unfreeze()
        frozen_gaps = between_trials(frozen)
        frozen_summary = {
            "bare": frozen_bare, "trials": frozen, "gaps": frozen_gaps,
            "trial_tokens_per_s": statistics.median(r["tokens_per_s"] for r in frozen),
            "between_trials_s": {k: statistics.median(g[k] for g in frozen_gaps) for k in frozen_gaps[0]},
        }
        frozen_summary["ratio"] = frozen_summary["trial_tokens_per_s"] / frozen_bare["tokens_per_s"]

    bare_tps = statistics.median(r["tokens_per_s"] for r in bare)
    steady = trials[1:]  # the very first trial also pays one-off costs (first Trainer, first eval kernels)
    trial_tps = statistics.median(r["tokens_per_s"] for r in steady)
    ratio = trial_tps / bare_tps
    gap_median = {k: statistics.median(g[k] for g in gaps) for k in gaps[0]}
    summary = {
        "environment": env,
        "command": "python scripts/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": {**built["spec"]["model"], "parameters": built["parameters"], "dtype": dtype_name},
        "lora": LORA, "trial_params": TRIAL_PARAMS,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "trials_per_round": args.trials,
        "train_rows": len(objective.train_dataset), "eval_rows": len(objective.eval_dataset),
        "setup_s": setup_s,
        "bare": bare, "trials": trials, "gaps": gaps,
        "bare_tokens_per_s": bare_tps, "trial_tokens_per_s": trial_tps, "ratio": ratio,
        "between_trials_s": gap_median,
        "gc_frozen": frozen_summary,
    }
    print_report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


def print_report(s: dict) -> None:
    env, m = s["environment"], s["model"]
    n = m["parameters"]
    size = f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    print(f"ftsweep GPU benchmark, {env['date']}, {env['device']}, Python {env['python']}")
    print("  " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"model: random-init Llama, hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, "
          f"{m['num_attention_heads']} heads, MLP {m['intermediate_size']}, vocab {m['vocab_size']}: "
          f"{size} parameters, {m['dtype']}")
    print(f"LoRA r={s['lora']['r']} alpha={s['lora']['lora_alpha']} on {','.join(s['lora']['target_modules'])}; "
          f"batch {s['batch_size']} x {s['seq_len']} tokens, {s['steps']} steps per run, timed steps "
          f"{s['warmup'] + 1}-{s['steps']}; {s['train_rows']} train / {s['eval_rows']} eval rows; "
          f"objective setup {s['setup_s']:.1f}s")
    print(f"{'run':<16}{'tokens/s':>12}{'ms/step':>10}{'warm-up excess s':>18}{'eval s':>8}{'teardown s':>12}")
    rows, per_round = [], s["trials_per_round"]
    for k, bare in enumerate(s["bare"]):
        rows.append((f"r{k + 1} bare", bare))
        rows += [(f"r{k + 1} trial {i}", r) for i, r in enumerate(s["trials"][k * per_round:(k + 1) * per_round], 1)]
    if s["gc_frozen"]:
        rows.append(("frozen bare", s["gc_frozen"]["bare"]))
        rows += [(f"frozen trial {i}", r) for i, r in enumerate(s["gc_frozen"]["trials"], 1)]
    for name, r in rows:
        line = f"{name:<16}{r['tokens_per_s']:>12,.0f}{r['step_s'] * 1e3:>10.2f}{r['warmup_excess_s']:>18.3f}"
        if "eval_s" in r:
            line += f"{r['eval_s']:>8.3f}{r['teardown_s']:>12.3f}"
        print(line)
    print(f"tokens/s: bare loop {s['bare_tokens_per_s']:,.0f} (median of {len(s['bare'])}), ftsweep trial "
          f"{s['trial_tokens_per_s']:,.0f} (median of {len(s['trials']) - 1}: all trials but the first)")
    print(f"ratio trial/bare: {s['ratio']:.3f}  (target >= 0.95: {'met' if s['ratio'] >= 0.95 else 'NOT met'})")
    _print_gaps("seconds between trials", s["between_trials_s"], s["gaps"])
    if s["gc_frozen"]:
        f = s["gc_frozen"]
        print(f"with gc.freeze() after setup: bare {f['bare']['tokens_per_s']:,.0f}, trial "
              f"{f['trial_tokens_per_s']:,.0f} tokens/s (median of {len(f['trials'])}), ratio {f['ratio']:.3f}")
        _print_gaps("seconds between trials with gc.freeze()", f["between_trials_s"], f["gaps"])


def _print_gaps(title: str, g: dict, gaps: list[dict]) -> None:
    print(f"{title} (median of {len(gaps)} gaps): {g['between_s']:.3f}  "
          f"(target < 1 s: {'met' if g['between_s'] < 1 else 'NOT met'}); per gap: "
          + ", ".join(f"{x['between_s']:.3f}" for x in gaps))
    for key, label in (("eval_s", "end-of-trial evaluation"),
                       ("teardown_s", "teardown: Trainer wrap-up, unload, gc.collect, empty_cache"),
                       ("loop_s", "benchmark loop"),
                       ("adapter_s", "new adapter: pristine check, get_peft_model"),
                       ("args_s", "TrainingArguments"),
                       ("trainer_s", "Trainer construction + train() set-up to first batch")):
        print(f"  {label:<60}{g[key]:>8.3f}")

if __name__ == "__main__":
    main()
