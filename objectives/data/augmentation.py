"""Data augmentation as space parameters: EDA (synonym replacement, random insertion, swap and
deletion; Wei & Zou 2019) and back-translation through two seq2seq translation models.

| param                     | what it does                                                        | values |
|---------------------------|---------------------------------------------------------------------|--------|
| aug_synonym_prob          | share of a text's words replaced by a synonym (stopwords never)     | [0, 1] |
| aug_insert_prob           | synonyms of the text's own words inserted, as a share of its words  | [0, 1] |
| aug_delete_prob           | chance that each word is deleted                                    | [0, 1] |
| aug_swap_prob             | pairs of words swapped, as a share of the text's words              | [0, 1] |
| aug_copies                | EDA copies added per example (default 1 when an EDA prob > 0; 0: no EDA) | int >= 0 |
| aug_backtranslation_ratio | share of training examples whose back-translation is added          | [0, 1] |

Augmented rows are *added*, as in EDA: every original row stays, each gets `aug_copies` EDA copies
(all EDA ops with a probability > 0 applied in turn: synonyms, insertion, swap, deletion), and a
`aug_backtranslation_ratio` share of the originals gets a back-translated row (English -> other
language -> English), so a trial trains on n * (1 + copies) + round(ratio * n) rows. Only the
input columns change — by default the task's input columns (`Task.input_columns`: the prompt of
causal_lm, the text of sequence_classification); responses and labels are the targets and are
copied as they are. Only the *training* split is
ever augmented: the API takes nothing else, so validation and test rows (and hence every metric)
are the same with or without augmentation.

Synonyms come from a table the sweep names (`augmentation.synonyms`: YAML/JSON mapping word ->
synonyms or a list of synonym groups, or CSV rows `word,synonym,...`; `bundled:support` is the one
for the bundled support data, objectives/synonyms/support.yaml) and, for words it lacks, from
NLTK's WordNet when its data is installed here (never downloaded). Back-translation uses any two
`transformers` seq2seq models (`AutoModelForSeq2SeqLM`), loaded once, on first use; translations
are cached per text (in memory, and under `backtranslation.cache_dir` when set), so trials with
another ratio only translate the rows they add. scripts/build_translation_models.py builds a tiny
pair for the bundled support data.

Everything is deterministic: the same seed, params and data give the same rows; another seed
gives others. The augmented dataset of the last few param sets is kept in memory.

Example:
    >>> import datasets
    >>> train = datasets.Dataset.from_dict({"prompt": ["where is my order A1234 now?"] * 2, "response": ["Soon."] * 2})
    >>> augmenter = Augmenter(AugmentationSettings(), seed=0)
    >>> out = augmenter.augment(train, {"aug_delete_prob": 0.3}, columns=["prompt"])
    >>> len(out), out["response"][2]
    (4, 'Soon.')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spaces import ConfigError
from spaces._errors import did_you_mean

from ..settings import AugmentationSettings, DataConfig, ObjectiveOptions
from .sources import BUNDLED_PREFIX, looks_local

SYNONYM_PARAM = "aug_synonym_prob"
INSERT_PARAM = "aug_insert_prob"
DELETE_PARAM = "aug_delete_prob"
SWAP_PARAM = "aug_swap_prob"
COPIES_PARAM = "aug_copies"
BACKTRANSLATION_PARAM = "aug_backtranslation_ratio"

AUGMENTATION_PARAMS: dict[str, str] = {
    SYNONYM_PARAM: "EDA synonym replacement: share of a text's words replaced by a synonym, in [0, 1]",
    INSERT_PARAM: "EDA random insertion: synonyms of its words inserted, as a share of the text's words, in [0, 1]",
    DELETE_PARAM: "EDA random deletion: chance that each word is deleted, in [0, 1]",
    SWAP_PARAM: "EDA random swap: word pairs swapped, as a share of the text's words, in [0, 1]",
    COPIES_PARAM: "EDA copies added per training example (int >= 0; default 1 when an EDA prob is > 0; 0: no EDA)",
    BACKTRANSLATION_PARAM: "share of training examples whose back-translation is added as a new row, in [0, 1]",
}
EDA_PARAMS = (SYNONYM_PARAM, INSERT_PARAM, SWAP_PARAM, DELETE_PARAM)  # the order ops are applied in
PROBABILITY_PARAMS = (*EDA_PARAMS, BACKTRANSLATION_PARAM)
NEEDS_SYNONYMS = (SYNONYM_PARAM, INSERT_PARAM)
SETTINGS_KEY = "augmentation"
SYNONYM_TABLES = Path(__file__).parents[1] / "synonyms"  # `synonyms: bundled:NAME` is SYNONYM_TABLES/NAME.yaml

# EDA's stopword list (NLTK's English stopwords): never replaced by, nor the source of, synonyms.
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom this that these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until while of at by for with
about against between into through during before after above below to from up down in out on off over under
again further then once here there when where why how all any both each few more most other some such no nor not
only own same so than too very s t can will just don should now
""".split())

