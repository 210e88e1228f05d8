"""Every kind of bad input: one clear error (file, key path, value, what is allowed), exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main


def _launch(path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["launch", str(path), *extra])
    out = capsys.readouterr()
    return code, out.err + out.out


def _assert_rejected(path: Path, capsys, *fragments: str, extra: tuple[str, ...] = ()) -> str:
    code, output = _launch(path, capsys, *extra)
    assert code == 2, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in {output!r}"
    runs = path.parent / "runs"
    assert not list(runs.rglob("*.db")) if runs.exists() else True, "a study was written"
    return output


def test_malformed_yaml_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nspace: [lora\nobjective: causal_lm\n")
    _assert_rejected(path, capsys, "broken.yaml", "line")


def test_python_object_tag_is_refused_and_nothing_executes(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    _assert_rejected(path, capsys, "evil.yaml")
    assert not marker.exists()


def test_unknown_key_lists_allowed_keys(write_sweep, capsys):
    path = write_sweep(budget={"max_step": 10})
    _assert_rejected(path, capsys, "sweep.yaml", "budget.max_step", "max_steps")


def test_unknown_top_level_key(write_sweep, capsys):
    path = write_sweep(n_trails=3)
    _assert_rejected(path, capsys, "n_trails", "n_trials")


@pytest.mark.parametrize(
    "param, fragments",
    [
        ({"type": "float", "low": 0.1, "high": 0.01}, ["space.params.bad", "0.1"]),
        ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, ["space.params.bad", "log"]),
        ({"type": "categorical", "choices": []}, ["space.params.bad", "choices"]),
        ({"type": "float", "low": 0.0, "high": 0.1, "when": {"nonexistent": 1}}, ["space.params.bad", "nonexistent"]),
    ],
    ids=["low-above-high", "log-with-zero-low", "empty-categorical", "condition-on-missing-param"],
)
def test_bad_space_parameter(write_sweep, capsys, param, fragments):
    path = write_sweep(space={"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                         "bad": param}})
    _assert_rejected(path, capsys, "sweep.yaml", *fragments)


def test_space_parameter_the_objective_cannot_apply(write_sweep, capsys):
    path = write_sweep(space={"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                         "lora_rank": {"type": "int", "low": 4, "high": 8}}})
    _assert_rejected(path, capsys, "sweep.yaml", "space.params.lora_rank", "lora_r")


def test_missing_dataset_file(write_sweep, capsys, tmp_path):
    path = write_sweep(dataset={"source": str(tmp_path / "nope.jsonl")})
    _assert_rejected(path, capsys, "sweep.yaml", "dataset.source", "nope.jsonl", "does not exist")


def test_empty_dataset_file(write_sweep, capsys, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    path = write_sweep(dataset={"source": str(data)})
    _assert_rejected(path, capsys, "sweep.yaml", "dataset.source", "empty")


def test_dataset_without_needed_columns(write_sweep, capsys, tmp_path):
    data = tmp_path / "wrong.jsonl"
    data.write_text("".join(f'{{"question": "q{i}", "answer": "a{i}"}}\n' for i in range(20)))
    path = write_sweep(dataset={"source": str(data)})
    output = _assert_rejected(path, capsys, "sweep.yaml", "dataset.source", "prompt", "question")
    assert "response" in output


def test_missing_model_path(write_sweep, capsys, tmp_path):
    path = write_sweep(model=str(tmp_path / "no-such-model"))
    _assert_rejected(path, capsys, "sweep.yaml", "model.name_or_path", "no-such-model", "does not exist")


def test_unknown_sampler_and_bad_sampler_argument(write_sweep, capsys):
    _assert_rejected(write_sweep(sampler="annealing"), capsys, "sampler.name", "annealing", "tpe")
    _assert_rejected(write_sweep(sampler={"name": "tpe", "args": {"n_startup": 3}}), capsys,
                     "sampler.args.n_startup", "n_startup_trials")


def test_unknown_pruner(write_sweep, capsys):
    _assert_rejected(write_sweep(pruner="sometimes"), capsys, "pruner.name", "sometimes", "hyperband")


def test_bad_override(write_sweep, capsys):
    _assert_rejected(write_sweep(), capsys, "--set", "budget", extra=("--set", "budget"))
    _assert_rejected(write_sweep(), capsys, "budget.max_steps", extra=("--set", "budget.max_steps=-3"))
    # An explicit eval_every beyond the budget would never report (the default one shrinks to max_steps).
    _assert_rejected(write_sweep(), capsys, "never report", extra=("--set", "budget.eval_every=8"))


def test_debug_shows_the_traceback(write_sweep):
    with pytest.raises(Exception):
        main(["--debug", "launch", str(write_sweep(n_trails=3))])
