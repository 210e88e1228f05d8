"""Data augmentation as space parameters: each EDA op changes its share of words, back-translation runs
through two real (tiny, locally built) seq2seq models with a cache, only the training split changes,
everything is deterministic per seed, and bad settings are refused with the key to fix."""

from __future__ import annotations

import json
import math
import random

import datasets
import pytest
import yaml
from conftest import load_script

from objectives import DataConfig, ObjectiveOptions, get_objective, load_splits
from objectives.data import augmentation as aug
from objectives.data.augmentation import (
    AUGMENTATION_PARAMS,
    AugmentationSettings,
    Augmenter,
    Synonyms,
    check_augmentation,
    eda,
    load_synonym_table,
)
from objectives.data.sources import Splits
from objectives.tasks.causal_lm import CausalLMTask
from spaces import ConfigError, SearchSpace

CAUSAL_LM, CLASSIFICATION = get_objective("causal_lm"), get_objective("sequence_classification")
SUPPORT_SYNONYMS = "bundled:support"  # objectives/synonyms/support.yaml
WORDS = 20  # words per synthetic text
# 300 texts of 20 distinct words w<i>, each with exactly one synonym s<i> in the table.
TEXTS = [" ".join(f"w{(row * 7 + j) % 400}" for j in range(WORDS)) for row in range(300)]
TABLE = {f"w{i}": [f"s{i}"] for i in range(400)}


@pytest.fixture(scope="module")
def table_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("synonyms") / "table.yaml"
    path.write_text(yaml.safe_dump(TABLE))
    return str(path)


@pytest.fixture(scope="module")
def synthetic() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": TEXTS, "response": [f"answer {i}" for i in range(len(TEXTS))]})


@pytest.fixture(scope="session")
def translation_models(tmp_path_factory) -> dict:
    """Both translation models, built and briefly trained by scripts/build_translation_models.py."""
    script = load_script("build_translation_models")
    return script.build_models(tmp_path_factory.mktemp("translation-models"), steps=60, check=0)


def _augmented(train, params, table_file, seed=0, columns=("prompt",)):
    out = Augmenter(AugmentationSettings(synonyms=table_file, use_wordnet=False), seed=seed).augment(
        train, params, list(columns))
    return list(out["prompt"])[len(train):]  # the added rows, in the order of the originals


# ---------------------------------------------------------------- EDA ops


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_synonym_replacement_replaces_its_share_of_words_with_synonyms_from_the_table(synthetic, table_file, p):
    new = _augmented(synthetic, {"aug_synonym_prob": p}, table_file)
    replaced = total = 0
    for before, after in zip(TEXTS, new):
        old_words, new_words = before.split(), after.split()
        assert len(new_words) == len(old_words)
        for a, b in zip(old_words, new_words):
            assert b == a or b == "s" + a[1:], "a word became something that is not its synonym in the table"
            replaced += b != a
            total += 1
    assert replaced / total == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_random_insertion_adds_its_share_of_synonyms_of_the_texts_own_words(synthetic, table_file, p):
    new = _augmented(synthetic, {"aug_insert_prob": p}, table_file)
    added = 0
    for before, after in zip(TEXTS, new):
        old_words, new_words = before.split(), after.split()
        inserted = [w for w in new_words if w.startswith("s")]
        assert [w for w in new_words if w.startswith("w")] == old_words  # the originals, in order
        assert all("w" + w[1:] in old_words for w in inserted)  # synonyms of this text's own words
        added += len(inserted)
    assert added / (WORDS * len(TEXTS)) == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize("p", [0.05, 0.15])
