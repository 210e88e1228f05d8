from __future__ import annotations

from pathlib import Path
import re
from typing import Any

import yaml

from spaces._errors import ConfigError


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with two config-friendly fixes.

    * ``1e-5`` is a float. PyYAML follows YAML 1.1, where a float needs a dot and a signed
      exponent, so ``learning_rate: 1e-5`` would silently be the *string* ``"1e-5"``.
    * A key repeated in one mapping is an error instead of "last one wins", which would
      silently drop e.g. the first of two ``lora_r`` definitions.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # Unhashable key: SafeConstructor reports it with a proper mark.
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"found duplicate key {key!r} "
                    f"(first defined at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# Exponent floats without a dot and/or without an exponent sign; the stock resolver already
# covers the rest, and SafeConstructor's float constructor parses these fine.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; any problem is a :class:`ConfigError` naming the file.

    Only plain YAML is accepted: tags such as ``!!python/object/apply`` are rejected, so
    nothing in a config file is ever executed. Unlike plain ``yaml.safe_load``, ``1e-5``
    is read as a float and a repeated key is an error.

    Example:

        >>> from spaces import load_yaml, preset_path
        >>> doc = load_yaml(preset_path("lora"))
        >>> assert doc["params"]["learning_rate"]["log"] is True
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file ({exc})", source=source) from None

    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader.
    except yaml.MarkedYAMLError as exc:
        raise _marked_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None

    if data is None:
        raise ConfigError("file is empty", source=source)
    return data


def _marked_error(exc: yaml.MarkedYAMLError, source: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
    problem = exc.problem or exc.context or "syntax error"
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.rsplit(" ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
        return ConfigError(
            f"unsupported YAML tag {tag!r} at {where}",
            source=source,
            allowed="plain YAML: mappings, lists, strings, numbers, booleans, null",
            hint="Config files never construct Python objects; remove the tag.",
        )
    message = f"invalid YAML at {where}: {problem}"
    if exc.context and exc.context_mark and exc.problem:
        # The problem mark can be the end of the file; the context says where it started.
        context_at = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        message += f" ({exc.context} at {context_at})"
    return ConfigError(message, source=source)
