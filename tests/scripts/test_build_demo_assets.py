"""Tests for scripts/build_demo_assets.py and the assets it shipped in objectives/assets."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import load_script

# The assets exist so that nothing needs the network; prove it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = REPO_ROOT / "objectives" / "assets"


bda = load_script("build_demo_assets")

ORDER_RE = re.compile(r"\b[A-Z]\d{4}\b")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_tokenizer():
    texts = bda.generate_pretrain_texts(0, n_docs=400)
    texts += [bda.format_example(r["prompt"], r["response"]) for r in bda.generate_qa(0, 200)]
    return bda.build_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="module")
def tmp_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    manifest = bda.main(["--out", str(out), "--seed", "0", "--pretrain-steps", "30"])
    return out, manifest


# --------------------------------------------------------------------------- data


def test_generators_are_deterministic_per_seed():
    assert bda.generate_qa(0, 300) == bda.generate_qa(0, 300)
    assert bda.generate_intents(0, 300) == bda.generate_intents(0, 300)
    assert bda.generate_qa(0, 300) != bda.generate_qa(1, 300)
    assert bda.generate_intents(0, 300) != bda.generate_intents(1, 300)


def test_intents_file_is_a_different_draw_than_qa():
    qa_prompts = [r["prompt"] for r in bda.generate_qa(0, 300)]
    intent_texts = [r["text"] for r in bda.generate_intents(0, 300)]
    # Independent streams: the sequences differ and overlap only by chance.
    assert qa_prompts != intent_texts
    assert len(set(qa_prompts) & set(intent_texts)) < 60


def test_record_shapes_and_uniqueness():
    qa = bda.generate_qa(0, bda.N_QA)
    intents = bda.generate_intents(0, bda.N_INTENTS)
    assert len(qa) == bda.N_QA and len(intents) == bda.N_INTENTS
    assert all(set(r) == {"prompt", "response"} for r in qa)
    assert all(set(r) == {"text", "label"} for r in intents)
    assert len({r["prompt"] for r in qa}) == len(qa)
    assert len({r["text"] for r in intents}) == len(intents)
    assert all(r["prompt"].strip() and r["response"].strip() for r in qa)
    assert {r["label"] for r in intents} == set(bda.INTENTS)
    assert len(bda.INTENTS) >= 20
    # Short sentences, so an example fits the 64-token budget.
    assert max(len(r["prompt"].split()) for r in qa) <= 20
    assert max(len(r["response"].split()) for r in qa) <= 30


def test_answers_copy_the_slot_values_of_their_question():
    records = bda.generate_qa(0, bda.N_QA, with_meta=True)
    assert [{"prompt": r["prompt"], "response": r["response"]} for r in records] == bda.generate_qa(0, bda.N_QA)
    slot_bearing = 0
    for r in records:
        assert r["slots"].keys() == set(bda.INTENTS[r["intent"]]["slots"])
        for name, value in r["slots"].items():
            assert value in r["prompt"], (name, r)
            assert value in r["response"], (name, r)
        slot_bearing += bool(r["slots"])
    assert slot_bearing > 0.9 * len(records)
    assert {r["intent"] for r in records} == set(bda.INTENTS)


def test_derived_answer_values_follow_the_shop_rules():
    records = bda.generate_qa(0, bda.N_QA, with_meta=True)
    seen = set()
    for r in records:
        s, resp = r["slots"], r["response"]
        if r["intent"] == "warranty":
            inside = int(s["months"]) <= bda.WARRANTY_MONTHS
            assert resp.startswith("Yes.") == inside, r
            seen.add(("warranty", inside))
        elif r["intent"] == "delivery_missed":
            expected = {"Monday": "Tuesday", "Friday": "Saturday", "Saturday": "Monday"}.get(s["delivery_day"])
            if expected:
                assert resp.endswith(f"again on {expected}."), r
                seen.add(("delivery", s["delivery_day"]))
        elif r["intent"] == "store_hours":
            assert ("closed" in resp) == (s["weekday"] == "Sunday"), r
            seen.add(("store", s["weekday"] == "Sunday"))
        elif r["intent"] == "promo_code":
            assert f"{re.sub(r'[A-Z]', '', s['code'])}%" in resp, r
    # The data actually exercises both branches of each rule.
    assert {("warranty", True), ("warranty", False), ("store", True), ("store", False)} <= seen
    assert ("delivery", "Saturday") in seen


def test_pretraining_corpus_never_contains_qa_pairs():
    docs = bda.generate_pretrain_texts(0, n_docs=3000)
    assert not any("Question:" in d or "Answer:" in d for d in docs)
    # Every order-bearing answer repeats its question's order number, so a
    # question next to its own answer would show the same number twice in one
    # document. Questions and replies are separate draws: numbers never repeat.
    orders_per_doc = [ORDER_RE.findall(d) for d in docs]
    assert sum(bool(o) for o in orders_per_doc) > 300  # loose questions and replies are there
    assert all(len(o) == len(set(o)) for o in orders_per_doc)


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_text_and_uses_llama_specials(small_tokenizer):
    tok = small_tokenizer
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert len({tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 4
    for text in [
        "Hi, where is my order A1234? Thanks.",
        "Question: Is the Lyon store open on Sunday?\nAnswer: Our Lyon store is closed on Sunday.",
        "  leading spaces,  double  spaces and a trailing one ",
        "Unseen words: Zürich, naïve café, 42 % off, emoji 🙂.",
    ]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    # "</s>" written in the training text is the EOS token, not five characters.
    ids = tok("Answer: done.</s>")["input_ids"]
    assert ids[-1] == tok.eos_token_id


def test_tokenizer_training_is_deterministic():
    texts = [r["prompt"] + " " + r["response"] for r in bda.generate_qa(3, 300)]
    a = bda.build_tokenizer(texts, vocab_size=500)
    b = bda.build_tokenizer(texts, vocab_size=500)
    assert a.get_vocab() == b.get_vocab()


# --------------------------------------------------------------------------- model


def test_build_model_is_seeded_and_matches_the_spec(small_tokenizer):
    import torch

    m1 = bda.build_model(small_tokenizer, seed=0)
    m2 = bda.build_model(small_tokenizer, seed=0)
    m3 = bda.build_model(small_tokenizer, seed=1)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["model.embed_tokens.weight"], s3["model.embed_tokens.weight"])
    cfg = m1.config
    assert cfg.vocab_size == len(small_tokenizer)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (64, 172, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.tie_word_embeddings and m1.lm_head.weight is m1.model.embed_tokens.weight
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        small_tokenizer.bos_token_id,
        small_tokenizer.eos_token_id,
        small_tokenizer.pad_token_id,
    )
    assert next(m1.parameters()).dtype == torch.float32


def test_pretrain_reduces_loss(small_tokenizer):
    model = bda.build_model(small_tokenizer, seed=0)
    texts = bda.generate_pretrain_texts(0, n_docs=400)
    losses = bda.pretrain(model, small_tokenizer, texts, steps=30, batch_size=16, log=None)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


# --------------------------------------------------------------------------- CLI build into tmp


def _check_loadable(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    batch = tok(
        [bda.format_example("Where is my order A1234?", "Order A1234 is on its way."), "Refunds are issued"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tok))
    assert torch.isfinite(logits).all()
    # The reloaded tokenizer still prepends <s> (transformers 5 does not persist
    # add_bos_token; tokenizer.json's post-processor has to carry it).
    assert batch["input_ids"][0, 0].item() == tok.bos_token_id
    assert next(model.parameters()).dtype == torch.float32
    # Named portably (transformers 4 has no TokenizersBackend class).
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    return tok, model


def _check_manifest(out: Path, manifest: dict):
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk - set(manifest["files"]) == {"manifest.json", "README.md"}
    for name, info in manifest["files"].items():
        path = out / name
        assert path.stat().st_size == info["bytes"], name
        assert _sha256(path) == info["sha256"], name
    readme = (out / "README.md").read_text()
    for info in manifest["files"].values():
        assert info["sha256"] in readme


@pytest.mark.slow  # builds every asset, the pretrained tiny models included
def test_cli_build_into_tmp(tmp_build):
    out, manifest = tmp_build
    assert json.loads((out / "manifest.json").read_text()) == manifest
    pre = manifest["model"]["pretrain"]
    assert pre["steps"] == 30
    assert pre["final_loss"] < pre["first_loss"] - 0.5
    _check_manifest(out, manifest)
    _check_loadable(out / bda.MODEL_DIR)
    assert "--pretrain-steps 30" in manifest["model"]["command"]


@pytest.mark.slow  # builds every asset, the pretrained tiny models included
def test_dataset_bytes_are_reproducible(tmp_build):
    """Same seed, separate process state: the tmp build writes the shipped bytes."""
    out, manifest = tmp_build
    assert manifest["datasets"]["seed"] == 0
    for name in (bda.QA_FILE, bda.INTENTS_FILE):
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_only_data_writes_only_data(tmp_path):
    bda.main(["--out", str(tmp_path), "--only", "data", "--seed", "5"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "model" not in manifest and manifest["datasets"]["seed"] == 5
    assert not (tmp_path / "models").exists()
    assert _read_jsonl(tmp_path / bda.QA_FILE) == bda.generate_qa(5, bda.N_QA)
    assert _read_jsonl(tmp_path / bda.INTENTS_FILE) == bda.generate_intents(5, bda.N_INTENTS)
    _check_manifest(tmp_path, manifest)


@pytest.mark.slow  # builds every asset, the pretrained tiny models included
def test_only_data_rebuild_keeps_the_model_record(tmp_build, tmp_path):
    out, manifest = tmp_build
    copy = tmp_path / "assets"
    shutil.copytree(out, copy)
    bda.main(["--out", str(copy), "--only", "data", "--seed", "1"])
    after = json.loads((copy / "manifest.json").read_text())
    assert after["datasets"]["seed"] == 1
    assert after["model"] == manifest["model"]
    assert after["files"][bda.QA_FILE] != manifest["files"][bda.QA_FILE]
    model_files = {k: v for k, v in manifest["files"].items() if k.startswith("models/")}
    assert model_files and all(after["files"][k] == v for k, v in model_files.items())
    _check_manifest(copy, after)


# --------------------------------------------------------------------------- shipped assets


@pytest.fixture(scope="module")
def shipped_manifest():
    return json.loads((SHIPPED / "manifest.json").read_text())


def test_shipped_manifest_matches_files(shipped_manifest):
    _check_manifest(SHIPPED, shipped_manifest)
    assert shipped_manifest["prompt_format"] == "Question: {prompt}\nAnswer: {response}</s>"
    assert shipped_manifest["prompt_only_format"] == "Question: {prompt}\nAnswer:"
    model_bytes = sum(p.stat().st_size for p in (SHIPPED / bda.MODEL_DIR).iterdir())
    assert model_bytes < 3 * 1024 * 1024
    assert (SHIPPED / bda.MODEL_DIR / "model.safetensors").is_file()


def test_shipped_datasets(shipped_manifest):
    qa = _read_jsonl(SHIPPED / bda.QA_FILE)
    intents = _read_jsonl(SHIPPED / bda.INTENTS_FILE)
    seed = shipped_manifest["datasets"]["seed"]
    assert qa == bda.generate_qa(seed, len(qa))
    assert intents == bda.generate_intents(seed, len(intents))
    assert len({r["prompt"] for r in qa}) == len(qa) >= 1000
    assert all(r["response"].strip() for r in qa)
    with_order = [r for r in qa if ORDER_RE.search(r["prompt"])]
    assert len(with_order) > 300
    for r in with_order:
        for order in ORDER_RE.findall(r["prompt"]):
            assert order in r["response"], r


def test_shipped_model_loads_and_was_pretrained(shipped_manifest):
    import torch

    tok, model = _check_loadable(SHIPPED / bda.MODEL_DIR)
    assert len(tok) == shipped_manifest["model"]["vocab_size"]
    assert sum(p.numel() for p in model.parameters()) == shipped_manifest["model"]["parameters"]
    # Pretrained on shop text: far below the ~ln(vocab) = 7.3 of a random init.
    docs = bda.generate_pretrain_texts(shipped_manifest["model"]["seed"], n_docs=64)
    batch = tok(docs, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    assert loss < 2.0, loss


def test_shipped_qa_examples_fit_in_64_tokens():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SHIPPED / bda.MODEL_DIR, local_files_only=True)
    qa = _read_jsonl(SHIPPED / bda.QA_FILE)
    assert bda.format_example("P", "R") == "Question: P\nAnswer: R</s>"
    lengths = [len(tok(bda.format_example(r["prompt"], r["response"]))["input_ids"]) for r in qa]
    assert sum(n <= bda.MAX_EXAMPLE_TOKENS for n in lengths) >= 0.95 * len(qa)


def test_shipped_prompt_tokens_are_a_prefix_of_the_example_tokens():
    """Masking the prompt out of the loss by its token count needs this property."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SHIPPED / bda.MODEL_DIR, local_files_only=True)
    for r in _read_jsonl(SHIPPED / bda.QA_FILE):
        prompt_ids = tok(bda.format_prompt(r["prompt"]))["input_ids"]
        full_ids = tok(bda.format_example(r["prompt"], r["response"]))["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids, r
        assert full_ids[-1] == tok.eos_token_id and len(full_ids) > len(prompt_ids) + 1