def test_random_swap_moves_about_twice_its_share_of_words_and_keeps_them_all(synthetic, table_file, p):
    new = _augmented(synthetic, {"aug_swap_prob": p}, table_file)
    moved = 0
    for before, after in zip(TEXTS, new):
        assert sorted(after.split()) == sorted(before.split())
        moved += sum(a != b for a, b in zip(before.split(), after.split()))
    # p * words swaps touch 2 words each; a word swapped twice (or back) lowers the count a little.
    share = moved / (WORDS * len(TEXTS))
    assert 1.7 * p <= share <= 2 * p + 0.01


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_random_deletion_deletes_its_share_of_words_and_keeps_the_order(synthetic, table_file, p):
    new = _augmented(synthetic, {"aug_delete_prob": p}, table_file)
    kept = 0
    for before, after in zip(TEXTS, new):
        words, rest = before.split(), iter(before.split())
        assert all(w in rest for w in after.split())  # a subsequence of the original
        assert after.split() and len(after.split()) < len(words) + 1
        kept += len(after.split())
    assert 1 - kept / (WORDS * len(TEXTS)) == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize("op", aug.EDA_PARAMS)
def test_an_op_at_probability_zero_changes_nothing(synthetic, table_file, op):
    augmenter = Augmenter(AugmentationSettings(synonyms=table_file, use_wordnet=False), seed=0)
    assert augmenter.augment(synthetic, {op: 0.0, "aug_copies": 3}, ["prompt"]) is synthetic
    synonyms = Synonyms(TABLE)
    for i, text in enumerate(TEXTS[:50]):
        assert eda(text, {op: 0.0}, synonyms, random.Random(i)) == text
    # Next to another op, its own mark never shows: no synonym, no extra or missing word, no reordering.
    other = aug.DELETE_PARAM if op != aug.DELETE_PARAM else aug.SWAP_PARAM
    for before, after in zip(TEXTS, _augmented(synthetic, {op: 0.0, other: 0.2}, table_file)):
        if other == aug.DELETE_PARAM:
            assert not any(w.startswith("s") for w in after.split())
            rest = iter(before.split())
            assert all(w in rest for w in after.split())
        else:
            assert sorted(after.split()) == sorted(before.split())


def test_copies_and_punctuation_and_never_an_empty_text(table_file):
    train = datasets.Dataset.from_dict({"prompt": ["Hi, where is my order A1234?", "Refund?", "!!!"],
                                        "response": ["a", "b", "c"]})
    augmenter = Augmenter(AugmentationSettings(synonyms=SUPPORT_SYNONYMS, use_wordnet=False), seed=0)
    out = augmenter.augment(train, {"aug_delete_prob": 0.9, "aug_swap_prob": 0.5, "aug_copies": 3}, ["prompt"])
    assert len(out) == 3 * 4
    new = list(out["prompt"])[3:]
    assert all(text.strip() for text in new)
    assert all(text == "Refund?" for text in new[1::3])  # deleting its only word would leave nothing
    assert all(text == "!!!" for text in new[2::3])  # no words: nothing to change
    assert all(text.endswith("?") for text in new[0::3])  # the question mark stays at the end


# ---------------------------------------------------------------- determinism, splits, columns


def test_same_seed_same_rows_other_seed_other_rows(synthetic, table_file):
    params = {"aug_synonym_prob": 0.1, "aug_insert_prob": 0.1, "aug_swap_prob": 0.1, "aug_delete_prob": 0.1,
              "aug_copies": 2}
    first = _augmented(synthetic, params, table_file, seed=3)
    assert _augmented(synthetic, params, table_file, seed=3) == first  # a fresh Augmenter, the same rows
    assert _augmented(synthetic, params, table_file, seed=4) != first
    assert _augmented(synthetic, {**params, "aug_delete_prob": 0.2}, table_file, seed=3) != first
    assert len(first) == 2 * len(TEXTS)


def test_augmented_datasets_are_cached_per_params(synthetic, table_file):
    augmenter = Augmenter(AugmentationSettings(synonyms=table_file), seed=0, cache_size=2)
    a = augmenter.augment(synthetic, {"aug_swap_prob": 0.1}, ["prompt"])
    assert augmenter.augment(synthetic, {"aug_swap_prob": 0.1, "learning_rate": 1e-3}, ["prompt"]) is a
    augmenter.augment(synthetic, {"aug_swap_prob": 0.2}, ["prompt"])
    augmenter.augment(synthetic, {"aug_swap_prob": 0.3}, ["prompt"])
    rebuilt = augmenter.augment(synthetic, {"aug_swap_prob": 0.1}, ["prompt"])  # dropped (LRU of 2), rebuilt
    assert rebuilt is not a and list(rebuilt["prompt"]) == list(a["prompt"])


