"""Bad input, from YAML files on disk, and how ConfigError reports it."""

from __future__ import annotations

import pickle
from pathlib import Path
import textwrap

import pytest

from spaces import ConfigError
from spaces import load_yaml
from spaces import resolve_space
from spaces import SearchSpace


def _load_space(tmp_path: Path, text: str) -> SearchSpace:
    """What a sweep-file loader does: parse, then resolve `space:` with the file as source."""
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return resolve_space(load_yaml(path)["space"], source=str(path))


def _params(body: str) -> str:
    return "space:\n  params:\n" + textwrap.indent(textwrap.dedent(body), "    ")


# (id, sweep.yaml text, key path, bad value as shown in the message)
BAD_SPACES = [
    ("unknown-key", _params("lr: {type: float, low: 0.1, high: 1, lgo: true}"),
     "space.params.lr.lgo", "'lgo'"),
    ("low-gt-high", _params("lora_r: {type: int, low: 64, high: 4}"),
     "space.params.lora_r.low", "got 64"),
    ("log-low-zero", _params("lr: {type: float, low: 0, high: 1.0e-2, log: true}"),
     "space.params.lr.low", "got 0.0"),
    ("log-low-negative-int", _params("r: {type: int, low: -1, high: 8, log: true}"),
     "space.params.r.low", "got -1"),
    ("step-not-positive", _params("w: {type: float, low: 0, high: 1, step: -0.5}"),
     "space.params.w.step", "got -0.5"),
    ("float-step-with-log", _params("lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}"),
     "space.params.lr.step", "got 0.1"),
    ("int-log-with-step", _params("r: {type: int, low: 4, high: 64, log: true, step: 4}"),
     "space.params.r.step", "got 4"),
    ("step-does-not-divide", _params("w: {type: float, low: 0, high: 0.2, step: 0.15}"),
     "space.params.w.high", "got 0.2"),
    ("int-bound-not-integer", _params("r: {type: int, low: 4.5, high: 64}"),
     "space.params.r.low", "got 4.5"),
    ("bound-is-a-string", _params("lr: {type: float, low: small, high: 1}"),
     "space.params.lr.low", "got 'small'"),
    ("empty-categorical", _params("s: {type: categorical, choices: []}"),
     "space.params.s.choices", "got []"),
    ("duplicate-choice", _params("s: {type: categorical, choices: [linear, cosine, linear]}"),
     "space.params.s.choices[2]", "got 'linear'"),
    ("choice-not-scalar", _params("s: {type: categorical, choices: [a, {b: 1}]}"),
     "space.params.s.choices[1]", "got {'b': 1}"),
    ("condition-unknown-param", _params("r: {type: int, low: 4, high: 8, when: {nonexistent: x}}"),
     "space.params.r.when.nonexistent", "got 'nonexistent'"),
    ("condition-never-matches", _params("""\
        m: {type: categorical, choices: [lora, full]}
        r: {type: int, low: 4, high: 8, when: {m: [lora, qlora]}}
        """), "space.params.r.when.m", "got 'qlora'"),
    ("condition-fixed-mismatch", _params("""\
        m: {type: fixed, value: lora}
        r: {type: int, low: 4, high: 8, when: {m: full}}
        """), "space.params.r.when.m", "got 'full'"),
    ("condition-on-continuous", _params("""\
        lr: {type: float, low: 0.1, high: 1}
        r: {type: int, low: 4, high: 8, when: {lr: 0.5}}
        """), "space.params.r.when.lr", "got 0.5"),
    ("condition-int-off-grid", _params("""\
        b: {type: int, low: 8, high: 32, step: 8}
        r: {type: int, low: 4, high: 8, when: {b: 12}}
        """), "space.params.r.when.b", "got 12"),
    ("missing-type", _params("lr: {low: 0.1, high: 1}"), "space.params.lr", "missing `type`"),
    ("unknown-type", _params("lr: {type: flaot, low: 0.1, high: 1}"),
     "space.params.lr.type", "got 'flaot'"),
    ("param-not-a-mapping", _params("lr: 0.001"), "space.params.lr", "got 0.001"),
    ("derived-unknown-from", _params("a: {type: derived, from: lora_rr}"),
     "space.params.a.from", "got 'lora_rr'"),
    ("derived-non-numeric-times", _params("""\
        r: {type: int, low: 4, high: 8}
        s: {type: categorical, choices: [a, b]}
        a: {type: derived, from: r, times: s}
        """), "space.params.a.times", "got 's'"),
    ("derived-bad-as", _params("""\
        r: {type: int, low: 4, high: 8}
        a: {type: derived, from: r, as: integer}
        """), "space.params.a.as", "got 'integer'"),
    ("cycle", _params("""\
        a: {type: derived, from: b}
        b: {type: derived, from: c}
        c: {type: float, low: 0, high: 1, when: {a: 1}}
        """), "space.params.a", "a -> b -> c -> a"),
    ("self-condition", _params("c: {type: categorical, choices: [1, 2], when: {c: 1}}"),
     "space.params.c.when.c", "got 'c'"),
    ("empty-params", "space:\n  params: {}\n", "space.params", "params is empty"),
    ("unknown-space-key", "space:\n  parms: {}\n  params: {a: {type: fixed, value: 1}}\n",
     "space.parms", "Did you mean 'params'?"),
    ("unknown-preset", "space: lroa\n", "space", "got 'lroa'"),
]


