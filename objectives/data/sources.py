"""Finding and loading models and data: local paths (files, folders of split files, `datasets`
save_to_disk folders), hub ids, and the assets bundled with ftsweep.

Hub loading is the real `from_pretrained` / `load_dataset` path; on an air-gapped machine it fails
with a message that says so, instead of a long stack trace from deep inside `huggingface_hub`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from spaces import ConfigError

from ..settings import DataConfig, ModelConfig
from .files import FILE_TYPES

ASSETS = Path(__file__).parents[1] / "assets"  # objectives/assets: the models and data ftsweep ships
BUNDLED_PREFIX = "bundled:"
# The marker files `datasets`' save_to_disk writes (datasets.config names them the same): a DatasetDict
# folder has dataset_dict.json and a subfolder per split; a single Dataset folder has the other two beside
# its .arrow shards. They are metadata, never split files of a folder.
SAVED_DATASET_DICT_FILE = "dataset_dict.json"
SAVED_DATASET_FILES = ("dataset_info.json", "state.json")
_SAVED_FOLDER_LAYOUT = ("a folder written by datasets' save_to_disk (dataset_dict.json with a subfolder per split, "
                        "or dataset_info.json and state.json beside .arrow files)")


def bundled_models() -> list[str]:
    """Names usable as `model: bundled:NAME`."""
    root = ASSETS / "models"
    return sorted(p.name for p in root.iterdir() if (p / "config.json").exists()) if root.exists() else []


def bundled_datasets() -> list[str]:
    """Names usable as `dataset.source: bundled:NAME` (file `support_qa.jsonl` is `support-qa`)."""
    root = ASSETS / "datasets"
    return sorted(p.stem.replace("_", "-") for p in root.glob("*.jsonl")) if root.exists() else []


def resolve_model_path(model: ModelConfig, *, source: str | None = None) -> str:
    """A path or hub id that `from_pretrained` accepts; bundled names become their directory.

    Example:
        >>> resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm")).endswith("tiny-support-lm")
        True
    """
    name = model.name_or_path
    if name.startswith(BUNDLED_PREFIX):
        bundled = name[len(BUNDLED_PREFIX) :]
        if bundled not in bundled_models():
            raise ConfigError(
                "no bundled model of that name", source=source, key="model.name_or_path", value=name,
                allowed=[BUNDLED_PREFIX + m for m in bundled_models()],
            )
        return str(ASSETS / "models" / bundled)
    if looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ConfigError(
                "model path does not exist", source=source, key="model.name_or_path", value=name,
                hint="Fix: point it at a directory saved with save_pretrained, or use a hub id such as 'org/model'.",
            )
        if not (path / "config.json").exists():
            raise ConfigError(
                "model directory has no config.json (is it a save_pretrained directory?)",
                source=source, key="model.name_or_path", value=name,
            )
        return str(path.resolve())
    return name  # a hub id; from_pretrained resolves it (or fails offline with a clear message)


def from_pretrained(loader: Callable[..., Any], path: str, *, config: ModelConfig, source: str | None = None,
                    **kwargs: Any) -> Any:
    """`loader(path, ...)` (a `from_pretrained`) with the model settings' revision and trust_remote_code;
    a model that cannot be read becomes a ConfigError that says where to look.

    Example:
        >>> from transformers import AutoConfig
        >>> config = ModelConfig(name_or_path="bundled:tiny-support-lm")
        >>> from_pretrained(AutoConfig.from_pretrained, resolve_model_path(config), config=config).model_type
        'llama'
    """
    try:
        return loader(path, revision=config.revision, trust_remote_code=config.trust_remote_code, **kwargs)
    except OSError as exc:
        raise ConfigError(
            f"could not load model ({str(exc).splitlines()[0]})",
            source=source, key="model.name_or_path", value=config.name_or_path,
            hint="Fix: use a local save_pretrained directory, or make sure this machine can reach the hub "
            "(HF_HUB_OFFLINE unset) and the id is right.",
        ) from exc


def looks_local(name: str) -> bool:
    """Whether `name` is a local path rather than a hub id ('name' or 'org/name')."""
    # A hub id is 'name' or 'org/name'; anything with a path prefix or that exists on disk is local.
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def data_files(data: DataConfig, source: str | None) -> tuple[str, dict[str, list[str]]]:
    """(datasets builder, split -> matched files) of `dataset.data_files`, every pattern checked.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("part-1.jsonl", "part-2.jsonl", "dev.jsonl"):
        ...     _ = (folder / name).write_text('{"text": "x"}')
        >>> builder, files = data_files(DataConfig(source=str(folder), data_files={"train": "part-*.jsonl",
        ...                                                                         "validation": "dev.jsonl"}), None)
        >>> builder, [Path(f).name for f in files["train"]], [Path(f).name for f in files["validation"]]
        ('json', ['part-1.jsonl', 'part-2.jsonl'], ['dev.jsonl'])
    """
    root = Path(data.source).expanduser()
    root = root if root.is_dir() else Path.cwd()
    matched: dict[str, list[str]] = {}
    for split, patterns in (data.data_files or {}).items():
        files: list[str] = []
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            path = Path(pattern).expanduser()
            found = sorted(path.parent.glob(path.name)) if path.is_absolute() else sorted(root.glob(pattern))
            found = [f for f in found if f.is_file()]
            if not found:
                raise ConfigError(f"matches no file (looked in {root})", source=source,
                                  key=f"dataset.data_files.{split}", value=pattern,
                                  hint="Fix: give a path or glob relative to dataset.source (a folder) or to where you run.")
            files += [str(f) for f in found]
        matched[split] = files
    suffixes = {Path(f).suffix.lower() for fs in matched.values() for f in fs}
    unknown = sorted(suffixes - set(FILE_TYPES))
    if unknown:
        raise ConfigError(f"unsupported dataset file type(s) {unknown}", source=source, key="dataset.data_files",
                          allowed=sorted(FILE_TYPES))
    builders = {FILE_TYPES[x] for x in suffixes}
    if len(builders) != 1:
        raise ConfigError(f"data_files mix formats ({', '.join(sorted(suffixes))})", source=source,
                          key="dataset.data_files", hint="Fix: keep one format for all split files.")
    return builders.pop(), matched


def local_data_file(data: DataConfig, source: str | None) -> Path | None:
    """The local file or folder `data.source` names (bundled ones included), checked; None for a hub
    dataset or `data_files` (checked too)."""
    name = data.source
    if data.data_files:
        data_files(data, source)
        return None
    if name.startswith(BUNDLED_PREFIX):
        bundled = name[len(BUNDLED_PREFIX) :]
        path = ASSETS / "datasets" / f"{bundled.replace('-', '_')}.jsonl"
        if not path.exists():
            raise ConfigError(
                "no bundled dataset of that name", source=source, key="dataset.source", value=name,
                allowed=[BUNDLED_PREFIX + d for d in bundled_datasets()],
            )
        return path
    path = Path(name).expanduser()
    if path.suffix.lower() in FILE_TYPES or looks_local(name):
        if not path.exists():
            raise ConfigError(
                "dataset file does not exist", source=source, key="dataset.source", value=name,
                hint="Fix: give a .jsonl/.json/.csv/.parquet file, a folder of split files or of save_to_disk (relative to "
                     "where you run ftsweep), or a hub dataset name.",
            )
        if path.is_file() and path.stat().st_size == 0:
            raise ConfigError("dataset file is empty", source=source, key="dataset.source", value=name)
        if path.is_file() and path.suffix.lower() not in FILE_TYPES:
            raise ConfigError(
                "unsupported dataset file type", source=source, key="dataset.source", value=name,
                allowed=sorted(FILE_TYPES),
            )
        if path.is_dir() and saved_dataset_kind(path) is None:
            _folder_format(path, source, name)
        return path
    return None


def saved_dataset_kind(folder: Path) -> str | None:
    """'DatasetDict' or 'Dataset' when `folder` was written by `datasets`' save_to_disk, else None.

    Example:
        >>> import datasets, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(folder / "one")
        >>> saved_dataset_kind(folder / "one"), saved_dataset_kind(folder)
        ('Dataset', None)
    """
    # The order `datasets.load_from_disk` tries them in, so both name the same kind.
    if all((folder / name).is_file() for name in SAVED_DATASET_FILES):
        return "Dataset"
    if (folder / SAVED_DATASET_DICT_FILE).is_file():
        return "DatasetDict"
    return None


def load_saved_dataset(folder: Path):
    """The splits (a DatasetDict) of a save_to_disk folder: a DatasetDict's own splits, a single Dataset as
    the train split -- as a single data file is.

    Example:
        >>> import datasets, tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "saved"
        >>> datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(folder)
        >>> {split: len(rows) for split, rows in load_saved_dataset(folder).items()}
        {'train': 2}
    """
    import datasets

    # In memory: a dataset read from disk is memory-mapped from the user's folder, and `datasets` would then
    # write its cache files (carved splits, tokenized copies) into that folder, which may be shared or read-only.
    loaded = datasets.load_from_disk(str(folder), keep_in_memory=True)
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def _folder_format(folder: Path, source: str | None, name: str) -> str:
    """The one data format of a folder of split files (train.jsonl, validation.jsonl...), checked."""
    metadata = {SAVED_DATASET_DICT_FILE, *SAVED_DATASET_FILES}
    suffixes = {p.suffix.lower() for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in FILE_TYPES and p.name not in metadata}
    if not suffixes:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        shown = ", ".join(present[:10]) + (f" and {len(present) - 10} more" if len(present) > 10 else "")
        raise ConfigError(
            f"the dataset folder is neither split files nor a save_to_disk folder (it has: {shown or 'nothing'})",
            source=source, key="dataset.source", value=name,
            allowed=f"one file per split ({', '.join(sorted(FILE_TYPES))}), or {_SAVED_FOLDER_LAYOUT}",
            hint="Fix: name the files by their split (train.jsonl, validation.jsonl, test.jsonl), or point "
                 "dataset.source at the folder you gave save_to_disk.")
    builders = {FILE_TYPES[s] for s in suffixes}
    if len(builders) > 1:
        raise ConfigError(f"the dataset folder mixes formats ({', '.join(sorted(suffixes))})", source=source,
                          key="dataset.source", value=name, hint="Fix: keep one format for all split files.")
    return builders.pop()


def _explain_folder(folder: Path, source: str | None, name: str) -> None:
    """Say which split files disagree on their columns, when that is why `datasets` could not load a
    folder (it reports only a DatasetGenerationError)."""
    import datasets

    builder = _folder_format(folder, source, name)
    columns = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in FILE_TYPES:
            try:
                columns[path.name] = datasets.load_dataset(builder, data_files=str(path), split="train").column_names
            except Exception:  # noqa: BLE001 - a file that does not load on its own: the caller's message stands
                return
    if len({tuple(sorted(c)) for c in columns.values()}) > 1:
        raise ConfigError(
            "the split files' columns differ: " + "; ".join(f"{f}: {', '.join(c)}" for f, c in columns.items()),
            source=source, key="dataset.source", value=name, hint="Fix: give every split file the same columns.")


def _load_source(data: DataConfig, source: str | None):
    """The source's splits as `datasets` loads them (a DatasetDict), before any split is carved."""
    import datasets

    datasets.disable_progress_bars()
    local = local_data_file(data, source)
    saved = local is not None and local.is_dir() and saved_dataset_kind(local) is not None
    try:
        if data.data_files:
            builder, files = data_files(data, source)
            loaded = datasets.load_dataset(builder, data_files=files)
        elif saved:
            loaded = load_saved_dataset(local)
        elif local is not None and local.is_dir():
            # A folder of split files: `datasets` names the splits from the file names (train, validation /
            # valid / val / dev, test...); a split it has is used as given, a missing one is carved below.
            loaded = datasets.load_dataset(_folder_format(local, source, data.source), data_dir=str(local))
        elif local is not None:
            builder = FILE_TYPES.get(local.suffix.lower(), "json")
            loaded = datasets.load_dataset(builder, data_files={"train": str(local)})
        else:
            loaded = datasets.load_dataset(data.source, data.config_name)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs one clear line
        if local is not None and local.is_dir() and not saved:
            _explain_folder(local, source, data.source)
        cause = _first_line(exc)
        if saved:
            message, hint = (f"could not load the save_to_disk folder ({cause})",
                             "Fix: save it again with save_to_disk; every split folder and .arrow file it names "
                             "must be there.")
        elif local is not None or data.data_files:
            message, hint = (f"could not load dataset ({cause})",
                             "Fix: check the files' format: one example per row, the same columns in every row.")
        else:
            message, hint = (f"could not load dataset ({cause})",
                             "Fix: check the name, and that this machine can reach the hub (HF_HUB_OFFLINE unset).")
        raise ConfigError(message, source=source, key="dataset.source", value=data.source, hint=hint) from exc
    return loaded


