"""Training stages (gaal_cli/methods/stages.py): planning, fresh optimisers, early stopping, selection."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.stages import WHOLE_RUN, Stage, build_stage_optimizer, plan_stages, scale_lengths
from gaal_cli.training import engine
from gaal_cli.training.engine import build_optimizer, create_method, plan_method_stages, train

runner = CliRunner()


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def test_plan_fits_scales_and_refuses():
    two = [Stage("a", 150, selects=False), Stage("b", 20)]
    plan = plan_stages(two, 500)
    assert [(p.start, p.epochs) for p in plan] == [(1, 150), (151, 20)]  # the run ends with its last stage
    scaled = plan_stages(two, 8)
    assert [(p.start, p.epochs) for p in scaled] == [(1, 7), (8, 1)]
    assert scaled[1].scale == pytest.approx(1 / 20)
    with pytest.raises(GaalError, match="train.stage_fit=scale"):
        plan_stages(two, 8, fit="refuse")
    with pytest.raises(GaalError, match="at least 2 epochs"):
        plan_stages(two, 1)
    assert [(p.start, p.epochs) for p in plan_stages([Stage("a", 3), Stage("b")], 10)] == [(1, 3), (4, 7)]
    assert [p.epochs for p in plan_stages(WHOLE_RUN, 8)] == [8]
    assert scale_lengths([25, 50, 25, 50], 8) == [1, 3, 1, 3] and sum(scale_lengths([1, 1, 9], 5)) == 5


def test_default_di_mml_run_reaches_stage_2():
    config = load_config(overrides=["method=di_mml"])
    assert config.train.epochs == 8
    plan = plan_method_stages(config)
    assert plan[-1].name == "fusion" and plan[-1].start <= 8


def test_one_stage_builds_the_runs_own_optimiser(tiny):
    config = load_config(overrides=[*tiny, "method=concat", "train.scheduler=cosine", "train.optimizer=sgd"])
    method = create_method(config, build_data(config.data, 0))
    (whole,) = plan_method_stages(config)
    opt, sched = build_stage_optimizer(method, whole, config.train)
    ref_opt, ref_sched = build_optimizer(method, config.train)
    assert type(opt) is type(ref_opt) and opt.defaults == ref_opt.defaults
    assert [p for g in opt.param_groups for p in g["params"]] == [p for g in ref_opt.param_groups for p in g["params"]]
    assert type(sched) is type(ref_sched) and sched.T_max == ref_sched.T_max


def test_each_stage_starts_with_a_fresh_optimiser_at_its_base_lr(tmp_path, tiny):
    # the run's StepLR(1, 0.1) would leave stage 2 at 1e-5 under one optimiser for the whole run
    extra = [
        "methods.di_mml.stage_optimizer=null",
        "methods.di_mml.stage1_epochs=2",
        "methods.di_mml.stage2_epochs=1",
        "methods.di_mml.contrast_start_epoch=3",
        "train.epochs=3",
        "train.step_size=1",
    ]
    config = load_config(overrides=[*tiny, "method=di_mml", *extra])
    report = train(config, tmp_path / "run", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-4, 1e-3])
    assert [(s["name"], s["start_epoch"], s["epochs"]) for s in report["stages"]] == [
        ("detached", 1, 2),
        ("fusion", 3, 1),
    ]
    assert report["best_epoch"] == 3  # stage 1 has no fusion head yet: not a candidate
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert bool(state["model"]["fusion_trained"])


@pytest.mark.parametrize(
    "name, extra, epochs_run",
    [
        ("concat", [], 2),  # one stage: patience 1 stops it after one stale epoch
        ("igm", ["methods.igm.stages=4", "methods.igm.stage_epochs=[1]"], 4),  # never before its last stage
        # its patience counts from the last stage's start: one stale epoch there, then it stops
        ("igm", ["methods.igm.stages=2", "methods.igm.stage_epochs=[1, 4]"], 2),
    ],
)
def test_early_stopping_acts_only_in_the_last_stage(tmp_path, tiny, monkeypatch, name, extra, epochs_run):
    monkeypatch.setattr(engine, "monitored", lambda metrics, head: 0.5)  # never improves after epoch 1
    config = load_config(overrides=[*tiny, f"method={name}", "train.epochs=5", "train.patience=1", *extra])
    report = train(config, tmp_path / "run", show_progress=False)
    assert report["epochs_run"] == epochs_run


def test_cli_says_when_stages_are_scaled_and_refuses_when_asked(tmp_path, tiny):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-m", "di_mml", "--out", str(out), *sets([*tiny, "train.epochs=3"])])
    assert result.exit_code == 0, result.output
    assert "shrunk to fit train.epochs" in result.output
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert [(s["start_epoch"], s["declared_epochs"]) for s in stages] == [(1, 150), (3, 20)]

    refused = tmp_path / "refused"
    args = sets([*tiny, "train.epochs=3", "train.stage_fit=refuse"])
    result = runner.invoke(app, ["train", "-m", "di_mml", "--out", str(refused), *args])
    assert result.exit_code == 2, result.output
    assert "train.epochs" in result.output and "Traceback" not in result.output
    assert not refused.exists()


def test_partial_stage_optimizer_block_keeps_the_methods_other_defaults():
    config = load_config(overrides=["method=reconboost", "methods.reconboost.stage_optimizer.lr=0.05"])
    spec = config.method_settings().stage_optimizer
    assert (spec.kind, spec.lr, spec.weight_decay) == ("sgd", 0.05, 5e-4)


def test_a_label_free_stage_never_sees_a_label_and_never_selects(tmp_path, tiny, monkeypatch):
    from gaal_cli.methods import METHODS

    cls = METHODS["concat"].cls
    seen = []
    plain_step = cls.train_step

    def recording_step(self, batch, optimizer):
        seen.append((self.stage.name, batch.label is None))
        if batch.label is None:  # a pretraining step of its own: any loss without labels
            optimizer.zero_grad()
            loss = self.encoders.image(batch.image).pow(2).mean()
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach()}
        return plain_step(self, batch, optimizer)

    monkeypatch.setattr(cls, "train_step", recording_step)
    monkeypatch.setattr(
        cls, "stages", classmethod(lambda c, s, e: (Stage("pretrain", 1, labels=False, selects=False), Stage("train")))
    )
    config = load_config(overrides=[*tiny, "method=concat", "train.epochs=2"])
    report = train(config, tmp_path / "run", show_progress=False)
    assert {name for name, hidden in seen if hidden} == {"pretrain"}
    assert {name for name, hidden in seen if not hidden} == {"train"}
    assert report["best_epoch"] == 2 and report["stages"][0]["labels"] is False
    with pytest.raises(ValueError, match="label-free"):
        Stage("pretrain", 1, labels=False)


def _rates(spec, epochs: int, declared: int | None = None) -> list[float]:
    """The learning rate of each epoch of a one-stage plan built from `spec`, as the engine steps it."""
    from gaal_cli.methods.stages import PlannedStage

    model = torch.nn.Linear(2, 2)
    planned = PlannedStage(0, Stage("s", declared or epochs, optimizer=spec), 1, epochs, declared or epochs, True)
    optimizer, scheduler = build_stage_optimizer(model, planned, None)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_cosine_rate_at_first_middle_and_last_epochs():
    from gaal_cli.methods.stages import StageOptimizer

    spec = StageOptimizer(kind="adam", lr=1e-3, cosine=True, warmup_epochs=10)
    rates = _rates(spec, 110)
    assert rates[0] == 0.0  # pl_bolts' warm-up starts at 0
    assert rates[5] == pytest.approx(1e-3 * 5 / 9)  # linear, the base rate at epoch W - 1
    assert rates[9] == pytest.approx(1e-3) and rates[10] == pytest.approx(1e-3)
    assert rates[60] == pytest.approx(1e-3 * 0.5)  # halfway through the cosine
    assert rates[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    started = _rates(StageOptimizer(kind="adam", lr=1e-3, cosine=True, warmup_epochs=3, warmup_start=0.1), 8)
    assert started[0] == pytest.approx(1e-4) and started[1] == pytest.approx(5.5e-4)


def test_warmup_shrinks_with_a_scaled_stage_and_schedules_are_exclusive():
    from pydantic import ValidationError

    from gaal_cli.methods.stages import StageOptimizer

    rates = _rates(StageOptimizer(kind="adam", lr=1.0, cosine=True, warmup_epochs=10), 50, declared=500)
    assert rates[0] == 0.0 and rates[1] == 1.0  # 10 of 500 declared epochs is 1 of 50: the base rate from epoch 2
    multistep = _rates(StageOptimizer(lr=1.0, milestones=(2, 4), gamma=0.5), 6)
    assert multistep == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    for bad in ({"cosine": True, "step_size": 3}, {"warmup_epochs": 2}, {"milestones": (4, 2)}):
        with pytest.raises(ValidationError):
            StageOptimizer(**bad)
