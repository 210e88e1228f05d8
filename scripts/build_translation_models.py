#!/usr/bin/env python
"""Build two tiny seq2seq translation models for back-translation: English -> "Leafish" and back.

Why this exists
---------------
Back-translation (objectives/data/augmentation.py) paraphrases training text by translating it into
another language and back with two `transformers` seq2seq models. Real ones (e.g. Helsinki-NLP
opus-mt) cannot be downloaded in CI or on an air-gapped machine, so this script builds a pair that
runs the same code path — `AutoTokenizer` + `AutoModelForSeq2SeqLM` from a local directory — on
the bundled support-shop text:

* ``forward/``   English -> Leafish
* ``backward/``  Leafish -> English

Leafish is a made-up word-for-word language: the frequent English words of the bundled data get
invented words ("order" -> a fixed pseudo word), everything else (order numbers, codes, names) is
carried over unchanged, punctuation and capitals stay where they are. It is *lossy* on purpose:
a few synonym groups share one Leafish word (hello/hi/hey, damaged/broken/cracked, store/shop,
...), and the way back always picks the group's first word. So a round trip is a paraphrase
("Hey, my mug arrived cracked." -> "Hello, my mug arrived damaged."), plus whatever mistakes two
0.3M-parameter models make after 600 training steps.

Both models are tiny T5s (2 encoder + 2 decoder layers, d_model 64, 0.29M parameters) sharing one
byte-level BPE tokenizer (digits one by one) trained here on English and Leafish text. Training is
teacher-forced cross-entropy on the 3,342 distinct sentences of the bundled datasets, 600 steps per
model; the whole build takes about a minute on two CPU cores (57-61 s measured, one torch thread:
more threads only slow models this small down on a busy machine). Measured on 64 of those
sentences: 24 translate into exactly the right Leafish and 24 round trips give exactly the designed
paraphrase; the rest carry small mistakes (a digit of an order number, a word repeated). Sentences
unlike the training data come back garbled: these models exist to exercise back-translation on the
bundled data, not to translate. Fewer steps (`--steps 60`) give models that run but translate
badly; the tests use those, since they check the plumbing, not the translations.

Usage::

    python scripts/build_translation_models.py [--out build/translation-models] [--steps 600] [--seed 0]

then, in a sweep file::

    augmentation:
      backtranslation: {forward: build/translation-models/forward, backward: build/translation-models/backward}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = REPO_ROOT / "objectives" / "assets" / "datasets"
DEFAULT_OUT = REPO_ROOT / "build" / "translation-models"
DEFAULT_STEPS = 600
DEFAULT_SEED = 0
VOCAB_SIZE = 2048  # both languages; most words are one token, so sentences stay short
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # T5's conventions: pad (id 0) also starts the decoder

# Words that share one Leafish word; the way back gives the first of the group.
SYNONYM_GROUPS = (
    ("hello", "hi", "hey"),
    ("damaged", "broken", "cracked"),
    ("store", "shop"),
    ("need", "want"),
    ("arrived", "came"),
    ("thanks", "cheers"),
    ("quickly", "fast"),
)
MIN_COUNT = 12  # words at least this frequent in the data get a Leafish word
_WORD = re.compile(r"^(\W*)(.*?)(\W*)$")
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def corpus() -> list[str]:
    """Every distinct text of the bundled datasets (QA prompts and responses, intent texts), in file order."""
    seen: dict[str, None] = {}
    for name, columns in (("support_qa.jsonl", ("prompt", "response")), ("support_intents.jsonl", ("text",))):
        with open(DATASETS / name, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                for column in columns:
                    seen.setdefault(row[column].strip(), None)
    return list(seen)


def _split(token: str) -> tuple[str, str, str]:
    """'(order,' -> ('(', 'order', ',')."""
    match = _WORD.match(token)
    return match.group(1), match.group(2), match.group(3)


def _cased(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


class Lexicon:
    """The English <-> Leafish word tables, made from word counts of `texts` and a seed.

    Example:
        >>> lexicon = Lexicon(["Hi there, hi!"] * 20)
        >>> lexicon.back(lexicon.forward("Hi there, hi!"))
        'Hello there, hello!'
    """

    def __init__(self, texts: list[str], seed: int = DEFAULT_SEED) -> None:
        counts = Counter(core.lower() for text in texts for core in (_split(t)[1] for t in text.split())
                         if core.isalpha())
        groups = [list(g) for g in SYNONYM_GROUPS]
        grouped = {w for g in groups for w in g}
        groups += [[w] for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                   if n >= MIN_COUNT and w not in grouped]
        rng = random.Random(seed)
        english = set(counts)
        taken: set[str] = set()
        self.to_leafish: dict[str, str] = {}
        self.to_english: dict[str, str] = {}
        for group in groups:
            syllables = max(1, min(3, len(group[0]) // 3))
            for attempt in range(1000):  # an unused invented word, about as long as the English one
                word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS)
                               for _ in range(syllables + attempt // 20))  # longer once short ones run out
                if word not in taken and word not in english:
                    break
            taken.add(word)
            self.to_english[word] = group[0]
            for member in group:
                self.to_leafish[member] = word

    def _map(self, text: str, table: dict[str, str]) -> str:
        out = []
        for token in text.split():
            pre, core, post = _split(token)
            mapped = table.get(core.lower())
            out.append(pre + (_cased(mapped, core) if mapped else core) + post)
        return " ".join(out)

    def forward(self, text: str) -> str:
        """English -> Leafish."""
        return self._map(text, self.to_leafish)

    def back(self, text: str) -> str:
        """Leafish -> English (a synonym group's first word)."""
        return self._map(text, self.to_english)


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE over both languages; appends </s> like T5's tokenizer; no <unk> ever needed."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    # Digits one by one: order numbers and codes are copied, and ten well-trained digit tokens copy
    # far better than hundreds of rare digit merges.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, EOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="right", model_max_length=128, clean_up_tokenization_spaces=False)


def build_model(tokenizer, seed: int = DEFAULT_SEED, *, d_model: int = 64, layers: int = 2):
    """A tiny T5 (by default ~0.3M parameters): `layers` encoder and decoder layers, tied embeddings."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=64, dropout_rate=0.0,
        feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config).to(torch.float32)


def train(model, tokenizer, pairs: list[tuple[str, str]], steps: int, *, batch_size: int = 32, lr: float = 5e-3,
          seed: int = DEFAULT_SEED) -> list[float]:
    """Teacher-forced training on (source, target) pairs; returns the loss of every step."""
    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(1, steps)))
    model.train()
    losses, order = [], []
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch, order = [pairs[i] for i in order[:batch_size]], order[batch_size:]
        source = tokenizer([s for s, _ in batch], padding=True, return_tensors="pt")
        labels = tokenizer([t for _, t in batch], padding=True, return_tensors="pt")["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(**source, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _save(model, tokenizer, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    # transformers 5 records "TokenizersBackend"; "PreTrainedTokenizerFast" loads in 4 and 5 alike.
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def translate(model, tokenizer, texts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy translations of `texts` (for the build's own check)."""
    import torch

    with torch.no_grad():
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return [t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True)]


