"""What lives per worker: the base models loaded so far, their tokenizers, and the data tokenized per tokenizer.

A worker (a process running trials one after another) loads each base model once and keeps it while
memory allows; the raw splits are read once, and tokenized once per distinct tokenizer, so models
that share a tokenizer share the tokenized data. Augmented training rows are kept per (tokenizer,
augmentation params), the last few of them.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..data.augmentation import Augmenter
from ..settings import AugmentationSettings, ModelConfig
from ..data.sources import Splits, from_pretrained, load_splits, resolve_model_path
from ..tasks.base import Task, Tokenized
from .arguments import keep_quantized_layers_trainable, quantization_config, torch_dtype

BASE_MODEL_PARAM = "base_model"  # the space parameter that picks the base model a trial fine-tunes
AUGMENTED_KEPT = 4  # augmented training sets kept in memory (least recently used dropped first)


class LoadedModel(NamedTuple):
    model: Any
    tokenizer: Any
    tokenizer_key: str  # tokenizer_fingerprint: which tokenized datasets this model trains on


class Worker:
    """The base models, tokenizers and tokenized data one worker keeps between trials.

    Args:
        task: the task that tokenizes the data and loads the models.
        model: the sweep's `model:` settings (revision, dtype, trust_remote_code apply to every model).
        seed: the sweep seed (splits, classification head initialisation, augmentation).
        max_cached_models: models kept loaded at most (None: as many as memory allows).
        augmentation: the sweep's fixed `augmentation:` settings.
        source: the sweep file, named in errors.

    Example:
        >>> from objectives import DataConfig, ModelConfig, TrainBudget
        >>> from objectives.tasks import TASKS
        >>> task = TASKS.get("causal_lm")(DataConfig(source="bundled:support-qa", max_train_examples=16),
        ...                               budget=TrainBudget(max_seq_length=64))
        >>> worker = Worker(task, ModelConfig(name_or_path="bundled:tiny-support-lm"))
        >>> loaded = worker.use("bundled:tiny-support-lm")
        >>> len(worker.data.train), loaded.model.config.model_type
        (16, 'llama')
    """

    def __init__(self, task: Task, model: ModelConfig, *, seed: int = 0, max_cached_models: int | None = None,
                 augmentation: AugmentationSettings | None = None, source: str | None = None) -> None:
        self.task = task
        self.model_config = model
        self.seed = seed
        self.max_cached_models = max_cached_models
        self.augmentation = augmentation
        self.source = source
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self.tokenized: dict[str, Tokenized] = {}  # tokenizer fingerprint -> the data as its model reads it
        self.current: str | None = None  # the name_or_path of the model trials train now
        self.splits: Splits | None = None  # the raw splits, read once for every tokenizer
        self.augmenter: Augmenter | None = None
        self.augmented: OrderedDict[tuple, Tokenized] = OrderedDict()  # (tokenizer, aug params) -> train rows

    @property
    def loaded(self) -> LoadedModel | None:
        """The current model, its tokenizer and key; None before `use` (or once it was dropped)."""
        return self.models.get(self.current) if self.current is not None else None

    @property
    def data(self) -> Tokenized | None:
        """The data tokenized with the current model's tokenizer."""
        loaded = self.loaded
        return self.tokenized[loaded.tokenizer_key] if loaded is not None else None

    def use(self, name_or_path: str) -> LoadedModel:
        """Make `name_or_path` the base model (and tokenizer, and tokenized data) trials train, loading
        what this worker has not loaded yet."""
        import transformers

        if name_or_path == self.current and self.loaded is not None:
            return self.loaded
        loaded = self.models.get(name_or_path)
        if loaded is None:
            config = self.model_config.model_copy(update={"name_or_path": name_or_path})
            path = resolve_model_path(config, source=self.source)
            self.make_room(path)
            tokenizer = from_pretrained(transformers.AutoTokenizer.from_pretrained, path, config=config,
                                        source=self.source)
            if tokenizer.pad_token is None:
                # Padding only needs *a* token id: its positions are masked out of attention and loss.
                tokenizer.pad_token = tokenizer.eos_token
            key = tokenizer_fingerprint(tokenizer)
            if key not in self.tokenized:
                if self.splits is None:
                    self.splits = load_splits(self.task.data, seed=self.seed, columns=self.task.required_columns(),
                                              source=self.source)
                self.tokenized[key] = self.task.tokenize(tokenizer, *self.splits)
            # Checked at launch too; again here for what skips the launch (`ftsweep train`, the Python API), so
            # a head that does not fit reads as the task's error, not as transformers' size mismatch.
            self.task.check_model(config, from_pretrained(transformers.AutoConfig.from_pretrained, path,
                                                          config=config, source=self.source), self.splits)
            # Only when set: a task's own load_model without the parameter (causal_lm's) never receives it.
            head = {"new_head": True} if config.new_head else {}
            transformers.set_seed(self.seed)  # the classification head is initialised here: same for every trial
            model = from_pretrained(self.task.load_model, path, config=config, source=self.source,
                                    dtype=torch_dtype(config), state=self.tokenized[key].state,
                                    **head, **quantized_loading(config))
            if config.quantization is not None:
                from peft import prepare_model_for_kbit_training

                # PEFT's QLoRA preparation: every base weight frozen, norms and head in fp32 for stable
                # training. Activation checkpointing stays a budget setting (TrainingArguments), per trial.
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
                keep_quantized_layers_trainable(model)
            if getattr(model.config, "pad_token_id", None) is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            model.eval()
            loaded = self.models[name_or_path] = LoadedModel(model, tokenizer, key)
            # What set-up loaded lives as long as the worker. Freezing it out of the garbage collector's
            # generations spares every later full collection (ours after each trial, accelerate's at each
            # Trainer.train()) a walk over ~0.5M objects: ~0.4 s per trial on a 0.5B model (docs/benchmarks.md).
            gc.collect()
            gc.freeze()
        self.models.move_to_end(name_or_path)
        self.current = name_or_path
        return loaded

    def make_room(self, path: str) -> None:
        """Drop cached models (least recently used first) until the next one fits: at most
        `max_cached_models`, and its weights' size must leave some memory free."""
        import torch

        need = _weights_bytes(path)
        while self.models:
            over_count = self.max_cached_models is not None and len(self.models) >= self.max_cached_models
            if torch.cuda.is_available():
                free = torch.cuda.mem_get_info()[0]
            else:
                import psutil

                free = psutil.virtual_memory().available
            # Twice the weights: loading briefly holds a second copy, and training needs room of its own.
            if not over_count and free > 2 * need:
                return
            name, dropped = self.models.popitem(last=False)
            if self.current == name:
                self.current = None
            del dropped
            gc.unfreeze()  # set-up froze the model's objects; collect them with the rest, then freeze again
            gc.collect()
            gc.freeze()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def augmented_train(self, params: Mapping[str, Any], active: Mapping[str, Any]) -> Tokenized:
        """The raw training split augmented for a trial's active `aug_*` params (only it: validation and
        test never change), tokenized as the originals are, with the task's state of those rows;
        cached per (tokenizer, augmentation params)."""
        # The current model's tokenizer key, fingerprinted once when it loaded (hashing a large
        # tokenizer's rules again for every trial would cost more than the lookup it serves).
        loaded = self.loaded
        key = (loaded.tokenizer_key, tuple(sorted(active.items())))
        if key not in self.augmented:
            if self.augmenter is None:
                self.augmenter = Augmenter(self.augmentation, seed=self.seed, source=self.source)
            settings = self.augmentation
            columns = (settings.columns if settings is not None and settings.columns else
                       [c for c in self.task.input_columns() if c in self.task.text_columns()])
            rows = self.augmenter.augment(self.splits.train, params, columns)
            tokenized = self.task.tokenize(loaded.tokenizer, rows, self.splits.validation, None)
            self.augmented[key] = tokenized._replace(validation=None)  # the originals' validation rows serve
            while len(self.augmented) > AUGMENTED_KEPT:
                self.augmented.popitem(last=False)
        self.augmented.move_to_end(key)
        return self.augmented[key]


def quantized_loading(config: ModelConfig) -> dict[str, Any]:
    """`from_pretrained` arguments of a quantized base (bitsandbytes places the weights as it quantizes
    them: on this process's device); {} for a full-precision one."""
    quantization = quantization_config(config)
    if quantization is None:
        return {}
    import torch

    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": quantization, "device_map": {"": device}}


def tokenizer_fingerprint(tokenizer) -> str:
    """Equal for tokenizers that turn every text into the same ids (same vocabulary, rules and special
    tokens), whatever model they came with: the key of the tokenized-data cache."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                          tokenizer.pad_token_id, tokenizer.padding_side, getattr(tokenizer, "add_bos_token", None)])
    return hashlib.sha256((rules + special).encode()).hexdigest()[:16]


def _weights_bytes(path: str) -> int:
    """Size of a local checkpoint's weight files (0 for a hub id not downloaded yet: nothing to go by)."""
    root = Path(path)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
