"""`ftsweep select`: rank an unlabeled pool by a trained adapter's uncertainty, checked against the
model's own probabilities computed here, independently of search/active_learning.py."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import yaml

from search.cli import main
from search.aftersweep.select import rank, read_pool, select, uncertainty
from search.cli.data import SELECT
from spaces import ConfigError


DATA = {"max_train_examples": 128, "max_eval_examples": 32}
BUDGET = {"max_steps": 8, "eval_every": 8, "batch_size": 8, "eval_batch_size": 8, "max_seq_length": 48}
PARAMS = {"learning_rate": 2e-2, "lora_r": 8, "lora_alpha": 16, "target_modules": "attention_qv"}


def _train(root, name: str, objective: str, source: str, objective_args: dict | None = None) -> tuple:
    """Train a run the way a user does (`ftsweep train winner.yaml`); returns (output dir, winner.yaml)."""
    winner = root / f"{name}.yaml"
    winner.write_text(yaml.safe_dump({
        "name": name, "objective": {"name": objective, "args": objective_args or {}},
        "model": "bundled:tiny-support-lm", "dataset": {"source": source, **DATA}, "params": PARAMS,
        "budget": BUDGET, "seed": 0,
    }))
    out = root / name
    assert main(["train", str(winner), "--set", f"output_dir={out}"]) == 0
    return out, winner


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("select"), "intents", "sequence_classification", "bundled:support-intents")[0]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """24 unlabeled intent texts (no label column), the 4th repeated as the 5th."""
    from objectives.data.sources import ASSETS

    lines = (ASSETS / "datasets" / "support_intents.jsonl").read_text().splitlines()[-23:]
    rows = [{"text": json.loads(line)["text"], "id": f"u{i}"} for i, line in enumerate(lines)]
    rows.insert(4, {"text": rows[3]["text"], "id": "dup"})
    path = tmp_path_factory.mktemp("pool") / "unlabeled.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, rows


def _select(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    SELECT.add_arguments(parser)
    return SELECT.run(parser.parse_args(list(argv)))


def _independent_probabilities(trained_dir, texts: list[str]) -> tuple[list[list[float]], list[str]]:
    """Per-text class probabilities from the base model + adapter loaded with transformers and PEFT
    alone, one text at a time (no batching), with the class ids the objective gives: sorted labels."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from objectives import load_splits, resolve_model_path
    from search.sweep import load_run

    run, _ = load_run(trained_dir / "run.yaml")
    splits = load_splits(run.dataset, seed=run.seed, columns=["text", "label"])
    labels = sorted({str(x) for split in splits if split is not None for x in split["label"]})
    path = resolve_model_path(run.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = PeftModel.from_pretrained(base, str(trained_dir / "adapter")).eval()
    probs = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=run.budget.max_seq_length, return_tensors="pt")
            probs.append(model(**ids).logits[0].double().softmax(-1).tolist())
    return probs, labels


@pytest.fixture(scope="module")
def independent(classifier, pool):
    return _independent_probabilities(classifier, [r["text"] for r in pool[1]])


def _by_hand(p: list[float], strategy: str) -> float:
    top = sorted(p, reverse=True)
    if strategy == "entropy":
        return -sum(x * math.log(x) for x in p if x > 0)
    if strategy == "margin":
        return 1 - (top[0] - top[1])
    return 1 - top[0]