def _first_line(exc: BaseException) -> str:
    """'Type: first line' of what went wrong -- for `datasets`' DatasetGenerationError ("An error occurred while
    generating the dataset"), of the error under it, which says what."""
    from datasets.exceptions import DatasetGenerationError

    while isinstance(exc, DatasetGenerationError) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def source_columns(data: DataConfig, source: str | None = None) -> list[str]:
    """The columns of the source's train split, loaded as `load_splits` loads it (datasets caches it).

    Example:
        >>> source_columns(DataConfig(source="bundled:support-qa"))
        ['prompt', 'response']
    """
    key = (data.model_dump_json(), source)
    if key not in _COLUMNS:
        loaded = _load_source(data, source)
        if data.train_split not in loaded:
            raise ConfigError("no such split", source=source, key="dataset.train_split", value=data.train_split,
                              allowed=list(loaded))
        _COLUMNS[key] = list(loaded[data.train_split].column_names)
    return _COLUMNS[key]


_COLUMNS: dict[tuple[str, str | None], list[str]] = {}  # source_columns, per data config


def held_out_splits(data: DataConfig, available: list[str]) -> tuple[str | None, str | None]:
    """The source's own (validation, test) split names, each None when it is to be carved out of train.

    The source's held-out splits (a folder's validation.jsonl, a saved DatasetDict's or a hub dataset's
    "test") are used as given; only missing ones are carved.

    Example:
        >>> held_out_splits(DataConfig(source="d"), ["train", "test"])
        (None, 'test')
    """
    test = data.test_split or ("test" if "test" in available and data.train_split != "test" else None)
    validation = data.validation_split or ("validation" if "validation" in available else None)
    return validation, test


