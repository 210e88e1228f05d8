"""Packed trials (objectives/engine/packed.py, objectives/adapters/multi_lora.py): K LoRA trials trained at once on one
base model give each trial the eval history it has alone (fp32, CPU, dropout 0), whatever differs between them
among the per-slot params; with dropout their masks are independent; the base model is handed back untouched."""

from __future__ import annotations

import pytest
import torch

from objectives import TrainBudget, get_objective
from objectives.engine.packed import Pack, pack_problems, run_packed
from objectives.adapters.multi_lora import MultiLoRALinear
from tests.objectives.task_examples import MODEL, TASK_DATA

BUDGET = TrainBudget(max_steps=8, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
COMMON = {"peft_method": "lora", "target_modules": "attention", "lora_dropout": 0.0}
# Four trials that differ in everything a slot may set for itself.
SLOTS = [
    {**COMMON, "learning_rate": 3e-3, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
     "lora_r": 4, "lora_alpha": 8, "max_grad_norm": 1.0},
    {**COMMON, "learning_rate": 1e-2, "lr_scheduler_type": "cosine", "warmup_ratio": 0.25, "weight_decay": 0.1,
     "lora_r": 8, "lora_alpha": 8, "max_grad_norm": 0.05},
    {**COMMON, "learning_rate": 5e-4, "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "weight_decay": 0.01,
     "lora_r": 2, "lora_alpha": 16, "max_grad_norm": 0.3},
    {**COMMON, "learning_rate": 2e-3, "lr_scheduler_type": "constant_with_warmup", "warmup_ratio": 0.5,
     "weight_decay": 0.0, "lora_r": 16, "lora_alpha": 4, "max_grad_norm": 10.0},
]
TOLERANCE = 1e-4  # relative, fp32 on CPU


@pytest.fixture(scope="module")
def objective():
    obj = get_objective("causal_lm")(MODEL, TASK_DATA["causal_lm"], BUDGET, seed=0)
    obj.setup()
    return obj


def _alone(objective, params, full: bool = False):
    seen = []
    final = objective.run_trial(params, report=lambda step, m: seen.append((step, m if full else m["eval_loss"])) or False)
    return (seen, final) if full else seen


def test_every_slot_of_a_pack_has_the_eval_history_of_its_trial_alone(objective):
    before = {name: p.detach().clone() for name, p in objective.base_model.named_parameters()}
    seen: list[list[tuple[int, float]]] = [[] for _ in SLOTS]
    finals = run_packed(objective, SLOTS, report=lambda k, step, m: seen[k].append((step, m["eval_loss"])) or False)
    for k, params in enumerate(SLOTS):
        alone = _alone(objective, params)
        assert [s for s, _ in seen[k]] == [s for s, _ in alone] == [2, 4, 6, 8]
        assert [v for _, v in seen[k]] == pytest.approx([v for _, v in alone], rel=TOLERANCE), k
        assert finals[k]["eval_loss"] == pytest.approx(alone[-1][1], rel=TOLERANCE)
    # The slots really trained differently, and the base model is exactly as it was.
    assert len({round(f["eval_loss"], 6) for f in finals}) == len(SLOTS)
    after = dict(objective.base_model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(isinstance(m, MultiLoRALinear) for m in objective.base_model.modules())


def test_a_slot_is_backfilled_at_once_and_the_new_trial_is_a_fresh_trial(objective):
    """Two slots, four trials: the first is pruned at step 2, the second completes at step 8; each slot takes
    the next trial at once, which starts at its own step 0 on the data order's first batch."""
    queue = [SLOTS[2], SLOTS[3]]
    seen: dict[int, list[tuple[int, float]]] = {}

    def report(trial, step, metrics):
        seen.setdefault(trial, []).append((step, metrics["eval_loss"]))
        return trial == 0 and step == 2

    results = run_packed(objective, SLOTS[:2], report=report, next_params=lambda: queue.pop(0) if queue else None)
    assert [(r["steps"], r["pruned"]) for r in results] == [(2, True), (8, False), (8, False), (8, False)]
    for trial, params in enumerate(SLOTS):
        alone = _alone(objective, params)
        expected = alone[:1] if trial == 0 else alone
        assert [s for s, _ in seen[trial]] == [s for s, _ in expected]
        assert [v for _, v in seen[trial]] == pytest.approx([v for _, v in expected], rel=TOLERANCE), trial


def test_slots_draw_independent_dropout_masks(objective):
    params = [{**SLOTS[0], "lora_dropout": 0.5}, {**SLOTS[0], "lora_dropout": 0.5}]
    with Pack(objective, params) as pack:
        layer = next(iter(pack.layers.values()))
        with torch.no_grad():
            for k in range(2):
                layer.lora_B[k].fill_(1.0)  # so that the update shows the dropout mask
        layer.train()
        x = torch.ones(2 * 3, 5, layer.in_features)
        update = layer(x) - layer.base(x)
        assert not torch.allclose(update[:3], update[3:])  # same params, same input: only the masks differ
        layer.eval()
        update = layer(x) - layer.base(x)
        assert torch.allclose(update[:3], update[3:])  # no dropout in evaluation


def test_mixed_ranks_pad_to_the_widest_without_changing_any_slot():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = MultiLoRALinear(base, ranks=[1, 3], alphas=[2, 3], dropouts=[0.0, 0.0])
    with torch.no_grad():
        for k in range(2):
            layer.lora_A[k].normal_()
            layer.lora_B[k].normal_()
    x = torch.randn(2 * 4, 6)
    out = layer(x)
    for k, (rows, scale) in enumerate(((x[:4], 2 / 1), (x[4:], 3 / 3))):
        alone = base(rows) + scale * rows @ layer.lora_A[k].T @ layer.lora_B[k].T
        assert torch.allclose(out[4 * k:4 * (k + 1)], alone, atol=1e-6)
    out.sum().backward()
    assert layer.lora_A[0].grad.shape == (1, 6) and layer.lora_B[1].grad.shape == (5, 3)


def test_params_a_pack_must_share_are_refused():
    problems = pack_problems([{**SLOTS[0], "batch_size": 4}, {**SLOTS[1], "batch_size": 8, "peft_method": "loha"}])
    assert "batch_size differs between slots (4, 8): a pack shares it" in problems
    assert any("peft_method" in p for p in problems)
    assert pack_problems(SLOTS) == []


def test_a_packed_trial_logs_and_reports_the_training_loss_as_a_trial_alone(objective):
    reported, logs = [], []
    [result] = run_packed(objective, SLOTS[1:2], report=lambda k, step, m: reported.append((step, m)) or False,
                          on_log=lambda k, step, entry: logs.append((step, entry)))
    alone, final = _alone(objective, SLOTS[1], full=True)
    for (step, got), (_, want) in zip(reported, alone):
        for name in ("eval_loss", "perplexity", "interval_train_loss", "train_eval_gap"):
            assert got[name] == pytest.approx(want[name], rel=TOLERANCE), (step, name)
    assert result["train_loss"] == pytest.approx(final["train_loss"], rel=TOLERANCE)
    assert [s for s, _ in logs] == [2, 4, 6, 8]  # every logging_steps (here eval_every divides by 2)
    assert all(set(entry) == {"train_loss", "learning_rate"} for _, entry in logs)


class _Killed(Exception):
    """Stands for the process dying between two evaluations."""


def test_a_packed_trial_resumed_from_its_checkpoint_goes_on_as_if_never_stopped(objective, tmp_path):
    """Two trials stop mid-pack (trial 0 after its step-6 checkpoint, trial 1 after its step-4 one), then go on in
    one new pack, in each other's slots: every evaluation and the whole run's train_loss are those of the trial
    alone, and each checkpoint is a PEFT adapter that loads on the base model as the trial was at that step."""
    import copy

    from peft import PeftModel
    from transformers import Trainer, TrainingArguments

    from objectives.engine.checkpoint import latest_checkpoint

    seen: dict[int, list[tuple[int, float]]] = {0: [], 1: []}

    def report(trial, step, metrics):
        if trial == 1 and step == 6:
            raise _Killed
        seen[trial].append((step, metrics["eval_loss"]))
        return False

    folders = [tmp_path / "trial-0", tmp_path / "trial-1"]
    with pytest.raises(_Killed):
        run_packed(objective, SLOTS[:2], report=report, trial_dir=folders.__getitem__, checkpoint_interval_s=0)
    checkpoints = [latest_checkpoint(folder) for folder in folders]
    assert [c.name for c in checkpoints] == ["checkpoint-6", "checkpoint-4"]
    assert [len(list(folder.iterdir())) for folder in folders] == [1, 1]  # the newest only

    # The step-4 checkpoint is the trial's adapter at step 4, as PEFT saves and loads it.
    model = PeftModel.from_pretrained(copy.deepcopy(objective.base_model), checkpoints[1])
    args = TrainingArguments(output_dir=str(tmp_path / "eval"), per_device_eval_batch_size=16, report_to=[])
    loss = Trainer(model=model, args=args, eval_dataset=objective.eval_dataset,
                   data_collator=objective.collator()).evaluate()["eval_loss"]
    assert loss == pytest.approx(seen[1][-1][1], rel=TOLERANCE)

    resumed: dict[int, list[tuple[int, float]]] = {0: [], 1: []}
    results = run_packed(objective, [SLOTS[1], SLOTS[0]], resume_from=[checkpoints[1], checkpoints[0]].__getitem__,
                         report=lambda trial, step, m: resumed[trial].append((step, m["eval_loss"])) or False)
    for trial, (params, before, after) in enumerate([(SLOTS[1], seen[1], resumed[0]), (SLOTS[0], seen[0], resumed[1])]):
        alone, final = _alone(objective, params, full=True)
        history = before + after
        assert [s for s, _ in history] == [s for s, _ in alone] == [2, 4, 6, 8], trial
        assert [v for _, v in history] == pytest.approx([m["eval_loss"] for _, m in alone], rel=TOLERANCE), trial
        assert results[trial]["steps"] == 8
        assert results[trial]["train_loss"] == pytest.approx(final["train_loss"], rel=TOLERANCE)
    assert [s for s, _ in resumed[0]] == [6, 8] and [s for s, _ in resumed[1]] == [8]


def test_a_checkpoint_of_other_params_is_refused(objective, tmp_path):
    run_packed(objective, SLOTS[:1], report=lambda trial, step, m: step == 4, trial_dir=lambda trial: tmp_path,
               checkpoint_interval_s=0)
    with pytest.raises(ValueError, match="not a checkpoint of this packed trial"):
        run_packed(objective, SLOTS[1:2], resume_from=lambda trial: tmp_path / "checkpoint-2")


def test_on_a_half_precision_base_the_slots_train_in_float32_as_peft_keeps_lora():
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(8, 4)).to(torch.bfloat16)
    peft_model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 4)).to(torch.bfloat16),
                                LoraConfig(r=2, target_modules=["0"]))
    layer = MultiLoRALinear(base[0], ranks=[2, 4], alphas=[4, 8], dropouts=[0.0, 0.0])
    peft_dtype = peft_model.base_model.model[0].lora_A["default"].weight.dtype
    assert {p.dtype for p in [*layer.lora_A, *layer.lora_B]} == {peft_dtype} == {torch.float32}
    assert layer(torch.randn(2 * 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_a_paused_packed_trial_ends_with_its_checkpoint_and_its_slot_is_backfilled(objective, tmp_path):
    """PAUSE from a packed trial's report: its checkpoint of that step is written whatever the interval, it ends
    `paused` (not pruned), the next trial takes its slot, and resumed it finishes as the trial alone."""
    from objectives.engine.callback import PAUSE
    from objectives.engine.checkpoint import latest_checkpoint

    seen: dict[int, list[tuple[int, float]]] = {0: [], 1: [], 2: []}
    queue = [SLOTS[2]]

    def report(trial, step, metrics):
        seen[trial].append((step, metrics["eval_loss"]))
        return PAUSE if (trial, step) == (0, 4) else False

    folders = [tmp_path / f"trial-{k}" for k in range(3)]
    results = run_packed(objective, SLOTS[:2], report=report, next_params=lambda: queue.pop() if queue else None,
                         trial_dir=folders.__getitem__, checkpoint_interval_s=3600)
    assert results[0]["paused"] and not results[0]["pruned"] and results[0]["steps"] == 4
    assert not results[1]["paused"] and results[1]["steps"] == 8 and results[2]["steps"] == 8  # backfilled
    assert latest_checkpoint(folders[0]).name == "checkpoint-4"
    resumed: list[tuple[int, float]] = []
    run_packed(objective, SLOTS[:1], resume_from=lambda trial: latest_checkpoint(folders[0]),
               report=lambda trial, step, m: resumed.append((step, m["eval_loss"])) or False)
    alone = _alone(objective, SLOTS[0])
    assert [s for s, _ in seen[0] + resumed] == [s for s, _ in alone] == [2, 4, 6, 8]
    assert [v for _, v in seen[0] + resumed] == pytest.approx([v for _, v in alone], rel=TOLERANCE)