def augment_splits(augmenter: Augmenter, train, validation, test, params, columns) -> Splits:
    """The three splits with only `train` augmented: validation and test pass through untouched."""
    return Splits(augmenter.augment(train, params, columns), validation, test)


def test_only_the_training_split_is_augmented():
    splits = load_splits(DataConfig(source="bundled:support-qa", max_train_examples=200), seed=0,
                         columns=["prompt", "response"])
    validation_rows, test_rows = splits.validation.to_list(), splits.test.to_list()
    augmenter = Augmenter(AugmentationSettings(synonyms=SUPPORT_SYNONYMS), seed=0)
    out = augment_splits(augmenter, *splits, {"aug_synonym_prob": 0.3, "aug_copies": 2}, ["prompt"])
    assert out.validation is splits.validation and out.test is splits.test
    assert out.validation.to_list() == validation_rows and out.test.to_list() == test_rows
    assert len(out.train) == 3 * len(splits.train)
    assert out.train.select(range(len(splits.train))).to_list() == splits.train.to_list()  # originals kept
    n = len(splits.train)
    changed = sum(a != b for a, b in zip(list(out.train["prompt"])[n:], list(splits.train["prompt"]) * 2))
    assert changed > n  # the support table covers most prompts
    # Responses are the targets: every copy keeps its original's.
    assert list(out.train["response"]) == list(splits.train["response"]) * 3


def test_only_the_given_columns_change_and_labels_keep_their_type(table_file):
    train = datasets.Dataset.from_dict(
        {"text": TEXTS[:40], "label": [i % 3 for i in range(40)]},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["a", "b", "c"])}))
    augmenter = Augmenter(AugmentationSettings(synonyms=table_file), seed=0)
    out = augmenter.augment(train, {"aug_synonym_prob": 0.5}, ["text"])
    assert out.features == train.features
    assert list(out["label"]) == list(train["label"]) * 2
    assert all(a != b for a, b in zip(list(out["text"])[40:], TEXTS[:40]))


def test_synonyms_come_from_the_table_in_every_format(tmp_path):
    groups = load_synonym_table(SUPPORT_SYNONYMS)
    assert "damaged" in groups["broken"] and "broken" in groups["damaged"]  # a group goes every way
    (tmp_path / "t.json").write_text(json.dumps({"Broken": ["damaged", "cracked"], "late": "delayed"}))
    (tmp_path / "t.csv").write_text("word,synonyms\nbroken,damaged\nbroken,cracked\nlate,delayed\n")
    expected = {"broken": ("damaged", "cracked"), "late": ("delayed",)}
    assert load_synonym_table(tmp_path / "t.json") == expected
    assert load_synonym_table(tmp_path / "t.csv") == expected

    sentence = "My parcel arrived broken, please refund it."
    train = datasets.Dataset.from_dict({"prompt": [sentence] * 50})
    out = Augmenter(AugmentationSettings(synonyms=SUPPORT_SYNONYMS, use_wordnet=False), seed=0).augment(
        train, {"aug_synonym_prob": 0.5}, ["prompt"])
    seen = set()
    for text in list(out["prompt"])[50:]:
        for old, new in zip(sentence.split(), text.split()):
            core_old, core_new = old.strip(",."), new.strip(",.")
            if core_old != core_new:
                assert core_new.lower() in {s.lower() for s in groups[core_old.lower()]}
                seen.add(core_new)
    assert len(seen) >= 4  # several table synonyms show up across 50 copies


# ---------------------------------------------------------------- back-translation


