"""Turning raw data into the task's shape: prompt templates over any columns, chat templates, and
label maps, on real tiny fine-tunes."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import TINY_SWEEP, deep_merge
from objectives import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget, get_objective, resolve_model_path
from objectives.causal_lm import IGNORE_INDEX
from search.spec import load_sweep
from spaces import ConfigError

BUDGET = TrainBudget(max_steps=2, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=96)
LORA = {"learning_rate": 3e-3, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}
LLAMA = "bundled:tiny-support-lm"
# A small ChatML-like template: the generation prompt is a prefix of the whole conversation.
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def _qa_file(tmp_path, n: int = 40):
    from objectives import load_splits

    rows = load_splits(DataConfig(source="bundled:support-qa", test_fraction=0.0), seed=0, columns=["prompt", "response"])[0]
    path = tmp_path / "qa.jsonl"
    with path.open("w") as f:
        for i, row in enumerate(rows.select(range(n))):
            f.write(json.dumps({"question": row["prompt"], "context": f"ticket {i}", "answer": row["response"]}) + "\n")
    return path


def _causal(tmp_path, options: ObjectiveOptions, model: str = LLAMA):
    data = DataConfig(source=str(_qa_file(tmp_path)), response_column="answer", prompt_column="question",
                      max_eval_examples=8)
    objective = get_objective("causal_lm")(ModelConfig(name_or_path=model), data, BUDGET, options=options)
    objective.setup()
    return objective


def test_a_template_over_several_columns(tmp_path):
    from transformers import AutoTokenizer

    options = ObjectiveOptions(prompt_template="Context: {context}\nQuestion: {question}\nAnswer:")
    objective = _causal(tmp_path, options)
    assert objective.required_columns() == ["context", "question", "answer"]
    tok = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(name_or_path=LLAMA)))
    from objectives import load_splits

    train = load_splits(objective.data_config, seed=0, columns=objective.required_columns())[0]
    row = train[0]
    prompt = tok(f"Context: {row['context']}\nQuestion: {row['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
    response = tok(" " + row["answer"], add_special_tokens=False)["input_ids"]
    expected = [tok.bos_token_id, *prompt, *response, tok.eos_token_id]
    first = objective.train_dataset[0]
    assert first["input_ids"] == expected[:96]
    assert first["labels"][: len(prompt) + 1] == [IGNORE_INDEX] * (len(prompt) + 1)
    assert objective.run_trial(LORA)["eval_loss"] > 0


def _chat_model(tmp_path, template: str | None):
    from transformers import AutoTokenizer

    source = resolve_model_path(ModelConfig(name_or_path=LLAMA))
    target = tmp_path / "chat-model"
    shutil.copytree(source, target)
    tok = AutoTokenizer.from_pretrained(target)
    tok.chat_template = template
    tok.save_pretrained(target)
    return str(target)


def test_the_tokenizers_chat_template_masks_the_prompt_and_trains(tmp_path):
    model = _chat_model(tmp_path, CHAT)
    objective = _causal(tmp_path, ObjectiveOptions(chat_template=True, system_prompt="You help shop customers."), model)
    tok = objective.tokenizer
    from objectives import load_splits

    row = load_splits(objective.data_config, seed=0, columns=objective.required_columns())[0][0]
    messages = [{"role": "system", "content": "You help shop customers."}, {"role": "user", "content": row["question"]}]
    prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template([*messages, {"role": "assistant", "content": row["answer"]}], tokenize=False)
    assert full_text.startswith(prompt_text) and prompt_text.endswith("<s>assistant\n")
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]  # no extra bos: the template has its own
    first = objective.train_dataset[0]
    assert first["input_ids"] == (prompt_ids + tok(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"])[:96]
    assert first["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert first["labels"][len(prompt_ids)] != IGNORE_INDEX
    assert objective.generation_sample[0][0].endswith("<s>assistant\n")
    assert objective.run_trial(LORA)["eval_loss"] > 0


def test_an_inline_chat_template_needs_no_template_in_the_tokenizer(tmp_path):
    objective = _causal(tmp_path, ObjectiveOptions(chat_template=CHAT))
    assert objective.format_prompt({"question": "Where is it?"}).startswith("<s>user\nWhere is it?</s>")


def test_a_chat_template_the_tokenizer_lacks_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no chat template") as error:
        _causal(tmp_path, ObjectiveOptions(chat_template=True))
    assert error.value.key == "objective.args.chat_template"


@pytest.mark.parametrize(("template", "text"), [("Question: {prompt\nAnswer:", "not a format string"),
                                                 ("Question only", "at least one column"),
                                                 ("Q: {0}", "plain column names")])
def test_bad_prompt_templates_are_refused_when_the_sweep_loads(write_sweep, template, text):
    with pytest.raises(ConfigError, match=text):
        load_sweep(write_sweep(objective={"name": "causal_lm", "args": {"prompt_template": template}}))


def test_a_template_column_the_data_lacks_is_a_data_error(tmp_path):
    from objectives.data_checks import validate_data

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {
        "output_dir": str(tmp_path / "runs"),
        "objective": {"name": "causal_lm", "args": {"prompt_template": "Ticket {ticket}: {prompt}\nAnswer:"}}})))
    report = validate_data(load_sweep(path).make_objective())
    assert [f.check for f in report.errors] == ["columns"]
    assert "ticket" in report.errors[0].message


def _intents_file(tmp_path):
    path = tmp_path / "intents.jsonl"
    rows = [{"text": f"please refund order {i}", "label": i % 3} for i in range(30)]
    rows += [{"text": f"where is parcel {i}", "label": 3} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_label_map_renames_and_merges_classes(tmp_path):
    data = DataConfig(source=str(_intents_file(tmp_path)), label_map={0: "refund", 1: "refund", 2: "refund", 3: "track"})
    objective = get_objective("sequence_classification")(ModelConfig(name_or_path=LLAMA), data, BUDGET)
    objective.setup()
    assert objective.label2id == {"refund": 0, "track": 1}
    assert objective.base_model.config.id2label == {0: "refund", 1: "track"}
    from objectives import load_splits

    raw = load_splits(data, seed=0, columns=["text", "label"])[0]
    assert objective.train_dataset["labels"] == [0 if label < 3 else 1 for label in raw["label"]]
    assert 0.0 <= objective.run_trial(LORA)["accuracy"] <= 1.0


def test_a_label_the_map_misses_is_refused(tmp_path):
    data = DataConfig(source=str(_intents_file(tmp_path)), label_map={0: "refund", 1: "refund", 3: "track"})
    objective = get_objective("sequence_classification")(ModelConfig(name_or_path=LLAMA), data, BUDGET)
    with pytest.raises(ConfigError, match=r"\['2'\].*not in dataset.label_map"):
        objective.setup()