_WORDNET_FIX = ("run `python -m nltk.downloader wordnet` on a machine with internet, "
                "or set NLTK_DATA to a folder holding it")
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


# ---------------------------------------------------------------- checks at launch (no data, no models)


def wordnet_problem() -> str | None:
    """None when WordNet synonyms can be looked up here; otherwise why not."""
    try:
        import nltk
    except ImportError:
        return "NLTK is not installed"
    try:
        nltk.data.find("corpora/wordnet")  # also finds corpora/wordnet.zip; never downloads
    except LookupError:
        return "NLTK's WordNet data is not installed here"
    return None


def _bounds(param) -> list[tuple[str | None, Any]]:
    """(sub-key, value) pairs a param's values are bounded by; [] for a derived param (unknown here)."""
    if hasattr(param, "low") and hasattr(param, "high"):
        return [("low", param.low), ("high", param.high)]
    if hasattr(param, "choices"):
        return [(f"choices[{i}]", choice) for i, choice in enumerate(param.choices)]
    if hasattr(param, "value"):
        return [("value", param.value)]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _can_be_positive(param) -> bool:
    """Whether a param may take a value > 0 (a derived one: assume it may)."""
    bounds = _bounds(param)
    return not bounds or any(_number(v) and v > 0 for _, v in bounds)