def test_backtranslation_round_trips_through_both_models_and_reuses_translations(translation_models, tmp_path):
    train = load_splits(DataConfig(source="bundled:support-qa", max_train_examples=40), seed=0,
                        columns=["prompt", "response"]).train
    backtranslation = {"forward": translation_models["forward"], "backward": translation_models["backward"],
                       "max_new_tokens": 24, "batch_size": 8, "cache_dir": str(tmp_path / "cache")}
    settings = AugmentationSettings(backtranslation=backtranslation)
    augmenter = Augmenter(settings, seed=0)

    half = augmenter.augment(train, {"aug_backtranslation_ratio": 0.5}, ["prompt"])
    assert len(half) == 40 + 20
    assert augmenter.generate_calls == 2 * math.ceil(20 / 8)  # forward and backward, 8 texts per call
    added = half.select(range(40, 60))
    assert all(isinstance(t, str) and t.strip() for t in added["prompt"])
    originals = {p: r for p, r in zip(train["prompt"], train["response"])}
    assert set(added["response"]) <= set(originals.values())  # responses copied, never translated

    assert augmenter.augment(train, {"aug_backtranslation_ratio": 0.5}, ["prompt"]) is half
    calls = augmenter.generate_calls
    full = augmenter.augment(train, {"aug_backtranslation_ratio": 1.0}, ["prompt"])
    assert len(full) == 80
    # A larger ratio adds the same rows and more: only the 20 new texts are translated.
    assert augmenter.generate_calls - calls == 2 * math.ceil(20 / 8)
    assert set(list(half["prompt"])[40:]) <= set(list(full["prompt"])[40:])

    # Another worker (or a later sweep) with the same models and cache_dir translates nothing.
    other = Augmenter(settings, seed=0)
    assert other.augment(train, {"aug_backtranslation_ratio": 1.0}, ["prompt"]).to_list() == full.to_list()
    assert other.generate_calls == 0
    assert other._models == {}  # not even loaded


def test_backtranslation_is_deterministic_and_the_rows_depend_on_the_seed(translation_models):
    train = datasets.Dataset.from_dict({"prompt": [f"Where is my order A{1000 + i}?" for i in range(30)],
                                        "id": list(range(30))})
    settings = AugmentationSettings(backtranslation={"forward": translation_models["forward"],
                                                     "backward": translation_models["backward"],
                                                     "max_new_tokens": 16})
    rows = [Augmenter(settings, seed=s).augment(train, {"aug_backtranslation_ratio": 0.3}, ["prompt"])
            for s in (0, 0, 1)]
    assert rows[0].to_list() == rows[1].to_list()
    # The originals come first, as they were.
    assert all(len(r) == 39 and list(r["prompt"])[:30] == list(train["prompt"]) for r in rows)
    chosen = [list(r["id"])[30:] for r in rows]  # which originals were back-translated
    assert chosen[0] == chosen[1] != chosen[2]


def test_the_translation_language_round_trip_is_a_paraphrase():
    script = load_script("build_translation_models")
    lexicon = script.Lexicon(script.corpus())
    english = "Hey, my ceramic mug arrived cracked. Order K1234, thanks!"
    leafish = lexicon.forward(english)
    assert "K1234" in leafish and leafish.count(" ") == english.count(" ") and "mug" not in leafish
    assert lexicon.back(leafish) == "Hello, my ceramic mug arrived damaged. Order K1234, thanks!"


# ---------------------------------------------------------------- bad input


def _space(**params) -> SearchSpace:
    return SearchSpace.from_dict({"params": params})


@pytest.mark.parametrize(("param", "key", "message"), [
    ({"type": "float", "low": -0.1, "high": 0.5}, "low", "below 0"),
    ({"type": "float", "low": 0.0, "high": 1.5}, "high", "above 1"),
    ({"type": "categorical", "choices": [0.0, 0.5, 2.0]}, "choices[2]", "above 1"),
    ({"type": "categorical", "choices": [0.1, "lots"]}, "choices[1]", "must be a number"),
    ({"type": "fixed", "value": -1}, "value", "below 0"),
])
@pytest.mark.parametrize("name", ["aug_swap_prob", "aug_backtranslation_ratio"])
def test_a_probability_outside_0_1_is_refused_with_the_bound(name, param, key, message):
    settings = AugmentationSettings(backtranslation=None)
    with pytest.raises(ConfigError, match=message) as caught:
        check_augmentation(_space(**{name: param}), settings, task=CAUSAL_LM, source="sweep.yaml")
    assert caught.value.key == f"space.params.{name}.{key}" and caught.value.source == "sweep.yaml"


