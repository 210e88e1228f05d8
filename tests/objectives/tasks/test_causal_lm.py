"""The causal_lm task (objectives/tasks/causal_lm.py): prompt templates over any columns, chat
templates, the tokenized-data cache, and generation metrics of real greedy answers, on real tiny
fine-tunes."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from conftest import TINY_SWEEP, deep_merge
from objectives import (
    DataConfig,
    ModelConfig,
    ObjectiveOptions,
    TrainBudget,
    TrialOptions,
    get_objective,
    load_splits,
    resolve_model_path,
)
from objectives.evaluation.metrics import GENERATION_METRICS
from objectives.tasks.causal_lm import IGNORE_INDEX, CausalLMTask
from search.sweep import load_sweep
from spaces import ConfigError

BUDGET = TrainBudget(max_steps=2, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=96)
LORA = {"learning_rate": 3e-3, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}
LLAMA = "bundled:tiny-support-lm"
# A small ChatML-like template: the generation prompt is a prefix of the whole conversation.
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
# Generation metrics: a 4-step trial that evaluates twice.
GEN_BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
PARAMS = {"learning_rate": 3e-3, "lora_r": 4, "lora_alpha": 8, "target_modules": "attention_qv", "peft_method": "lora"}
CausalLM = get_objective("causal_lm")


# ---------------------------------------------------------------- prompt and chat templates


def _qa_file(tmp_path, n: int = 40):
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
    assert objective.tokenized_data.state.generation_sample[0][0].endswith("<s>assistant\n")
    assert objective.run_trial(LORA)["eval_loss"] > 0


def test_an_inline_chat_template_needs_no_template_in_the_tokenizer(tmp_path):
    objective = _causal(tmp_path, ObjectiveOptions(chat_template=CHAT))
    fmt = objective.task.prompt_format(objective.tokenizer)
    assert fmt.format_prompt({"question": "Where is it?"}).startswith("<s>user\nWhere is it?</s>")


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
    from objectives.data.checks import validate_data

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {
        "output_dir": str(tmp_path / "runs"),
        "objective": {"name": "causal_lm", "args": {"prompt_template": "Ticket {ticket}: {prompt}\nAnswer:"}}})))
    report = validate_data(load_sweep(path).make_objective())
    assert [f.check for f in report.errors] == ["columns"]
    assert "ticket" in report.errors[0].message




# ---------------------------------------------------------------- the tokenized-data cache


def test_tokenized_data_is_cached_on_disk_keyed_by_tokenizer_data_and_length():
    # `datasets` fingerprints each map() by its function, closure included (tokenizer, template,
    # max_seq_length) and its input data, and keeps the result as an Arrow file: a second worker
    # (or launch) of the same sweep reads the tokenized data instead of tokenizing again.
    from transformers import AutoTokenizer

    data = DataConfig(source="bundled:support-qa", max_train_examples=64, max_eval_examples=16)

    def tokenized_files(budget: TrainBudget, template: str | None = None):
        options = ObjectiveOptions(prompt_template=template) if template else None
        task = CausalLMTask(data, options=options, budget=budget)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(name_or_path=LLAMA)))
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        train = task.tokenize(tokenizer, *load_splits(data, seed=0, columns=task.required_columns())).train
        return {f["filename"] for f in train.cache_files}, train

    first, train = tokenized_files(GEN_BUDGET)
    again, train_again = tokenized_files(GEN_BUDGET)
    assert first and first == again and train["input_ids"] == train_again["input_ids"]
    assert tokenized_files(GEN_BUDGET.model_copy(update={"max_seq_length": 48}))[0] != first
    assert tokenized_files(GEN_BUDGET, template="Q: {prompt}\nA:")[0] != first



# ---------------------------------------------------------------- generation metrics


def causal_lm(metrics=None, samples: int = 4):
    obj = CausalLM(ModelConfig(name_or_path="bundled:tiny-support-lm"),
                   DataConfig(source="bundled:support-qa", max_train_examples=32, max_eval_examples=16), GEN_BUDGET,
                   seed=0, options=ObjectiveOptions(generation_samples=samples, max_new_tokens=16), metrics=metrics)
    obj.setup()
    return obj


def test_causal_lm_trial_reports_requested_generation_metrics_at_every_evaluation():
    obj = causal_lm(metrics=["eval_loss", "bleu", "rougeL"])
    sample = obj.tokenized_data.state.generation_sample
    assert len(sample) == 4
    assert all(prompt.startswith("Question: ") and prompt.endswith("\nAnswer:") and reference
               for prompt, reference in sample)
    reports = []
    metrics = obj.run_trial(PARAMS, report=lambda step, m: reports.append(m) or False)
    assert len(reports) == 2
    for result in (*reports, metrics):
        assert math.isfinite(result["bleu"]) and 0.0 <= result["bleu"] <= 100.0
        assert math.isfinite(result["rougeL"]) and 0.0 <= result["rougeL"] <= 1.0
        assert not {"rouge1", "rouge2", "meteor"} & set(result)  # only what was asked for


def test_causal_lm_decodes_nothing_when_no_generation_metric_is_requested():
    obj = causal_lm(metrics=["eval_loss"])
    assert obj.evaluation_extras(obj.base_model) == {}
    metrics = obj.run_trial(PARAMS)
    assert math.isfinite(metrics["eval_loss"])
    assert not set(GENERATION_METRICS) & set(metrics)


@pytest.fixture(scope="module")
def generating():
    return causal_lm(metrics=["rouge1"], samples=6)


@pytest.mark.parametrize("method", ["lora", "prefix_tuning", "prompt_tuning"])
def test_batched_greedy_answers_match_one_prompt_at_a_time(generating, method):
    # Left padding must not change what a trained adapter answers, prompt-learning methods included
    # (PEFT drops position ids for prompt tuning, so its prompts are batched by length instead).
    seen = {}

    def decode(model, trainer):
        model.train()
        prompts = [prompt for prompt, _ in generating.tokenized_data.state.generation_sample]
        task, tokenizer = generating.task, generating.tokenizer
        seen["batched"] = task.generate_responses(model, tokenizer, prompts)
        seen["alone"] = [task.generate_responses(model, tokenizer, [prompt])[0] for prompt in prompts]
        seen["training"] = all(module.training for module in model.modules())
        return {}

    metrics = generating.run_trial({"peft_method": method, "learning_rate": 1e-2}, options=TrialOptions(after_training=decode))
    assert seen["batched"] == seen["alone"]
    assert len(seen["batched"]) == 6 and any(seen["batched"])
    assert not any(answer.startswith("Question:") for answer in seen["batched"])  # only the new tokens
    assert seen["training"]  # decoding put the model back in training mode
    assert 0.0 <= metrics["rouge1"] <= 1.0


def test_generation_metrics_of_raw_rows_score_only_prompts_with_room_for_an_answer(generating):
    # What `ftsweep gate` scores on the test rows: only prompts within max_seq_length are answered.
    rows = [{"prompt": "How do refunds work?", "response": "Within five days."},
            {"prompt": "word " * 200, "response": "Never decoded."}]
    task, tok = generating.task, generating.tokenizer
    assert len(task._answerable(tok, rows)) == 1
    metrics = task.evaluate_generation(generating.base_model, tok, rows, ["rouge1", "eval_loss"])
    assert set(metrics) == {"rouge1"} and 0.0 <= metrics["rouge1"] <= 1.0
    assert task.evaluate_generation(generating.base_model, tok, rows[1:], ["rouge1"]) == {}