def check_augmentation(space, settings: AugmentationSettings | None, *, task, source: str | None = None,
                       data: DataConfig | None = None, options: ObjectiveOptions | None = None) -> list[str]:
    """Refuse augmentation params and settings that cannot work; returns the columns that will be augmented.

    Checks, without loading data or models: every `aug_*` param is known and its range (float/int
    low-high, categorical choices, fixed value) stays in [0, 1] (`aug_copies`: whole numbers >= 0);
    synonym replacement or insertion that may be > 0 has a synonym table or WordNet data; a searched
    back-translation ratio has `augmentation.backtranslation`; its models exist (a local directory
    with a config.json, or a hub id this machine can load: cached, or the hub reachable); the columns
    are text columns of `task` (its `input_columns()` by default, any of its `text_columns()`).

    `task` is a `Task`, or a task class or objective class (`get_objective(name)`, whose `task_class` is
    taken), made here with `data` and `options` (without `data`: the default columns): only its columns
    are read.

    Example:
        >>> from objectives import DataConfig, get_objective
        >>> from objectives.tasks.causal_lm import CausalLMTask
        >>> from spaces import SearchSpace
        >>> task = CausalLMTask(DataConfig(source="bundled:support-qa"))
        >>> check_augmentation(SearchSpace.from_dict({"params": {"aug_swap_prob": {"type": "fixed", "value": 0.1}}}),
        ...                    None, task=task)
        ['prompt']
        >>> check_augmentation(SearchSpace.from_dict({"params": {"aug_swap_prob": {"type": "fixed", "value": 0.1}}}),
        ...                    None, task=get_objective("sequence_classification"))
        ['text']
        >>> space = SearchSpace.from_dict({"params": {"aug_delete_prob": {"type": "float", "low": 0.0, "high": 1.5}}})
        >>> check_augmentation(space, None, task=task)
        Traceback (most recent call last):
        ...
        spaces._errors.ConfigError: space.params.aug_delete_prob.high: a probability cannot be above 1; got 1.5; allowed: a number in [0, 1]. Fix: set high to 1 or less.
    """
    task = _task_of(task, data, options, source)
    settings = settings or AugmentationSettings()
    params = space.params()
    for name, param in params.items():
        key = f"space.params.{name}"
        if name.startswith("aug_") and name not in AUGMENTATION_PARAMS:
            raise ConfigError("unknown augmentation param", source=source, key=key, value=name,
                              allowed=list(AUGMENTATION_PARAMS), hint=did_you_mean(name, list(AUGMENTATION_PARAMS)))
        if name in PROBABILITY_PARAMS:
            for sub, value in _bounds(param):
                if not _number(value):
                    raise ConfigError("a probability must be a number", source=source, key=f"{key}.{sub}",
                                      value=value, allowed="a number in [0, 1]")
                if value < 0 or value > 1:
                    side = "below 0" if value < 0 else "above 1"
                    fix = (f"set {sub} to {'0 or more' if value < 0 else '1 or less'}" if sub in ("low", "high")
                           else "use values between 0 and 1")
                    raise ConfigError(f"a probability cannot be {side}", source=source, key=f"{key}.{sub}",
                                      value=value, allowed="a number in [0, 1]", hint=f"Fix: {fix}.")
        elif name == COPIES_PARAM:
            if param.type == "float":
                raise ConfigError("aug_copies counts copies: it must be an int", source=source, key=f"{key}.type",
                                  value="float", hint="Fix: {type: int, low: 0, high: 2}.")
            for sub, value in _bounds(param):
                if not (_number(value) and float(value).is_integer() and value >= 0):
                    raise ConfigError("aug_copies must be a whole number >= 0", source=source, key=f"{key}.{sub}",
                                      value=value, allowed="0, 1, 2, ...")

    for name in NEEDS_SYNONYMS:
        if name in params and _can_be_positive(params[name]):
            _check_synonym_source(settings, name, source)
    if settings.synonyms is not None:
        load_synonym_table(settings.synonyms, source=source)  # a bad table fails now, not in a trial

    ratio = params.get(BACKTRANSLATION_PARAM)
    if ratio is not None and _can_be_positive(ratio) and settings.backtranslation is None:
        raise ConfigError("back-translation is searched, but no translation models are configured", source=source,
                          key=f"space.params.{BACKTRANSLATION_PARAM}",
                          hint=f"Fix: add `{SETTINGS_KEY}: {{backtranslation: {{forward: MODEL, backward: MODEL}}}}` "
                          "to the sweep file (scripts/build_translation_models.py builds a tiny local pair).")
    if settings.backtranslation is not None:
        for direction in ("forward", "backward"):
            check_translation_model(getattr(settings.backtranslation, direction),
                                    key=f"{SETTINGS_KEY}.backtranslation.{direction}", source=source)

    allowed = task.text_columns()
    columns = settings.columns or [c for c in task.input_columns() if c in allowed]
    augmenting = any(name in AUGMENTATION_PARAMS and _can_be_positive(p) for name, p in params.items())
    if augmenting and not columns:
        raise ConfigError(f"the {task.name} data has no text column to augment (chat turns are not augmented)",
                          source=source, key="space.params", value=[n for n in params if n in AUGMENTATION_PARAMS],
                          hint="Fix: drop the aug_* params from the space for this data.")
    for i, column in enumerate(columns):
        if column not in allowed:
            raise ConfigError(f"not a text column of {task.name}", source=source, key=f"{SETTINGS_KEY}.columns[{i}]",
                              value=column, allowed=allowed,
                              hint="Fix: augment the input column (labels are never augmented).")
    return list(columns)


def _task_of(task, data: DataConfig | None, options: ObjectiveOptions | None, source: str | None):
    """`check_augmentation`'s task as an instance. Duck-typed: this module is below objectives.tasks and
    objectives.engine, so an objective class is known by its `task_class`, a task class by being a class."""
    task = getattr(task, "task_class", task)
    if isinstance(task, type):
        # Only the columns are read: without a dataset, those of the default settings.
        task = task(data if data is not None else DataConfig(source="(no dataset)"), options=options, source=source)
    return task


