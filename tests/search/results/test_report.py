"""Importances, the HTML/PNG report and the dashboard, on real studies written by real (tiny) sweeps."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

from conftest import TINY_SWEEP, deep_merge
from search.backends import get_backend
from search.results.dashboard import dashboard_app, run_dashboard, shown_storage
from search.results.report import compute_importances, importance_table, write_report
from search.sweep import load_sweep
from search.store.storage import open_storage
from spaces import ConfigError


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice",
         "contour_lr_rank"]
SENTINEL = "pw-SENTINEL-4711"

# lr × rank searched as numbers, a param present only with the cosine schedule, and target modules
# whose trials fail (tests/search/fault_objectives.py RaisesForAllLinear). Seed 1 gives complete trials with and without warmup_ratio,
# and failed ones; test_mixed_study_has_what_it_is_meant_to_cover checks that.
MIXED_SPACE = {"params": {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "lora_r": {"type": "int", "low": 4, "high": 16},
    "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
    "target_modules": {"type": "categorical", "choices": ["attention_qv", "all_linear"]},
}}
SWEEPS = {
    # lora-quick with an eager pruner: complete and pruned trials, 4 searched params.
    "quick": {"name": "quick", "space": "lora-quick", "n_trials": 8,
              "pruner": {"name": "percentile", "args": {"percentile": 25.0, "n_startup_trials": 2}}},
    "mixed": {"name": "mixed", "space": MIXED_SPACE, "n_trials": 7, "seed": 1,
              "objective": "tests.search.fault_objectives:RaisesForAllLinear"},
    # One completed trial, and no lora_r: importances and the contour cannot be drawn.
    "single": {"name": "single", "n_trials": 1,
               "space": {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}}}},
}


@pytest.fixture(scope="module")
def storages(tmp_path_factory) -> dict[str, str]:
    """Run every sweep in SWEEPS once; name -> the storage URL its study is in."""
    root = tmp_path_factory.mktemp("report-studies")
    urls = {}
    for name, changes in SWEEPS.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {"output_dir": str(root / "runs" / name), **changes})))
        sweep = load_sweep(path)
        get_backend("optuna")(sweep).run()
        urls[name] = sweep.storage_url
    return urls


@pytest.fixture(scope="module")
def studies(storages) -> dict[str, optuna.Study]:
    return {name: optuna.load_study(study_name=name, storage=open_storage(url)) for name, url in storages.items()}


@pytest.fixture(scope="module")
def reports(studies, tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    return {name: write_report(study, root / name) for name, study in studies.items()}


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE,))


def _markup_outside_scripts(page: str) -> str:
    # plotly.js is inlined and its code holds URL strings (map attributions, the logo link) that the
    # page never loads; what matters is the markup: the <script ...> tags themselves, links, images.
    return re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", page, flags=re.S | re.I)


# ---------------------------------------------------------------------------------- importances


def test_mixed_study_has_what_it_is_meant_to_cover(studies):
    trials = studies["mixed"].get_trials()
    states = [t.state for t in trials]
    assert TrialState.FAIL in states and states.count(TrialState.COMPLETE) >= 3, states
    with_warmup = [("warmup_ratio" in t.params) for t in _complete(studies["mixed"])]
    assert any(with_warmup) and not all(with_warmup), "warmup_ratio must be conditional among complete trials"
    assert TrialState.PRUNED in [t.state for t in studies["quick"].get_trials()]


@pytest.mark.parametrize("evaluator", ["fanova", "mdi", "ped_anova"])
def test_importances_sum_to_one_and_cover_the_searched_params(studies, evaluator):
    study = studies["quick"]
    importances = compute_importances(study, evaluator=evaluator)
    assert set(importances) == {"learning_rate", "lr_scheduler_type", "lora_r", "lora_dropout"}
    assert math.fsum(importances.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in importances.values())
    assert list(importances.values()) == sorted(importances.values(), reverse=True)
    assert compute_importances(study, evaluator=evaluator) == importances  # seeded: reproducible


def test_only_ped_anova_rates_a_conditional_param(studies):
    study = studies["mixed"]
    assert "warmup_ratio" in compute_importances(study, evaluator="ped_anova")
    fanova = compute_importances(study)
    assert "warmup_ratio" not in fanova and {"learning_rate", "lora_r"} <= set(fanova)


def test_importances_need_two_completed_trials(studies):
    with pytest.raises(ConfigError, match="needs at least 2 completed trials; this study has 1"):
        compute_importances(studies["single"])


def test_unknown_evaluator_is_a_config_error(studies):
    with pytest.raises(ConfigError, match="unknown importance evaluator") as err:
        compute_importances(studies["quick"], evaluator="shap")
    assert "ped_anova" in str(err.value)


def test_nothing_that_varied_is_a_config_error():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) if t.suggest_categorical("peft", ["lora"]) else 0, n_trials=3)
    study_const = optuna.create_study()
    for value in (1.0, 2.0, 3.0):
        study_const.enqueue_trial({"peft": "lora"})
        study_const.optimize(lambda t, v=value: v + len(t.suggest_categorical("peft", ["lora", "ia3"])), n_trials=1)
    with pytest.raises(ConfigError, match="no searched parameter took more than one value"):
        compute_importances(study_const)
    same = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    same.optimize(lambda t: 0 * t.suggest_float("x", 0, 1), n_trials=3)
    with pytest.raises(ConfigError, match="every completed trial has the same value"):
        compute_importances(same)
    assert set(compute_importances(study)) == {"x", "peft"}


def test_fanova_points_to_ped_anova_when_only_conditional_params_varied():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        # "peft" is in every trial but never changes; "lr" varies but is only in odd trials:
        # fANOVA and MDI rate only params present in every trial, PED-ANOVA rates "lr" too.
        study.enqueue_trial({"peft": "lora"})
        study.optimize(lambda t: len(t.suggest_categorical("peft", ["lora", "ia3"]))
                       + (t.suggest_float("lr", 0, 1) if t.number % 2 else 0.5), n_trials=1)
    with pytest.raises(ConfigError, match="ped_anova"):
        compute_importances(study, evaluator="fanova")
    assert "lr" in compute_importances(study, evaluator="ped_anova")


def test_importance_table_lists_every_param_with_its_value(studies):
    console = Console(record=True, width=100)
    console.print(importance_table(studies["quick"], evaluator="ped_anova"))
    text = console.export_text()
    for name, value in compute_importances(studies["quick"], evaluator="ped_anova").items():
        assert re.search(rf"{name}\s*│\s*{value:.3f}", text), text
    assert f"ped_anova, {len(_complete(studies['quick']))} completed trials" in text


# --------------------------------------------------------------------------------------- report


@pytest.mark.parametrize("name", ["quick", "mixed"])
def test_every_plot_is_a_valid_png(reports, name):
    from matplotlib import image

    files = reports[name]
    assert [p.name for p in files.images] == [f"{plot}.png" for plot in PLOTS]
    assert files.skipped == {}
    for path in files.images:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
        pixels = image.imread(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100, path


def test_html_is_one_offline_page_with_every_plot(reports, studies):
    page = reports["quick"].html.read_text(encoding="utf-8")
    assert f"Study {studies['quick'].study_name}" in page and "eval_loss (minimize)" in page
    for path in reports["quick"].images:
        assert "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() in page, path.name
    assert page.count('class="plotly-graph-div"') == len(PLOTS)
    assert page.count("* plotly.js v") == 1  # the library is inlined once, not per figure
    markup = _markup_outside_scripts(page)
    external = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", markup, flags=re.I)
    assert external == [], external
    assert "<link" not in markup.lower()


def test_pruned_trials_are_in_the_learning_curves(reports, studies):
    pruned = [t.number for t in studies["quick"].get_trials(states=(TrialState.PRUNED,))]
    page = reports["quick"].html.read_text(encoding="utf-8")
    block = page[page.index('id="plotly-intermediate_values"'):page.index('id="plotly-param_importances"')]
    for number in pruned:
        assert f'"name":"trial {number} (pruned)"' in block
    winner = studies["quick"].best_trial.number
    assert f'"name":"trial {winner} (winner)"' in block


def test_failed_trials_and_their_reasons_are_reported(reports, studies):
    page = reports["mixed"].html.read_text(encoding="utf-8")
    failed = studies["mixed"].get_trials(states=(TrialState.FAIL,))
    assert "Failed trials" in page
    for trial in failed:
        assert f"trial {trial.number}" in page
    assert "this trial&#x27;s target_modules (all_linear) broke its set-up" in page or \
        "this trial's target_modules (all_linear) broke its set-up" in page


def test_too_small_a_study_still_gets_a_report_with_notes(studies, tmp_path):
    stale = tmp_path / "contour_lr_rank.png"
    stale.write_bytes(PNG_SIGNATURE)  # from an earlier report of another study: must not survive
    files = write_report(studies["single"], tmp_path)
    assert set(files.skipped) == {"param_importances.png", "contour_lr_rank.png"}
    assert "needs at least 2 completed trials; this study has 1" in files.skipped["param_importances.png"]
    assert files.skipped["contour_lr_rank.png"] == "lora_r was not searched"
    assert "contour_lr_rank.png: lora_r was not searched" in files.notes
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.written)
    page = files.html.read_text(encoding="utf-8")
    assert "lora_r was not searched" in page and "this study has 1" in page
    assert page.count('class="plotly-graph-div"') == len(PLOTS) - 2


def test_user_text_is_escaped(tmp_path):
    study = optuna.create_study(study_name="<script>alert('name')</script>",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    choices = ["<b>x</b>", "a&b", "</script><img src=x onerror=alert(2)>"]
    study.optimize(lambda t: len(t.suggest_categorical("prompt", choices)) + t.suggest_float("x", 0, 1), n_trials=6)
    study.enqueue_trial({"prompt": "a&b", "x": 0.5}, user_attrs={"fail_reason": "<img src=x onerror=alert(1)>"})
    study.optimize(lambda t: t.suggest_float("x", 0, 1) / 0, n_trials=1, catch=(ZeroDivisionError,))
    page = write_report(study, tmp_path).html.read_text(encoding="utf-8")
    markup = _markup_outside_scripts(page)
    assert "<script>alert" not in markup and "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in markup
    assert "<img src=x" not in markup and "<b>x</b>" not in markup
    assert "</script><img" not in page  # inside the Plotly figures' JSON too


def test_a_study_with_many_trials_keeps_its_learning_curves_readable(tmp_path):
    from matplotlib import image

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        for step in range(1, 5):
            trial.report(lr * 10 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return lr

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    study.optimize(objective, n_trials=40)
    import matplotlib

    style = dict(matplotlib.rcParams)
    files = write_report(study, tmp_path, evaluator="ped_anova")
    assert dict(matplotlib.rcParams) == style  # Optuna's plt.style.use("ggplot") does not leak out
    assert files.skipped == {"contour_lr_rank.png": "lora_r was not searched"}
    height, width = image.imread(tmp_path / "intermediate_values.png").shape[:2]
    assert height < 800 and width < 1000  # no legend of 40 entries



def test_unknown_evaluator_fails_before_writing(studies, tmp_path):
    with pytest.raises(ConfigError, match="unknown importance evaluator"):
        write_report(studies["quick"], tmp_path / "out", evaluator="shap")
    assert not (tmp_path / "out").exists()


def test_missing_plotting_libraries_say_which_extra_to_install(studies, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'ftsweep\[report\]'"):
        write_report(studies["quick"], tmp_path)


# ------------------------------------------------------------------------------------ dashboard


def test_dashboard_app_lists_the_study(storages):
    app = dashboard_app(storages["quick"])
    environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"]
    names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
    assert names == ["quick"]


def test_dashboard_app_reads_a_sqlite_storage(storages, tmp_path):
    # Sweeps write journal files by default; a SQLite database (older sweeps, `storage: sqlite:///...`) works too.
    database = f"sqlite:///{tmp_path / 'sweeps.db'}"
    optuna.copy_study(from_study_name="quick", from_storage=open_storage(storages["quick"]), to_storage=database)
    app = dashboard_app(database)
    environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    body = b"".join(app(environ, lambda s, headers, exc_info=None: None))
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["quick"]


def test_run_dashboard_prints_the_url_and_serves_the_storage(storages, monkeypatch):
    import optuna_dashboard

    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda *a, **kw: calls.append((a, kw)))
    out = io.StringIO()
    storage = storages["quick"]
    run_dashboard(storage, console=Console(file=out, width=300))
    assert len(calls) == 1 and calls[0][1] == {"host": "127.0.0.1", "port": 8080}
    (served,), _ = calls[0]  # the journal file, opened as Optuna's JournalStorage
    assert [s.study_name for s in optuna.get_all_study_summaries(served)] == ["quick"]
    assert "http://127.0.0.1:8080/" in out.getvalue() and "quick" in out.getvalue()


def test_run_dashboard_refuses_an_empty_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(url)  # creates the schema, no study
    out = io.StringIO()
    with pytest.raises(ConfigError, match="holds no study"):
        run_dashboard(url, console=Console(file=out))
    assert out.getvalue() == ""


def test_run_dashboard_does_not_create_a_missing_sqlite_file(tmp_path):
    with pytest.raises(ConfigError, match="no database file"):
        run_dashboard(f"sqlite:///{tmp_path / 'typo.db'}", console=Console(file=io.StringIO()))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", [
    f"sqlite://sweeper:{SENTINEL}@/{{tmp}}/x.db",  # SQLite takes no password: fails before serving
    f"postgresql://sweeper:{SENTINEL}@127.0.0.1:1/optuna",  # nothing listens (or no driver)
    f"postgresql://sweeper:{SENTINEL}@db:not-a-port/optuna",  # SQLAlchemy cannot even parse it
])
def test_no_password_is_ever_printed(url, tmp_path):
    url = url.replace("{tmp}", str(tmp_path).lstrip("/"))
    out = io.StringIO()
    with pytest.raises(ConfigError) as err:
        run_dashboard(url, console=Console(file=out))
    assert SENTINEL not in str(err.value) and SENTINEL not in out.getvalue()
    assert "sweeper:***@" in str(err.value)
    assert SENTINEL not in shown_storage(url)
