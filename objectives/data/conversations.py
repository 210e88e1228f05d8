"""Conversational and instruction data for causal_lm: the formats users bring, as one list of chat turns.

Formats (`dataset.format`, detected from the columns when `auto`, in this order):

    messages           OpenAI / TRL: a `messages` column of {role, content} turns
    sharegpt           a `conversations` column of {from, value} turns (from: human, gpt, system)
    alpaca             `instruction`, optional `input`, `output`
    prompt_completion  TRL's `prompt` and `completion`: two strings, or two lists of turns
    prompt_response    ftsweep's own: `objective.args.prompt_template` filled from the columns, then the response

Every row becomes turns (`to_messages`). With a chat template (the tokenizer's, or
`objective.args.chat_template`) the turns are rendered by it and the loss covers every assistant turn
and nothing else (`encode_chat`); alpaca and string prompt/completion rows without one are plain text
(TRL's concatenation for prompt/completion, the Alpaca prompt for alpaca), the loss on the answer.

Assistant masks come from TRL's path where it applies: the chat template's own `{% generation %}`
markers, or TRL's training version of a template it knows (`trl.chat_template_utils`); any other
template is masked by rendering each assistant turn's prefix (which needs a prefix-preserving template,
as TRL's tool-call path does) -- the tests check both give the same labels where both apply.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from spaces import ConfigError

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "prompt_response")
CHAT_FORMATS = ("messages", "sharegpt")  # always rendered by a chat template
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's speaker names (`from`), as the roles chat templates know.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
# ChatML (Qwen's and many instruction-tuned models' format), for tokenizers without a template of their own:
# `objective.args.chat_template: CHATML`; and the same with TRL's generation markers around each answer.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_WITH_MARKERS = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>\n{% endgeneration %}{% else %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The Stanford Alpaca prompt (without its preamble), with and without an input.
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def detect_format(columns: Sequence[str]) -> str:
    """The data format a dataset's columns say (see the module docstring).

    Example:
        >>> detect_format(["messages"]), detect_format(["instruction", "input", "output"])
        ('messages', 'alpaca')
        >>> detect_format(["prompt", "completion"]), detect_format(["prompt", "response"])
        ('prompt_completion', 'prompt_response')
    """
    present = set(columns)
    if "messages" in present:
        return "messages"
    if "conversations" in present:
        return "sharegpt"
    if {"instruction", "output"} <= present:
        return "alpaca"
    if {"prompt", "completion"} <= present:
        return "prompt_completion"
    return "prompt_response"


def format_columns(fmt: str, present: Sequence[str] = ()) -> list[str]:
    """The columns a format reads (alpaca's `input` only where the data has it)."""
    return {"messages": ["messages"], "sharegpt": ["conversations"], "prompt_completion": ["prompt", "completion"],
            "alpaca": ["instruction", *(["input"] if "input" in present else []), "output"]}[fmt]


def to_messages(row: Mapping[str, Any], fmt: str) -> list[dict[str, Any]]:
    """One row of `fmt` as chat turns [{role, content}], roles as chat templates name them.

    Example:
        >>> to_messages({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        ...             "sharegpt")
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
        >>> to_messages({"instruction": "Add", "input": "2+2", "output": "4"}, "alpaca")
        [{'role': 'user', 'content': 'Add\\n\\n2+2'}, {'role': 'assistant', 'content': '4'}]
    """
    if fmt == "messages":
        turns = [dict(t) if isinstance(t, Mapping) else t for t in row["messages"] or []]
    elif fmt == "sharegpt":
        from trl.data_utils import maybe_convert_to_chatml

        converted = maybe_convert_to_chatml({"conversations": [dict(t) if isinstance(t, Mapping) else t
                                                               for t in row["conversations"] or []]})
        turns = converted["messages"]
    elif fmt == "alpaca":
        extra = row.get("input") or ""
        user = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    elif fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        turns = [dict(t) for t in (prompt or [])] + [dict(t) for t in (completion or [])]
    else:
        raise ValueError(f"not a conversational format: {fmt}")
    for turn in turns:
        if isinstance(turn, dict) and isinstance(turn.get("role"), str):
            turn["role"] = ROLE_ALIASES.get(turn["role"], turn["role"])
    return turns


def conversation_problems(row: Mapping[str, Any], fmt: str) -> list[str]:
    """What makes one row unusable as chat data: not turns, an unknown role, an empty or missing
    assistant turn, text that is not text. [] when it is fine.

    Example:
        >>> conversation_problems({"messages": [{"role": "user", "content": "Hi"}]}, "messages")
        ['no assistant turn: nothing to learn from']
        >>> conversation_problems({"messages": [{"role": "robot", "content": "Hi"}]}, "messages")
        ["turn 1 has unknown role 'robot' (known: system, user, assistant, tool)", 'no assistant turn: nothing to learn from']
    """
    if fmt in ("alpaca", "prompt_completion") and all(isinstance(row.get(c), str) for c in format_columns(fmt, row)):
        answer = row["output"] if fmt == "alpaca" else row["completion"]
        return [] if answer.strip() else ["the answer is empty: nothing to learn from"]
    try:
        turns = to_messages(row, fmt)
    except (TypeError, AttributeError, KeyError) as exc:
        return [f"not a list of turns ({type(exc).__name__}: {exc})"]
    problems = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            keys = "from and value" if fmt == "sharegpt" else "role and content"
            problems.append(f"turn {number} is not a turn with {keys}: {str(turn)[:60]}")
            continue
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            problems.append(f"turn {number} has unknown role {role!r} (known: {', '.join(ROLES)})")
        if not isinstance(content, str):
            problems.append(f"turn {number} ({role}) holds {type(content).__name__}, not text")
        elif role == "assistant" and not content.strip():
            problems.append(f"turn {number} is an empty assistant turn")
    if not any(isinstance(t, Mapping) and t.get("role") == "assistant" for t in turns):
        problems.append("no assistant turn: nothing to learn from")
    return problems


def last_exchange(messages: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], str]:
    """(the turns before the last assistant turn, that turn's text): what generation metrics ask and expect.

    Example:
        >>> last_exchange([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
        ([{'role': 'user', 'content': 'Hi'}], 'Hello')
    """
    last = max(i for i, t in enumerate(messages) if t["role"] == "assistant")
    return list(messages[:last]), messages[last]["content"]