@pytest.mark.parametrize("strategy", ["entropy", "margin", "least_confidence"])
def test_ranking_matches_the_models_own_probabilities(classifier, pool, independent, tmp_path, strategy, capsys):
    path, rows = pool
    out = tmp_path / "to_label.jsonl"
    assert _select("--adapter", str(classifier / "adapter"), "--pool", str(path), "--k", "10",
                   "--strategy", strategy, "--out", str(out), "--batch-size", "8") == 0
    assert f"Wrote 10 of {len(rows)} rows" in " ".join(capsys.readouterr().out.split())
    chosen = [json.loads(line) for line in out.read_text().splitlines()]

    probs, labels = independent
    expected = [_by_hand(p, strategy) for p in probs]
    order = sorted(range(len(rows)), key=lambda i: (-round(expected[i], 6), i))[:10]
    assert [row["pool_row"] - 1 for row in chosen] == order
    for row in chosen:
        i = row["pool_row"] - 1
        assert row["uncertainty"] == pytest.approx(expected[i], abs=1e-5)
        assert row["predicted_label"] == labels[max(range(len(labels)), key=lambda c: probs[i][c])]
        assert row["strategy"] == strategy
        assert row["text"] == rows[i]["text"] and row["id"] == rows[i]["id"]  # the pool's own fields are kept
    if 3 in order:  # the repeated text ties with its original and follows it, in pool order
        assert order[order.index(3) + 1] == 4


def test_k_larger_than_the_pool_writes_every_row_ranked(classifier, tmp_path, capsys):
    path = tmp_path / "small.csv"
    path.write_text("text,source\nwhere is my parcel?,mail\nI want my money back,chat\nreset my password,chat\n")
    chosen = select(classifier, path, 50, strategy="margin")
    assert chosen.out == tmp_path / "small.to_label.jsonl"  # default: next to the pool
    written = [json.loads(line) for line in chosen.out.read_text().splitlines()]
    assert sorted(r["pool_row"] for r in written) == [1, 2, 3]
    values = [r["uncertainty"] for r in written]
    assert values == sorted(values, reverse=True)
    assert written[0]["source"] in ("mail", "chat")  # CSV fields are carried over
    assert "more than the pool's 3 rows" in chosen.notes[0]
    # The output may hold labels typed in since: it is not overwritten without --force.
    with pytest.raises(ConfigError, match="--force"):
        select(classifier, path, 2)
    assert len(select(classifier, path, 2, force=True).rows) == 2


def test_a_pool_without_the_input_column_is_refused(classifier, tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"utterance": "where is my parcel?", "channel": "mail"}\n')
    with pytest.raises(ConfigError) as err:
        select(classifier, path, 5)
    message = str(err.value)
    assert str(path) in message and "'text'" in message and "['utterance', 'channel']" in message


@pytest.mark.parametrize("content, expected", [
    ('{"text": "fine"}\n{"text": null}\n', "row 2 holds no text"),
    ('{"text": "fine"}\nnot json\n', "line 2 is not a JSON object \\(not valid JSON"),
    ("", "no rows"),
])
def test_bad_pool_rows_are_named(classifier, tmp_path, content, expected):
    path = tmp_path / "pool.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        select(classifier, path, 5)


def test_a_pool_csv_reads_numbers_as_the_data_checks_and_datasets_do(tmp_path):
    """One reader (objectives/data/files.py): a numbers-only column is numbers in the pool as in training data."""
    path = tmp_path / "pool.csv"
    path.write_text("text,id,score\nwhere is my parcel?,7,0.5\nreset my password,8,\n")
    assert read_pool(path, ["text"]) == [{"text": "where is my parcel?", "id": 7, "score": 0.5},
                                         {"text": "reset my password", "id": 8, "score": None}]
    with pytest.raises(ConfigError, match="rows 1, 2 hold no text in column 'id'"):
        read_pool(path, ["text", "id"])  # a column of numbers holds no text, as the data checks say too


def test_the_data_checks_and_the_pool_name_the_same_bad_line(tmp_path):
    from objectives import DataConfig, ModelConfig, TrainBudget, get_objective, validate_data

    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "where is my parcel?", "label": "shipping"}\n[1, 2]\n')
    objective = get_objective("sequence_classification")(
        ModelConfig(name_or_path="bundled:tiny-support-lm"), DataConfig(source=str(path)), TrainBudget())
    [finding] = validate_data(objective).errors
    with pytest.raises(ConfigError) as caught:
        read_pool(path, ["text"])
    assert "line 2 is not a JSON object (a JSON list)" in finding.message
    assert "line 2 is not a JSON object (a JSON list)" in str(caught.value) and str(path) in str(caught.value)
    assert finding.examples == [2] and finding.fix in str(caught.value) and caught.value.key == "--pool"