def _check_synonym_source(settings: AugmentationSettings, name: str, source: str | None) -> None:
    if settings.synonyms is not None:
        return
    why = wordnet_problem() if settings.use_wordnet else f"{SETTINGS_KEY}.use_wordnet is false"
    if why is None:
        return
    raise ConfigError(f"'{name}' needs synonyms, and there is no synonym table and no WordNet ({why})",
                      source=source, key=f"space.params.{name}",
                      hint=f"Fix: name a table in the sweep file (`{SETTINGS_KEY}: {{synonyms: synonyms.yaml}}`, "
                      f"word -> [synonyms]), or install WordNet: {_WORDNET_FIX}.")


def check_translation_model(name: str, *, key: str, source: str | None = None) -> None:
    """A local model directory must exist and hold a config.json; a hub id must be loadable here.

    Offline (HF_HUB_OFFLINE=1) a hub id is only accepted when it is in the local Hugging Face cache.
    """
    if looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ConfigError("translation model path does not exist", source=source, key=key, value=name,
                              hint="Fix: point it at a directory saved with save_pretrained (e.g. built by "
                              "scripts/build_translation_models.py), or use a hub id such as "
                              "'Helsinki-NLP/opus-mt-en-de'.")
        if not (path / "config.json").exists():
            raise ConfigError("translation model directory has no config.json (is it a save_pretrained directory?)",
                              source=source, key=key, value=name)
        return
    if _offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
        except ValueError:  # not a valid repo id (HFValidationError): not cached either
            cached = False
        if not cached:
            raise ConfigError("translation model is a hub id, and it cannot be downloaded here (HF_HUB_OFFLINE=1) "
                              "nor is it in the local Hugging Face cache", source=source, key=key, value=name,
                              hint="Fix: download it where there is internet (`huggingface-cli download "
                              f"{name}`) and copy the folder here, then give its local path.")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------- synonyms


