"""Chat and instruction data (objectives/data/conversations.py): every format users bring is detected from its
columns, rendered by the chat template with the loss on every assistant turn and nothing else (the same ids
and labels as TRL's SFTTrainer makes), swept for real, and bad rows are found with their row numbers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget, get_objective, resolve_model_path
from objectives.data.conversations import (
    CHATML,  # the bundled tokenizer has no template of its own
    CHATML_WITH_MARKERS,
    IGNORE_INDEX,
    detect_format,
    encode_chat,
    to_messages,
    training_template,
)
from objectives.data.checks import validate_data
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import load_existing_study
from search.sweep import load_sweep

MODEL = ModelConfig(name_or_path="bundled:tiny-support-lm")


def _turns(i: int) -> list[dict]:
    """Row i: a system turn on every third row, and 1 to 3 user/assistant exchanges."""
    turns = [{"role": "system", "content": "You help shop customers."}] if i % 3 == 0 else []
    for t in range(1 + i % 3):
        turns += [{"role": "user", "content": f"Where is order {1000 + 7 * i + t}?"},
                  {"role": "assistant", "content": f"Order {1000 + 7 * i + t} ships in {(i + t) % 7 + 1} days."}]
    return turns


def rows_of(fmt: str, n: int = 60) -> list[dict]:
    if fmt == "messages":
        return [{"messages": _turns(i)} for i in range(n)]
    if fmt == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return [{"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in _turns(i)]}
                for i in range(n)]
    if fmt == "alpaca":
        return [{"instruction": f"Say when order {1000 + i} ships.", "input": f"Warehouse {i % 4}" if i % 2 else "",
                 "output": f"Order {1000 + i} ships in {i % 7 + 1} days."} for i in range(n)]
    if fmt == "prompt_completion":
        return [{"prompt": f"Where is order {1000 + i}?", "completion": f" It ships in {i % 7 + 1} days."}
                for i in range(n)]
    if fmt == "prompt_completion_chat":  # TRL's conversational prompt-completion
        return [{"prompt": _turns(i)[:-1], "completion": _turns(i)[-1:]} for i in range(n)]
    raise ValueError(fmt)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(MODEL))


def objective(source, **options):
    return get_objective("causal_lm")(MODEL, DataConfig(source=str(source)), TrainBudget(max_seq_length=256),
                                      options=ObjectiveOptions(**options))


@pytest.mark.parametrize(("fmt", "detected"), [("messages", "messages"), ("sharegpt", "sharegpt"),
                                               ("alpaca", "alpaca"), ("prompt_completion", "prompt_completion"),
                                               ("prompt_completion_chat", "prompt_completion")])
def test_the_format_is_detected_from_the_columns(tmp_path, fmt, detected):
    path = write_jsonl(tmp_path / "data.jsonl", rows_of(fmt))
    assert detect_format(list(rows_of(fmt, 1)[0])) == detected
    assert objective(path, chat_template=CHATML).task.data_format == detected


def test_naming_the_prompt_template_keeps_the_prompt_response_format(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", rows_of("prompt_completion"))
    task = get_objective("causal_lm")(MODEL, DataConfig(source=str(path), response_column="completion"),
                                      TrainBudget()).task
    assert task.data_format == "prompt_response" and task.required_columns() == ["prompt", "completion"]


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "prompt_completion_chat"])
def test_the_loss_covers_every_assistant_turn_and_nothing_else(tmp_path, tokenizer, fmt):
    path = write_jsonl(tmp_path / "data.jsonl", rows_of(fmt))
    chat = objective(path, chat_template=CHATML).task.prompt_format(tokenizer)
    for i, row in enumerate(rows_of(fmt)):
        ids, labels = chat.encode(row)
        turns = _turns(i)
        assert tokenizer.decode(ids) == tokenizer.apply_chat_template(turns, tokenize=False, chat_template=CHATML)
        learned = tokenizer.decode([label for label in labels if label != IGNORE_INDEX])
        assert learned == "".join(t["content"] + "<|im_end|>\n" for t in turns if t["role"] == "assistant")
        # Generation metrics ask the last user turn, after the whole history, and expect the last answer.
        prompt = chat.format_prompt(row)
        assert prompt == tokenizer.apply_chat_template(turns[:-1], tokenize=False, chat_template=CHATML,
                                                       add_generation_prompt=True)
        assert chat.reference(row) == turns[-1]["content"]


def test_plain_instruction_rows_need_no_chat_template(tmp_path, tokenizer):
    alpaca = objective(write_jsonl(tmp_path / "alpaca.jsonl", rows_of("alpaca"))).task.prompt_format(tokenizer)
    with_input, without = rows_of("alpaca")[1], rows_of("alpaca")[0]
    assert alpaca.format_prompt(with_input) == ("### Instruction:\nSay when order 1001 ships.\n\n### Input:\n"
                                                "Warehouse 1\n\n### Response:\n")
    assert "### Input" not in alpaca.format_prompt(without)
    ids, labels = alpaca.encode(with_input)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode([x for x in labels if x != IGNORE_INDEX], skip_special_tokens=True) == with_input["output"]

    pairs = objective(write_jsonl(tmp_path / "pc.jsonl", rows_of("prompt_completion"))).task.prompt_format(tokenizer)
    row = rows_of("prompt_completion")[3]
    ids, labels = pairs.encode(row)  # TRL's prompt-completion: prompt + completion, the loss on the completion
    assert tokenizer.decode(ids, skip_special_tokens=True) == row["prompt"] + row["completion"]
    assert [x for x in labels if x != IGNORE_INDEX] == ids[len(ids) - sum(x != IGNORE_INDEX for x in labels):]


def test_the_hand_written_masks_equal_trls_and_give_the_same_loss(tmp_path, tokenizer):
    """Where both apply -- a template with generation markers -- the prefix masking (kept for templates without
    markers, which TRL cannot mask) makes exactly the ids and labels TRL's SFTTrainer makes."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = rows_of("messages", 12)
    path = resolve_model_path(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHATML_WITH_MARKERS
    model = AutoModelForCausalLM.from_pretrained(path)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list(rows),
                         args=SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=None,
                                        report_to=[], use_cpu=True))
    assert training_template(tok, None) == (CHATML_WITH_MARKERS, "markers")
    ours_plain = objective(write_jsonl(tmp_path / "chat.jsonl", rows), chat_template=CHATML).task.prompt_format(tok)
    losses = []
    for row, trl_row in zip(rows, trainer.train_dataset):
        messages = to_messages(row, "messages")
        by_prefix = encode_chat(tok, messages, CHATML_WITH_MARKERS, "prefix")
        assert encode_chat(tok, messages, CHATML_WITH_MARKERS, "markers") == by_prefix
        assert ours_plain.encode(row) == by_prefix  # the plain template (no markers): prefix masking
        assert (trl_row["input_ids"], trl_row["labels"]) == by_prefix
        with torch.no_grad():
            ids = torch.tensor([by_prefix[0]])
            losses.append((model(ids, labels=torch.tensor([by_prefix[1]])).loss.item(),
                           model(ids, labels=torch.tensor([trl_row["labels"]])).loss.item()))
    assert all(ours == theirs for ours, theirs in losses)


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca", "prompt_completion"])
def test_a_sweep_runs_on_every_format(write_sweep, tmp_path, fmt):
    data = write_jsonl(tmp_path / f"{fmt}.jsonl", rows_of(fmt))
    options = {"chat_template": CHATML} if fmt in ("messages", "sharegpt") else {}
    path = write_sweep(dataset={"source": str(data), "max_train_examples": None, "max_eval_examples": 8},
                       objective={"name": "causal_lm", "args": options}, budget={
                           "max_steps": 4, "eval_every": 2, "batch_size": 4, "eval_batch_size": 8,
                           "max_seq_length": 128})
    assert main(["launch", str(path)]) == 0
    sweep = load_sweep(path)
    trials = load_existing_study(sweep.study_name, sweep.storage_url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(0 < t.value < 20 for t in trials)


# ---------------------------------------------------------------------------------- bad input


def _finding(report, check="conversations"):
    return [f for f in report.findings if f.check == check]


def test_a_chat_row_with_an_unknown_role_is_an_error_with_its_row_numbers(tmp_path):
    rows = rows_of("messages", 20)
    rows[4]["messages"][-2]["role"] = "customer"
    rows[9]["messages"][0]["role"] = "customer"
    report = validate_data(objective(write_jsonl(tmp_path / "chat.jsonl", rows), chat_template=CHATML))
    [finding] = _finding(report)
    assert finding.level == "error" and finding.examples == [5, 10] and "unknown role 'customer'" in finding.message
    assert not report.ok and not [f for f in report.findings if f.check == "lengths"]  # blocking: not tokenized


def test_a_conversation_without_an_assistant_turn_or_with_an_empty_one_is_an_error(tmp_path):
    rows = rows_of("messages", 20)
    rows[2]["messages"] = [t for t in rows[2]["messages"] if t["role"] != "assistant"]
    rows[6]["messages"][-1]["content"] = "  "
    found = {f.message.split(": ", 1)[1].split(" (")[0]: f.examples
             for f in _finding(validate_data(objective(write_jsonl(tmp_path / "c.jsonl", rows), chat_template=CHATML)))}
    assert found == {"no assistant turn: nothing to learn from": [3], "a turn is an empty assistant turn": [7]}


def test_chat_data_with_a_tokenizer_that_has_no_chat_template_is_refused(write_sweep, tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", rows_of("messages"))
    report = validate_data(objective(data))
    [finding] = _finding(report)
    assert "the tokenizer has none" in finding.message and "objective.args.chat_template" in finding.fix
    path = write_sweep(dataset={"source": str(data), "max_train_examples": None})
    assert main(["launch", str(path)]) == EXIT_BAD_INPUT
    assert "[conversations]" in capsys.readouterr().err


def test_a_question_asked_again_with_another_answer_leaks_between_splits(tmp_path):
    rows = rows_of("messages", 40)
    held_out = [{"messages": [*r["messages"][:-1], {"role": "assistant", "content": "Another answer."}]}
                for r in rows[:3]] + rows_of("messages", 60)[40:53]
    folder = tmp_path / "chat"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "validation.jsonl", held_out)
    report = validate_data(get_objective("causal_lm")(
        MODEL, DataConfig(source=str(folder), test_fraction=0.0), TrainBudget(max_seq_length=256),
        options=ObjectiveOptions(chat_template=CHATML)))
    [leak] = _finding(report, "leakage")
    assert leak.level == "error" and leak.count == 3 and "3 of 16 validation examples" in leak.message