class Splits(NamedTuple):
    train: Any
    validation: Any
    test: Any | None  # held out from every trial; only `ftsweep train` evaluates on it


def load_splits(data: DataConfig, *, seed: int, columns: list[str], source: str | None = None) -> Splits:
    """Load train, validation and (optional) test `datasets.Dataset`s holding at least `columns`.

    When the source has no such splits they are carved from train with `seed` — test first, then
    validation from the rest — so every trial of a sweep and a later `ftsweep train` see exactly
    the same held-out examples, and no trial ever sees the test examples.

    Example:
        >>> splits = load_splits(DataConfig(source="bundled:support-qa"), seed=0, columns=["prompt", "response"])
        >>> len(splits.train), len(splits.validation), len(splits.test)
        (972, 108, 120)
    """
    loaded = _load_source(data, source)
    if data.train_split not in loaded:
        raise ConfigError(
            "no such split", source=source, key="dataset.train_split", value=data.train_split, allowed=list(loaded)
        )
    train = loaded[data.train_split]
    if len(train) == 0:
        raise ConfigError("dataset has no rows", source=source, key="dataset.source", value=data.source)
    missing = [c for c in columns if c not in train.column_names]
    if missing:
        raise ConfigError(
            f"dataset lacks column(s) {missing}", source=source, key="dataset.source", value=data.source,
            allowed=f"columns present: {train.column_names}",
            hint="Fix: rename the columns in the data, or set dataset.prompt_column / response_column / text_column / label_column.",
        )

    validation_split, test_split = held_out_splits(data, list(loaded))
    test = None
    if test_split is not None:
        if test_split not in loaded:
            raise ConfigError("no such split", source=source, key="dataset.test_split", value=test_split,
                              allowed=list(loaded))
        test = loaded[test_split]
    elif data.test_fraction > 0 and int(len(train) * data.test_fraction) >= 1:
        parts = train.train_test_split(test_size=data.test_fraction, seed=seed)
        train, test = parts["train"], parts["test"]

    if validation_split is not None:
        if validation_split not in loaded:
            raise ConfigError(
                "no such split", source=source, key="dataset.validation_split", value=validation_split,
                allowed=list(loaded),
            )
        validation = loaded[validation_split]
    else:
        if len(train) < 4:
            raise ConfigError(
                f"dataset has only {len(train)} rows; at least 4 are needed to hold some out for evaluation",
                source=source, key="dataset.source", value=data.source,
            )
        parts = train.train_test_split(test_size=data.validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]

    for split, rows in (("validation", validation), ("test", test)):
        lacking = [c for c in columns if rows is not None and c not in rows.column_names]
        if lacking:
            raise ConfigError(
                f"the {split} split lacks column(s) {lacking} that train has", source=source, key="dataset.source",
                value=data.source, allowed=f"its columns: {rows.column_names}",
                hint="Fix: give every split file the same columns.")
    if data.max_train_examples is not None and len(train) > data.max_train_examples:
        train = train.select(range(data.max_train_examples))
    if data.max_eval_examples is not None and len(validation) > data.max_eval_examples:
        validation = validation.select(range(data.max_eval_examples))
    if data.max_eval_examples is not None and test is not None and len(test) > data.max_eval_examples:
        test = test.select(range(data.max_eval_examples))
    return Splits(train.select_columns(columns), validation.select_columns(columns),
                  test.select_columns(columns) if test is not None else None)