def test_a_probability_outside_0_1_is_refused_in_a_trial_too(synthetic):
    with pytest.raises(ValueError, match=r"aug_delete_prob must be a number in \[0, 1\]"):
        Augmenter(seed=0).augment(synthetic, {"aug_delete_prob": 1.5}, ["prompt"])


@pytest.mark.parametrize("param", [{"type": "int", "low": -1, "high": 2}, {"type": "categorical", "choices": [0, -2]},
                                   {"type": "float", "low": 0.0, "high": 2.0}])
def test_negative_or_fractional_copies_are_refused(param):
    with pytest.raises(ConfigError, match="aug_copies") as caught:
        check_augmentation(_space(aug_copies=param), None, task=CAUSAL_LM)
    assert caught.value.key.startswith("space.params.aug_copies")


def test_an_unknown_augmentation_param_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'aug_swap_prob'"):
        check_augmentation(_space(aug_swp_prob={"type": "float", "low": 0.0, "high": 0.2}), None, task=CAUSAL_LM)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_backtranslation_model_path_that_does_not_exist_is_refused(translation_models, tmp_path, direction):
    paths = {"forward": translation_models["forward"], "backward": translation_models["backward"],
             direction: str(tmp_path / "no-such-model")}
    settings = AugmentationSettings(backtranslation=paths)
    space = _space(aug_backtranslation_ratio={"type": "float", "low": 0.0, "high": 0.5})
    with pytest.raises(ConfigError, match="translation model path does not exist") as caught:
        check_augmentation(space, settings, task=CAUSAL_LM, source="sweep.yaml")
    assert caught.value.key == f"augmentation.backtranslation.{direction}"
    assert "Fix:" in str(caught.value)
    # The same error in a trial, before any model is loaded.
    train = datasets.Dataset.from_dict({"prompt": ["Where is my order A1234?"] * 4})
    with pytest.raises(ConfigError, match="does not exist"):
        Augmenter(settings, seed=0).augment(train, {"aug_backtranslation_ratio": 1.0}, ["prompt"])


def test_a_directory_that_is_no_model_and_an_offline_hub_id_are_refused(tmp_path, monkeypatch):
    space = _space(aug_backtranslation_ratio={"type": "float", "low": 0.0, "high": 0.5})
    settings = AugmentationSettings(backtranslation={"forward": str(tmp_path), "backward": str(tmp_path)})
    with pytest.raises(ConfigError, match="no config.json"):
        check_augmentation(space, settings, task=CAUSAL_LM)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = AugmentationSettings(backtranslation={"forward": "someone/opus-mt-en-xx-not-cached",
                                                "backward": "someone/opus-mt-xx-en-not-cached"})
    with pytest.raises(ConfigError, match="cannot be downloaded here") as caught:
        check_augmentation(space, hub, task=CAUSAL_LM)
    assert caught.value.key == "augmentation.backtranslation.forward"


def test_a_searched_backtranslation_ratio_needs_translation_models():
    space = _space(aug_backtranslation_ratio={"type": "categorical", "choices": [0.0, 0.5]})
    with pytest.raises(ConfigError, match="no translation models are configured") as caught:
        check_augmentation(space, AugmentationSettings(), task=CAUSAL_LM)
    assert "augmentation: {backtranslation:" in str(caught.value)
    # A ratio fixed at 0 does nothing, so it needs nothing.
    check_augmentation(_space(aug_backtranslation_ratio={"type": "fixed", "value": 0.0}), None, task=CAUSAL_LM)