@pytest.mark.parametrize(
    ("text", "key", "shown"), [c[1:] for c in BAD_SPACES], ids=[c[0] for c in BAD_SPACES]
)
def test_bad_space(tmp_path: Path, text: str, key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load_space(tmp_path, text)
    err = info.value
    message = str(err)
    assert message.startswith(f"{tmp_path / 'sweep.yaml'}: {key}: "), message
    assert shown in message, message
    assert err.key == key


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param("space:\n  params:\n    lr: {type: float, low: 1, high: 2\n",
                     "line 4, column 1", id="unclosed-flow-mapping"),
        pytest.param("space:\n  params: 1\n   lr: 2\n", "line 3, column 6", id="bad-indent"),
        pytest.param("space:\n  params:\n\tlr: 2\n", "line 3, column 1", id="tab"),
        pytest.param("space: lora\nspace: lora-quick\n", "duplicate key 'space'",
                     id="duplicate-key"),
        pytest.param("", "file is empty", id="empty"),
        pytest.param("# nothing but a comment\n", "file is empty", id="only-comment"),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value).startswith(f"{path}: ")
    assert needle in str(info.value)


def test_python_tag_is_rejected_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "sweep.yaml"
    path.write_text(f'space: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "!!python/object/apply:os.system" in message and "line 1" in message
    assert not marker.exists()


def test_load_yaml_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read file"):
        load_yaml(tmp_path)  # A directory.
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read file"):
        load_yaml(tmp_path / "latin1.yaml")


def test_load_yaml_reads_exponent_floats(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) would make all but the 2nd of these strings.
    path = tmp_path / "f.yaml"
    path.write_text("a: 1e-5\nb: 1.0e-5\nc: 1.0e5\nd: 3E+2\ne: .5e-3\nf: '1e-5'\ng: 1e\n")
    assert load_yaml(path) == {
        "a": 1e-5, "b": 1e-5, "c": 1e5, "d": 300.0, "e": 5e-4, "f": "1e-5", "g": "1e"
    }


# -- ConfigError itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"source": "sweep.yaml", "key": "space.params.lora_r.low", "value": 64,
             "allowed": "a number <= high", "hint": "Fix: swap them."},
            "sweep.yaml: space.params.lora_r.low: low (64) is greater than high (4); got 64; "
            "allowed: a number <= high. Fix: swap them.",
            id="everything",
        ),
        pytest.param({}, "low (64) is greater than high (4)", id="message-only"),
        pytest.param({"key": "a.b", "value": None},
                     "a.b: low (64) is greater than high (4); got None", id="none-is-a-value"),
        pytest.param({"source": "f.yaml", "allowed": ["a", 1]},
                     "f.yaml: low (64) is greater than high (4); allowed: 'a', 1", id="list"),
    ],
)
def test_config_error_format(kwargs: dict, expected: str) -> None:
    err = ConfigError("low (64) is greater than high (4)", **kwargs)
    assert str(err) == expected
    assert isinstance(err, ValueError)
    assert err.message == "low (64) is greater than high (4)"


def test_config_error_pickles_with_attributes() -> None:
    err = ConfigError("m", source="s.yaml", key="k", value=None, allowed=[1], hint="Fix: x.")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.source, copy.key, copy.value, copy.allowed, copy.hint) == (
        "m", "s.yaml", "k", None, [1], "Fix: x."
    )
    assert str(copy) == str(err)
    assert not pickle.loads(pickle.dumps(ConfigError("m"))).has_value