def test_bad_arguments_are_refused(classifier, pool, tmp_path):
    path, _ = pool
    with pytest.raises(ConfigError, match="at least 1"):
        select(classifier, path, 0, out=tmp_path / "a.jsonl")
    with pytest.raises(ConfigError, match="unsupported pool file type"):
        (tmp_path / "pool.txt").write_text("hello\n")
        select(classifier, tmp_path / "pool.txt", 5)
    export = tmp_path / "exported"
    export.mkdir()
    (export / "winner.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="ftsweep train"):  # an export has no trained weights yet
        select(export, path, 5, out=tmp_path / "b.jsonl")
    with pytest.raises(ConfigError, match="no such adapter directory"):
        select(tmp_path / "nowhere", path, 5, out=tmp_path / "c.jsonl")


def test_uncertainty_measures_and_ties():
    p = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    assert uncertainty(p, "entropy").tolist() == pytest.approx([_by_hand([0.7, 0.2, 0.1], "entropy"), math.log(3)])
    assert uncertainty(p, "margin").tolist() == pytest.approx([0.5, 1.0])
    assert uncertainty(p, "least_confidence").tolist() == pytest.approx([0.3, 2 / 3])
    assert rank([0.2, 0.9, 0.2, float("nan"), 0.9]) == [1, 4, 0, 2, 3]  # ties in pool order, NaN last


def test_causal_lm_scores_the_tokens_of_its_greedy_answer(tmp_path):
    """least_confidence of a causal LM = 1 - mean probability of its greedy tokens; checked by decoding
    by hand and one teacher-forced forward pass over prompt + answer (+ end of sequence). The prompt
    template names two columns: the pool must hold both."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from objectives import ModelConfig, resolve_model_path
    from objectives.data.sources import ASSETS

    data = tmp_path / "qa.jsonl"
    rows = [json.loads(line) for line in (ASSETS / "datasets" / "support_qa.jsonl").read_text().splitlines()[:300]]
    data.write_text("".join(json.dumps({**r, "channel": "chat" if i % 2 else "mail"}) + "\n"
                            for i, r in enumerate(rows)))
    template = "Channel: {channel}\nQuestion: {prompt}\nAnswer:"
    trained, _ = _train(tmp_path, "qa", "causal_lm", str(data), objective_args={"prompt_template": template})
    pool = [{"prompt": "Can you track parcel TR278171 for me?", "channel": "mail"},
            {"prompt": "When will I get my refund for order X2090?", "channel": "chat"},
            {"prompt": "Hello, please end my Plus subscription.", "channel": "chat"}]
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"prompt": "no channel"}) + "\n")
    with pytest.raises(ConfigError, match="no column 'channel'"):
        select(trained, path, 3)
    path.write_text("".join(json.dumps(p) + "\n" for p in pool))
    chosen = select(trained, path, 3, strategy="least_confidence", max_new_tokens=12, batch_size=2, force=True)
    assert [r["strategy"] for r in chosen.rows] == ["least_confidence"] * 3

    model_path = resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path),
                                      str(trained / "adapter")).eval()
    for row in chosen.rows:
        prompt = [tokenizer.bos_token_id] + tokenizer(template.format(**row), add_special_tokens=False)["input_ids"]
        ids = list(prompt)
        with torch.no_grad():  # greedy decoding by hand, one token at a time
            for _ in range(12):
                next_id = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                ids.append(next_id)
                if next_id == tokenizer.eos_token_id:
                    break
            probs = model(input_ids=torch.tensor([ids])).logits[0].double().softmax(-1)
        answer = ids[len(prompt):]
        top = [float(probs[len(prompt) - 1 + t].max()) for t in range(len(answer))]
        assert row["uncertainty"] == pytest.approx(1 - sum(top) / len(top), abs=1e-4)
        assert row["predicted_response"] == tokenizer.decode(answer, skip_special_tokens=True).strip()