@pytest.mark.parametrize("name", ["aug_synonym_prob", "aug_insert_prob"])
def test_synonyms_without_a_table_or_wordnet_are_refused(name, monkeypatch, synthetic):
    space = _space(**{name: {"type": "float", "low": 0.0, "high": 0.3}})
    with pytest.raises(ConfigError, match="no synonym table and no WordNet") as caught:
        check_augmentation(space, AugmentationSettings(use_wordnet=False), task=CAUSAL_LM, source="sweep.yaml")
    assert caught.value.key == f"space.params.{name}"
    assert "augmentation: {synonyms:" in str(caught.value) and "nltk.downloader wordnet" in str(caught.value)
    # With WordNet allowed but its data missing (as on this machine, or made so), the same.
    monkeypatch.setattr(aug, "wordnet_problem", lambda: "NLTK's WordNet data is not installed here")
    with pytest.raises(ConfigError, match="WordNet data is not installed"):
        check_augmentation(space, AugmentationSettings(), task=CAUSAL_LM)
    with pytest.raises(ConfigError, match="no synonym table"):
        Augmenter(seed=0).augment(synthetic, {name: 0.2}, ["prompt"])
    # A table is enough.
    check_augmentation(space, AugmentationSettings(synonyms=SUPPORT_SYNONYMS), task=CAUSAL_LM)


@pytest.mark.parametrize(("content", "suffix", "message"), [
    (None, ".yaml", "does not exist"),
    ("bundled:no-such-table", None, "no bundled synonym table"),
    ("just a string", ".yaml", "must map words"),
    ("broken: [damaged, 3]", ".yaml", "non-empty strings"),
    ("{not json", ".json", "could not read"),
    ("broken,damaged", ".txt", "unsupported synonym table type"),
])
def test_a_bad_synonym_table_is_refused(tmp_path, content, suffix, message):
    path = tmp_path / f"synonyms{suffix}"
    if suffix is None:  # a bundled name
        path = content
    elif content is not None:
        path.write_text(content)
    space = _space(aug_synonym_prob={"type": "float", "low": 0.0, "high": 0.3})
    with pytest.raises(ConfigError, match=message) as caught:
        check_augmentation(space, AugmentationSettings(synonyms=str(path)), task=CAUSAL_LM)
    assert caught.value.key.startswith("augmentation.synonyms")


def test_labels_are_never_augmented_and_columns_default_to_the_input():
    space = _space(aug_swap_prob={"type": "float", "low": 0.0, "high": 0.2})
    assert check_augmentation(space, None, task=CAUSAL_LM) == ["prompt"]
    assert check_augmentation(space, None, task=CLASSIFICATION) == ["text"]
    data = DataConfig(source="x.jsonl", prompt_column="question", response_column="answer")
    assert check_augmentation(space, AugmentationSettings(columns=["question", "answer"]), task=CAUSAL_LM,
                              data=data) == ["question", "answer"]
    with pytest.raises(ConfigError, match="not a text column") as caught:
        check_augmentation(space, AugmentationSettings(columns=["label"]), task=CLASSIFICATION)
    assert caught.value.key == "augmentation.columns[0]"
    # The default is the task's input: every column a prompt template fills.
    options = ObjectiveOptions(prompt_template="Ticket {ticket}: {prompt}\nAnswer:")
    assert check_augmentation(space, None, task=CAUSAL_LM, options=options) == ["ticket", "prompt"]


def test_check_augmentation_takes_the_objective_class_or_a_task():
    space = SearchSpace.from_dict({"params": {"aug_swap_prob": {"type": "fixed", "value": 0.1}}})
    data = DataConfig(source="qa.jsonl", prompt_column="question")
    for task in (CAUSAL_LM, CausalLMTask, CausalLMTask(data)):
        assert check_augmentation(space, None, task=task, data=data) == ["question"]
    assert check_augmentation(space, None, task=CLASSIFICATION) == ["text"]


def test_every_param_is_documented_in_the_module_table():
    assert set(AUGMENTATION_PARAMS) == {*aug.PROBABILITY_PARAMS, aug.COPIES_PARAM}
    assert all(f"| {name}" in aug.__doc__ for name in AUGMENTATION_PARAMS)
