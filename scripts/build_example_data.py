"""Build the data of examples/own-data/: the bundled support QA pairs in the layouts and formats users bring.

    python scripts/build_example_data.py [--out examples/own-data]

Deterministic (seeded): running it again rewrites the same bytes, and tests/test_examples.py checks that
the checked-in files are what it writes. Each example folder gets its data; the sweep files beside them
are written by hand.

    chat/              train.jsonl + validation.jsonl: OpenAI/TRL `messages`, 1 to 4 exchanges, some with a system turn
    sharegpt.jsonl     `conversations` of {from: human|gpt, value}
    alpaca.jsonl       instruction, input (empty in half the rows), output
    prompt-completion.jsonl   TRL's prompt and completion strings
    shards/            part-0.jsonl, part-1.jsonl and dev.jsonl with columns question/answer (data_files + globs)
    intents/           train.csv, validation.csv, test.csv: classification split files in CSV
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "objectives" / "assets" / "datasets"
SYSTEM = "You are the support assistant of an online shop. Answer in one or two sentences."


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _conversations(pairs: list[dict], rng: random.Random, n: int) -> list[list[dict]]:
    """n conversations of 1 to 4 exchanges, taking the QA pairs from `pairs` in order (each used once)."""
    conversations = []
    for _ in range(n):
        turns = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 4)):
            pair = pairs.pop()
            turns += [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": pair["response"]}]
        conversations.append(turns)
    return conversations


def build(out: Path, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    pairs = [json.loads(line) for line in (ASSETS / "support_qa.jsonl").read_text().splitlines()]
    rng.shuffle(pairs)  # then each pair is used once (popped): no question is in two examples or splits

    def take(n: int) -> list[dict]:
        return [pairs.pop() for _ in range(n)]

    chat = _conversations(pairs, rng, 100)
    _jsonl(out / "chat" / "train.jsonl", [{"messages": c} for c in chat[:80]])
    _jsonl(out / "chat" / "validation.jsonl", [{"messages": c} for c in chat[80:]])
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    _jsonl(out / "sharegpt.jsonl", [{"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in c]}
                                    for c in _conversations(pairs, rng, 60)])
    _jsonl(out / "alpaca.jsonl", [
        {"instruction": "Answer the customer's message.", "input": p["prompt"], "output": p["response"]} if i % 2
        else {"instruction": p["prompt"], "input": "", "output": p["response"]}
        for i, p in enumerate(take(100))])
    _jsonl(out / "prompt-completion.jsonl", [{"prompt": f"Customer: {p['prompt']}\nAgent:",
                                              "completion": f" {p['response']}"} for p in take(100)])
    shards = [{"question": p["prompt"], "answer": p["response"]} for p in take(100)]
    _jsonl(out / "shards" / "part-0.jsonl", shards[:40])
    _jsonl(out / "shards" / "part-1.jsonl", shards[40:80])
    _jsonl(out / "shards" / "dev.jsonl", shards[80:])
    intents = [json.loads(line) for line in (ASSETS / "support_intents.jsonl").read_text().splitlines()]
    rng.shuffle(intents)
    for split, rows in (("train", intents[:240]), ("validation", intents[240:300]), ("test", intents[300:360])):
        _csv(out / "intents" / f"{split}.csv", rows)
    return sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".csv"))


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "own-data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = build(args.out, args.seed)
    for path in written:
        print(path.relative_to(args.out))
    return written


if __name__ == "__main__":
    main()