def load_synonym_table(path: str | Path, *, source: str | None = None) -> dict[str, tuple[str, ...]]:
    """Read a synonym table: lowercase word -> synonyms.

    YAML/JSON: a mapping `word: [synonyms]` (one way: list both words to go both ways) or a list
    of groups `[[broken, damaged, cracked], ...]` (each word gets the others). CSV: rows
    `word,synonym,...`; rows for the same word add up; a first row starting with `word` is a header.
    `bundled:NAME` is a table shipped with ftsweep (objectives/synonyms/NAME.yaml).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "s.yaml"; _ = path.write_text("- [broken, damaged]\\n")
        >>> load_synonym_table(path)
        {'broken': ('damaged',), 'damaged': ('broken',)}
    """
    key = f"{SETTINGS_KEY}.synonyms"
    if str(path).startswith(BUNDLED_PREFIX):
        name = str(path)[len(BUNDLED_PREFIX):]
        file = SYNONYM_TABLES / f"{name}.yaml"
        if not file.is_file():
            raise ConfigError("no bundled synonym table of that name", source=source, key=key, value=str(path),
                              allowed=[BUNDLED_PREFIX + p.stem for p in sorted(SYNONYM_TABLES.glob("*.yaml"))])
    else:
        file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("synonym table does not exist", source=source, key=key, value=str(path),
                          hint="Fix: give a .yaml/.json/.csv file (relative to where you run ftsweep).")
    suffix = file.suffix.lower()
    try:
        text = file.read_text(encoding="utf-8")
        if suffix in (".yaml", ".yml"):
            import yaml

            raw: Any = yaml.safe_load(text)
        elif suffix == ".json":
            raw = json.loads(text)
        elif suffix == ".csv":
            import csv

            rows = [[cell.strip() for cell in row] for row in csv.reader(text.splitlines())
                    if any(cell.strip() for cell in row)]
            if rows and rows[0][0].lower() == "word":
                rows = rows[1:]
            raw = {}
            for row in rows:
                raw.setdefault(row[0], []).extend(c for c in row[1:] if c)
        else:
            raise ConfigError("unsupported synonym table type", source=source, key=key, value=str(path),
                              allowed=[".yaml", ".yml", ".json", ".csv"])
    except ConfigError:
        raise
    except Exception as exc:  # YAML/JSON/CSV parse errors of many types: one clear line
        raise ConfigError(f"could not read the synonym table ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                          source=source, key=key, value=str(path)) from exc

    table: dict[str, list[str]] = {}

    def add(word: Any, synonyms: Iterable[Any], where: str) -> None:
        items = [word, *synonyms]
        if not all(isinstance(item, str) and item.strip() for item in items):
            raise ConfigError("synonym table entries must be non-empty strings", source=source,
                              key=f"{key} ({where})", value=items)
        entry = table.setdefault(word.strip().lower(), [])
        entry += [s.strip() for s in synonyms if s.strip().lower() != word.strip().lower() and s.strip() not in entry]

    if isinstance(raw, Mapping):
        for word, synonyms in raw.items():
            add(word, [synonyms] if isinstance(synonyms, str) else synonyms if isinstance(synonyms, list) else [None],
                f"entry {word!r}")
    elif isinstance(raw, list) and all(isinstance(group, list) for group in raw):
        for i, group in enumerate(raw):
            for word in group:
                add(word, [w for w in group if w != word], f"group {i}")
    else:
        raise ConfigError("a synonym table must map words to lists of synonyms, or list synonym groups",
                          source=source, key=key, value=str(path),
                          allowed="{word: [synonym, ...]} or [[word, synonym, ...], ...]")
    if not any(table.values()):
        raise ConfigError("the synonym table has no synonyms", source=source, key=key, value=str(path))
    return {word: tuple(synonyms) for word, synonyms in table.items() if synonyms}


class Synonyms:
    """Synonyms of a word: the table's, else WordNet's (when enabled and installed), else none.

    Example:
        >>> Synonyms({"broken": ("damaged",)}, wordnet=False)("Broken")
        ('damaged',)
    """

    def __init__(self, table: Mapping[str, Sequence[str]] | None = None, *, wordnet: bool = False) -> None:
        self.table = {word.lower(): tuple(synonyms) for word, synonyms in (table or {}).items()}
        self.wordnet = wordnet
        self._cache: dict[str, tuple[str, ...]] = {}

    @property
    def available(self) -> bool:
        return bool(self.table) or self.wordnet

    def __call__(self, word: str) -> tuple[str, ...]:
        word = word.lower()
        if word in self._cache:
            return self._cache[word]
        found = self.table.get(word, ())
        if not found and self.wordnet and word.isalpha():
            from nltk.corpus import wordnet

            names = dict.fromkeys(lemma.name().replace("_", " ") for synset in wordnet.synsets(word)
                                  for lemma in synset.lemmas())
            found = tuple(sorted(n for n in names if n.lower() != word))  # sorted: no dependence on WordNet's order
        self._cache[word] = found
        return found


# ---------------------------------------------------------------- EDA on whitespace tokens


def _stochastic_round(x: float, rng: random.Random) -> int:
    """floor(x) or floor(x) + 1, with expectation exactly x: 0.3 * 5 words is 1 or 2 changes, 1.5 on average."""
    whole = math.floor(x)
    return whole + (rng.random() < x - whole)


def _cased(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() and not like.isupper() else word


def eda(text: str, probs: Mapping[str, float], synonyms: Synonyms, rng: random.Random) -> str:
    """One EDA copy of `text`: each op whose probability is > 0, in the order synonyms, insertion, swap, deletion.

    Words are whitespace tokens; punctuation around a word stays in place (a swap moves only the
    words), and deleting a word leaves its punctuation to a neighbour. An op that would leave no word
    is skipped; a text that no op changed is returned exactly as it was.

    Example:
        >>> synonyms = Synonyms({"arrived": ("came",), "broken": ("damaged", "cracked")})
        >>> eda("My parcel arrived broken.", {"aug_synonym_prob": 0.5}, synonyms, random.Random(0))
        'My parcel came cracked.'
    """
    tokens = [list(_TOKEN.match(t).groups()) for t in text.split()]  # [pre, core, post]

    def words() -> list[int]:
        return [i for i, (_, core, _) in enumerate(tokens) if core]

    n = len(words())
    if n == 0:
        return text
    changed = False
    p = probs.get(SYNONYM_PARAM, 0.0)
    if p > 0:
        eligible = [i for i in words() if tokens[i][1].lower() not in STOPWORDS and synonyms(tokens[i][1])]
        for i in rng.sample(eligible, min(len(eligible), _stochastic_round(p * n, rng))):
            tokens[i][1] = _cased(rng.choice(synonyms(tokens[i][1])), tokens[i][1])
            changed = True
    p = probs.get(INSERT_PARAM, 0.0)
    if p > 0:
        sources = [tokens[i][1] for i in words() if tokens[i][1].lower() not in STOPWORDS and synonyms(tokens[i][1])]
        for _ in range(_stochastic_round(p * n, rng) if sources else 0):
            new = ["", rng.choice(synonyms(rng.choice(sources))), ""]
            at = rng.randint(1, len(tokens))  # not before the first word: it starts the sentence
            if at == len(tokens):  # the sentence's final punctuation moves to the new last word
                new[2], tokens[-1][2] = tokens[-1][2], ""
            tokens.insert(at, new)
            changed = True
    p = probs.get(SWAP_PARAM, 0.0)
    if p > 0 and len(words()) > 1:
        for _ in range(_stochastic_round(p * n, rng)):
            i, j = rng.sample(words(), 2)
            tokens[i][1], tokens[j][1] = tokens[j][1], tokens[i][1]
            changed = True
    p = probs.get(DELETE_PARAM, 0.0)
    if p > 0:
        doomed = {i for i in words() if rng.random() < p}
        if doomed and len(doomed) < len(words()):
            # A deleted word's punctuation mostly stays: what came after it (the final "?") goes to
            # the previous kept token, what came before it ("(") to the next one. Only a leading
            # word's "," or a last word's opening quote, which would have nothing to attach to, go.
            kept: list[list[str]] = []
            carry = ""
            for i, (pre, core, post) in enumerate(tokens):
                if i not in doomed:
                    kept.append([carry + pre, core, post])
                    carry = ""
                    continue
                carry += pre
                if kept:
                    kept[-1][2] += post
            tokens = kept
            changed = True
    if not changed:
        return text
    out = " ".join("".join(token) for token in tokens if "".join(token))
    return out if out.strip() else text


# ---------------------------------------------------------------- the augmenter


def active_params(params: Mapping[str, Any]) -> dict[str, float | int]:
    """The augmentation params of a trial that do something (with `aug_copies` filled in), checked.

    `{}` means the trial trains on the original data.

    Example:
        >>> active_params({"learning_rate": 1e-3, "aug_swap_prob": 0.1, "aug_delete_prob": 0.0})
        {'aug_swap_prob': 0.1, 'aug_copies': 1}
    """
    found: dict[str, float | int] = {}
    for name in PROBABILITY_PARAMS:
        if name in params:
            value = params[name]
            if not _number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if value > 0:
                found[name] = float(value)
    copies = params.get(COPIES_PARAM, 1)
    if not (_number(copies) and float(copies).is_integer() and copies >= 0):
        raise ValueError(f"{COPIES_PARAM} must be a whole number >= 0, got {copies!r}")
    if any(name in found for name in EDA_PARAMS):
        if copies == 0:
            for name in EDA_PARAMS:
                found.pop(name, None)
        else:
            found[COPIES_PARAM] = int(copies)
    return found


class Augmenter:
    """Augments a training split for a trial's `aug_*` params; one per worker, reused by every trial.

    Args:
        settings: the sweep's fixed `augmentation:` settings (synonym table, translation models, columns).
        seed: the sweep seed; with the params and the data it decides every augmented row.
        cache_size: augmented datasets kept in memory (least recently used dropped first).
        source: the sweep file, named in errors.

    Example:
        >>> from objectives import DataConfig, load_splits
        >>> splits = load_splits(DataConfig(source="bundled:support-qa", max_train_examples=20), seed=0,
        ...                      columns=["prompt", "response"])
        >>> augmenter = Augmenter(AugmentationSettings(synonyms="bundled:support"), seed=0)
        >>> len(augmenter.augment(splits.train, {"aug_synonym_prob": 0.2}, columns=["prompt"]))
        40
    """

    def __init__(self, settings: AugmentationSettings | None = None, seed: int = 0, *, cache_size: int = 4,
                 source: str | None = None) -> None:
        self.settings = settings or AugmentationSettings()
        self.seed = seed
        self.cache_size = cache_size
        self.source = source
        self._synonyms: Synonyms | None = None
        self._datasets: OrderedDict[tuple, Any] = OrderedDict()
        self._models: dict[str, tuple[Any, Any]] = {}  # "forward"/"backward" -> (tokenizer, model)
        self.translations: dict[str, str] = {}  # source text -> its round trip
        self._disk_loaded = False
        self.generate_calls = 0  # generate() calls on either model: what the translation cache saves

    # -- synonyms

    @property
    def synonyms(self) -> Synonyms:
        if self._synonyms is None:
            table = load_synonym_table(self.settings.synonyms, source=self.source) if self.settings.synonyms else None
            self._synonyms = Synonyms(table, wordnet=self.settings.use_wordnet and wordnet_problem() is None)
        return self._synonyms

    # -- the main entry point

    def augment(self, train, params: Mapping[str, Any], columns: Sequence[str] | None = None):
        """`train` (a `datasets.Dataset`, the training split only) with the trial's augmented rows added.

        Returns `train` itself when no augmentation param is active. Only `columns` (default: the
        settings' columns) change in the new rows; every other column is copied. The result for a
        (data, params, columns) is cached, so trials that draw the same values share it.
        """
        import datasets

        active = active_params(params)
        if not active:
            return train
        columns = list(columns or self.settings.columns or [])
        if not columns:
            raise ValueError("no columns to augment: pass columns= or set AugmentationSettings.columns")
        missing = [c for c in columns if c not in train.column_names]
        if missing:
            raise ValueError(f"columns {missing} are not in the training data (it has {train.column_names})")
        key = (getattr(train, "_fingerprint", None) or id(train), tuple(columns), tuple(sorted(active.items())))
        if key in self._datasets:
            self._datasets.move_to_end(key)
            return self._datasets[key]

        rows = train.to_dict()
        n = len(train)
        new: dict[str, list] = {name: [] for name in train.column_names}
        probs = {name: active[name] for name in EDA_PARAMS if name in active}
        if probs and any(name in probs for name in NEEDS_SYNONYMS) and not self.synonyms.available:
            _check_synonym_source(self.settings, next(name for name in NEEDS_SYNONYMS if name in probs), self.source)
        for copy in range(active.get(COPIES_PARAM, 0) if probs else 0):
            for name in train.column_names:
                if name not in columns:
                    new[name] += rows[name]
            for column in columns:
                new[column] += [
                    eda(text, probs, self.synonyms, random.Random(f"{self.seed}:eda:{copy}:{i}:{column}"))
                    if isinstance(text, str) else text
                    for i, text in enumerate(rows[column])
                ]
        ratio = active.get(BACKTRANSLATION_PARAM, 0.0)
        if ratio:
            # One seeded order of the rows: a larger ratio takes more of the same rows, so the
            # translations a smaller one needed are reused.
            chosen = sorted(random.Random(f"{self.seed}:backtranslation").sample(range(n), n)[:int(ratio * n + 0.5)])
            for name in train.column_names:
                if name not in columns:
                    new[name] += [rows[name][i] for i in chosen]
            for column in columns:
                texts = [rows[column][i] for i in chosen]
                strings = [t for t in texts if isinstance(t, str)]
                back = dict(zip(strings, self.back_translate(strings)))
                new[column] += [back.get(t, t) if isinstance(t, str) else t for t in texts]
        added = datasets.Dataset.from_dict(new, features=train.features)
        result = datasets.concatenate_datasets([train, added]) if len(added) else train
        self._datasets[key] = result
        while len(self._datasets) > self.cache_size:
            self._datasets.popitem(last=False)
        return result

    # -- back-translation

    def back_translate(self, texts: Sequence[str]) -> list[str]:
        """Each text translated forward and back (a text whose translation comes back empty stays
        as it was). Only texts never translated before reach the models.

        Example (two translation models are needed: scripts/build_translation_models.py trains a tiny pair):
            >>> augmenter.back_translate(["Where is my order A1234?"])  # doctest: +SKIP
            ['Where is my order A1234?']
        """
        settings = self.settings.backtranslation
        if settings is None:
            raise ConfigError("back-translation needs translation models", source=self.source,
                              key=f"{SETTINGS_KEY}.backtranslation",
                              hint="Fix: set augmentation.backtranslation: {forward: MODEL, backward: MODEL}.")
        self._load_disk_cache()
        todo = list(dict.fromkeys(t for t in texts if t not in self.translations))
        if todo:
            there = self._translate("forward", [settings.forward_prefix + t for t in todo])
            back = self._translate("backward", [settings.backward_prefix + t for t in there])
            fresh = {src: (out.strip() or src) for src, out in zip(todo, back)}
            self.translations.update(fresh)
            self._save_disk_cache(fresh)
        return [self.translations[t] for t in texts]

    def _model(self, direction: str):
        if direction not in self._models:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            settings = self.settings.backtranslation
            name = getattr(settings, direction)
            key = f"{SETTINGS_KEY}.backtranslation.{direction}"
            check_translation_model(name, key=key, source=self.source)
            device = settings.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                tokenizer = AutoTokenizer.from_pretrained(name)
                model = AutoModelForSeq2SeqLM.from_pretrained(name).to(device).eval()
            except Exception as exc:
                raise ConfigError(f"could not load the translation model ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})", source=self.source,
                                  key=key, value=name,
                                  hint="Fix: give a seq2seq model (AutoModelForSeq2SeqLM): Marian, T5, BART, ...",
                                  ) from exc
            self._models[direction] = (tokenizer, model)
        return self._models[direction]

    def _translate(self, direction: str, texts: list[str]) -> list[str]:
        import torch

        settings = self.settings.backtranslation
        tokenizer, model = self._model(direction)
        limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length <= 4096 else 512
        device = next(model.parameters()).device
        # Longest first: batches of similar lengths waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        results: dict[int, str] = {}
        with torch.no_grad():
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=limit,
                                    return_tensors="pt").to(device)
                generated = model.generate(**encoded, max_new_tokens=settings.max_new_tokens,
                                           num_beams=settings.num_beams, do_sample=False)
                self.generate_calls += 1
                for i, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                    results[i] = text.strip()
        return [results[i] for i in range(len(texts))]

    # -- the on-disk translation cache

    def _disk_cache_file(self) -> Path | None:
        settings = self.settings.backtranslation
        if settings is None or settings.cache_dir is None:
            return None
        identity = {"forward": _model_identity(settings.forward), "backward": _model_identity(settings.backward),
                    "prefixes": [settings.forward_prefix, settings.backward_prefix],
                    "max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return Path(settings.cache_dir).expanduser() / f"backtranslations-{digest}.jsonl"

    def _load_disk_cache(self) -> None:
        if self._disk_loaded:
            return
        self._disk_loaded = True
        file = self._disk_cache_file()
        if file is None or not file.exists():
            return
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a worker that died mid-write
                continue
            if isinstance(entry, dict) and isinstance(entry.get("source"), str) and isinstance(entry.get("back"), str):
                self.translations.setdefault(entry["source"], entry["back"])

    def _save_disk_cache(self, fresh: Mapping[str, str]) -> None:
        file = self._disk_cache_file()
        if file is None or not fresh:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"source": s, "back": b}, ensure_ascii=False) + "\n" for s, b in fresh.items())
        with open(file, "a", encoding="utf-8") as handle:  # one append: workers sharing the file add whole lines
            handle.write(lines)


def _model_identity(name: str) -> Any:
    """What makes translations reusable: the name, and for a local directory its files' sizes and times."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return name
    return [name] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.iterdir()) if p.is_file()]