def prompt_text(row: Mapping[str, Any], fmt: str) -> str | None:
    """What a row asks, as text: the turns before its last answer (for leakage between splits: the same
    question with another answer still leaks); None for a row that is not a usable conversation.

    Example:
        >>> prompt_text({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        ...             "messages")
        'Hi'
    """
    if conversation_problems(row, fmt):
        return None
    history, _ = last_exchange(to_messages(row, fmt))
    return "\n".join(str(turn["content"]) for turn in history)


def training_template(tokenizer, given: str | None) -> tuple[str | None, str]:
    """(template, how assistant turns are masked) for chat data: 'markers' when the template has TRL's
    `{% generation %}` markers (the tokenizer's or TRL's training version of it), else 'prefix'.

    The template is `given` when the sweep gives one, else the tokenizer's (None: the tokenizer has none).
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = given if given is not None else getattr(tokenizer, "chat_template", None)
    if not template:
        return None, "prefix"
    if has_generation_markers(template):
        return template, "markers"
    if given is None:
        try:
            patched = get_training_chat_template(tokenizer)
        except (ValueError, NotImplementedError, TypeError):
            patched = None  # a template TRL has no training version of
        if patched:
            return patched, "markers"
    return template, "prefix"


def encode_chat(tokenizer, messages: Sequence[Mapping[str, Any]], template: str, masking: str, *,
                source: str | None = None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation rendered by `template`: labels are the ids of every
    assistant turn (its end-of-turn included, as the template renders it) and -100 elsewhere.

    masking 'markers': transformers' `return_assistant_tokens_mask` from the template's generation markers
    (TRL's SFT path). 'prefix': each assistant turn is what rendering the conversation up to it adds to
    rendering it up to its generation prompt; prompt and answer spans are tokenized apart, so the boundary
    is exact whatever the tokenizer merges across it.
    """
    if masking == "markers":
        out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, chat_template=template,
                                            return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        return ids, [i if m else IGNORE_INDEX for i, m in zip(ids, out["assistant_masks"])]

    def render(turns, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(list(turns), tokenize=False, chat_template=template,
                                             add_generation_prompt=generation_prompt)

    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text rendered so far
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        upto = render(messages[: i + 1], False)
        if not before.startswith(done) or not upto.startswith(before):
            raise ConfigError(
                "the chat template renders earlier turns differently once later ones follow, so the assistant's "
                "tokens cannot be told apart", source=source, key="objective.args.chat_template",
                hint="Fix: use a template whose rendering of a conversation starts with its rendering of every "
                "shorter one (most do), or one with {% generation %} markers.")
        prompt_ids = tokenizer(before[len(done):], add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(upto[len(before):], add_special_tokens=False)["input_ids"]
        ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        done = upto
    return ids, labels


class ConversationFormat:
    """Rows of a conversational or instruction format -> (input ids, labels), as every causal_lm trial sees them.

    The counterpart of the task's PromptFormat for `dataset.format` other than prompt_response (see the
    module docstring): the same methods, so tokenization, token lengths, generation metrics and `select`
    treat both alike.

    Example:
        >>> from objectives import DataConfig, ObjectiveOptions
        >>> fmt = ConversationFormat(None, ObjectiveOptions(), DataConfig(source="chat.jsonl"), "messages")
        >>> fmt.columns(), fmt.uses_chat_template
        (['messages'], True)
    """

    def __init__(self, tokenizer, options, data_config, fmt: str, present: Sequence[str] = (),
                 source: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.data_config = data_config
        self.format = fmt
        self.present = present
        self.source = source

    @property
    def uses_chat_template(self) -> bool:
        """Chat data always; alpaca and prompt/completion rows when the sweep asks for a chat template."""
        return self.format in CHAT_FORMATS or bool(self.options.chat_template)

    def columns(self) -> list[str]:
        return format_columns(self.format, self.present)

    def answer_column(self) -> str:
        """The column that holds the answers (for a conversation: the conversation)."""
        return {"alpaca": "output", "prompt_completion": "completion"}.get(self.format, self.columns()[0])

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The row's turns, checked, after `objective.args.system_prompt` where it has no system turn."""
        problems = conversation_problems(row, self.format)
        if problems:
            raise ConfigError(f"a {self.format} row cannot be used: {'; '.join(problems)}", source=self.source,
                              key="dataset.source", value=self.data_config.source,
                              hint="Fix: see `ftsweep validate-data SWEEP` for the rows.")
        turns = to_messages(row, self.format)
        if self.options.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.options.system_prompt})
        return turns

    @functools.cached_property
    def _template(self) -> tuple[str, str]:
        """(template, masking) for this tokenizer: worked out once, not for every row encoded."""
        given = self.options.chat_template if isinstance(self.options.chat_template, str) else None
        template, masking = training_template(self.tokenizer, given)
        if template is None:
            raise ConfigError(
                f"the tokenizer has no chat template to render {self.format} data", source=self.source,
                key="objective.args.chat_template", value=self.options.chat_template,
                hint="Fix: give the template itself (a Jinja string) in objective.args.chat_template, or use a "
                "tokenizer that has one.")
        return template, masking

    def encode(self, row: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one row, before truncation; labels -100 outside the answers."""
        tok = self.tokenizer
        if self.uses_chat_template:
            template, masking = self._template
            return encode_chat(tok, self.messages(row), template, masking, source=self.source)
        prompt_ids = self.prefix_ids() + tok(self.format_prompt(row), add_special_tokens=False)["input_ids"]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        answer = row["output"] if self.format == "alpaca" else row["completion"]
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + eos
        return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids

    def format_prompt(self, row: Mapping[str, Any]) -> str:
        """The text the model answers from: the conversation before its last assistant turn, with the
        template's generation prompt; for plain alpaca / prompt-completion rows, the prompt text."""
        if self.uses_chat_template:
            history, _ = last_exchange(self.messages(row))
            template, _ = self._template
            return self.tokenizer.apply_chat_template(history, tokenize=False, chat_template=template,
                                                      add_generation_prompt=True)
        if self.format == "alpaca":
            extra = row.get("input") or ""
            template = ALPACA_PROMPT if extra.strip() else ALPACA_PROMPT_NO_INPUT
            return template.format(instruction=row["instruction"], input=extra)
        return row["prompt"]  # TRL's prompt-completion: the prompt, then the completion, nothing between

    def answer_ids(self, row: Mapping[str, Any], answer: str) -> list[int]:
        """The ids training puts after `row`'s prompt were `answer` its last answer: with a chat template, what
        the template renders after its generation prompt (the answer, then the end of the turn); else the
        answer and eos."""
        tok = self.tokenizer
        if not self.uses_chat_template:
            return tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        history, _ = last_exchange(self.messages(row))
        template, _ = self._template
        prompt = self.format_prompt(row)
        full = tok.apply_chat_template([*history, {"role": "assistant", "content": answer}], tokenize=False,
                                       chat_template=template)
        if not full.startswith(prompt):
            raise ConfigError(
                "the chat template renders the conversation differently once the answer follows, so an answer "
                "cannot be scored after its prompt", source=self.source, key="objective.args.chat_template",
                hint="Fix: use a template whose generation prompt is a prefix of the whole conversation (most are).")
        return tok(full[len(prompt):], add_special_tokens=False)["input_ids"]

    def reference(self, row: Mapping[str, Any]) -> str:
        """The last answer: what generation metrics compare the model's answer with."""
        if self.uses_chat_template or self.format in CHAT_FORMATS:
            return last_exchange(to_messages(row, self.format))[1].strip()
        return (row["output"] if self.format == "alpaca" else row["completion"]).strip()

    def prefix_ids(self) -> list[int]:
        """bos before plain text; none with a chat template (it writes its own)."""
        tok = self.tokenizer
        return [tok.bos_token_id] if tok.bos_token_id is not None and not self.uses_chat_template else []