def build_models(out: str | Path = DEFAULT_OUT, *, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED,
                 threads: int | None = 1, check: int = 64) -> dict:
    """Build, train and save both models under `out` (`forward/`, `backward/`); returns a summary
    with their paths, losses and how many of `check` held-out-free sample sentences survive a round trip.

    Example:
        >>> build_models("/tmp/mt", steps=20)["forward"]  # doctest: +SKIP
        '/tmp/mt/forward'
    """
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars
    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    texts = corpus()
    lexicon = Lexicon(texts, seed)
    leafish = [lexicon.forward(t) for t in texts]
    tokenizer = build_tokenizer(texts + leafish)
    summary: dict = {"steps": steps, "seed": seed, "sentences": len(texts), "leafish_words": len(lexicon.to_english),
                     "vocab_size": len(tokenizer)}
    models = {}
    for direction, pairs in (("forward", list(zip(texts, leafish))),
                             ("backward", [(p, lexicon.back(p)) for p in leafish])):
        model = build_model(tokenizer, seed)
        losses = train(model, tokenizer, pairs, steps, seed=seed)
        _save(model, tokenizer, out / direction)
        models[direction] = model
        summary[direction] = str(out / direction)
        tail = losses[-10:]
        summary[f"{direction}_loss"] = {"first": round(losses[0], 4), "last10": round(sum(tail) / len(tail), 4)}
    summary["parameters"] = sum(p.numel() for p in models["forward"].parameters())
    if check:
        sample = random.Random(seed).sample(texts, min(check, len(texts)))
        there = translate(models["forward"], tokenizer, sample)
        back = translate(models["backward"], tokenizer, there)
        expected = [lexicon.back(lexicon.forward(t)) for t in sample]
        summary["check"] = {
            "sentences": len(sample),
            "forward_exact": sum(a == lexicon.forward(t) for a, t in zip(there, sample)),
            "round_trip_as_designed": sum(a == e for a, e in zip(back, expected)),
            "round_trip_unchanged": sum(a == t for a, t in zip(back, sample)),
            "example": {"english": sample[0], "leafish": there[0], "back": back[0]},
        }
    summary["build_wall_seconds"] = round(time.perf_counter() - start, 1)
    (out / "build.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: build/translation-models)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per model")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; one is fastest for models this small on a busy machine")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    summary = build_models(args.out, steps=args.steps, seed=args.seed, threads=args.threads)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
