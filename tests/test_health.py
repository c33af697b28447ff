"""Run health (gaal_cli/training/health.py): each finding fires on a hand-made dead run and not on a healthy
one; a real tiny run records `health`; the console warns; `gaal report` marks flagged cells and
computes the findings of older run folders from their logs."""

import json
import math

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.runs.folder import RunFolder
from gaal_cli.training import health
from gaal_cli.training.engine import train
from gaal_cli.training.health import GradientFlow, Thresholds, assess, dependency_reports, feature_spread

runner = CliRunner()
T = Thresholds()


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def a_run(**changes):
    """The records of a healthy two-stage run (a contrastive pretraining, then a labelled stage),
    as (report, metrics, steps); `changes` replace parts of it."""
    val = {"multi": {"acc": 0.85, "bal_acc": 0.6}}
    report = {
        "method": "mmcl",
        "metrics": {"val": val, "test": val},
        "data": {"classes": 2, "class_counts": {"val": [80, 20]}},
        "features": {"image": 0.4, "tabular": 0.3},
        "stages": [
            {"name": "pretrain", "start_epoch": 1, "epochs": 2, "labels": False, "encoders": ["image", "tabular"]},
            {"name": "probe", "start_epoch": 3, "epochs": 1, "labels": True, "encoders": []},
        ],
        "inputs_at_test": ["image", "tabular"],
    }
    metrics = [{"epoch": e} for e in (1, 2, 3)]
    steps = [
        {"epoch": e, "step": i, "loss": 3.0 if e == 2 else 4.8, "grad_image": 0.5, "grad_tabular": 0.2}
        for e in (1, 2)
        for i in (1, 2, 3)
    ] + [{"epoch": 3, "step": 1, "loss": 0.7, "grad_image": 0.0, "grad_tabular": 0.0}]
    report.update(changes.pop("report", {}))
    return report, changes.pop("metrics", metrics), changes.pop("steps", steps)


def names(report, metrics, steps, deps=None, batch=128):
    found = assess(report, metrics, steps, deps or {}, batch_size=batch).findings
    return sorted(f["name"] for f in found)


def test_a_healthy_run_has_no_finding_and_every_check_made():
    report, metrics, steps = a_run()
    result = assess(report, metrics, steps, {}, batch_size=128)
    assert result.findings == [] and result.unchecked == {}


def test_majority_class_fires_at_the_majority_rate_not_above_it():
    dead = {"multi": {"acc": 0.80, "bal_acc": 0.6}}
    report, metrics, steps = a_run(report={"metrics": {"val": dead}})
    (found,) = assess(report, metrics, steps, {}, batch_size=128).findings
    assert found["name"] == "majority_class"
    assert found["values"] == {"head": "multi", "acc": 0.8, "majority_rate": 0.8}
    above = {"multi": {"acc": 0.81, "bal_acc": 0.6}}  # one more correct answer than the majority
    assert names(*a_run(report={"metrics": {"val": above}})) == []


def test_balanced_accuracy_at_chance_fires_within_its_margin():
    at_chance = {"multi": {"acc": 0.9, "bal_acc": 0.5 + T.chance_margin}}
    assert names(*a_run(report={"metrics": {"val": at_chance}})) == ["chance_balanced_accuracy"]
    above = {"multi": {"acc": 0.9, "bal_acc": 0.5 + 2 * T.chance_margin}}
    assert names(*a_run(report={"metrics": {"val": above}})) == []


def test_the_scored_head_is_the_one_read_at_test():
    val = {"multi": {"acc": 0.9, "bal_acc": 0.9}, "image": {"acc": 0.5, "bal_acc": 0.5}}
    report, metrics, steps = a_run(report={"metrics": {"val": val}, "inputs_at_test": ["image"]})
    found = assess(report, metrics, steps, {}, batch_size=128).findings
    assert {f["values"]["head"] for f in found} == {"image"}


def test_contrastive_plateau_fires_at_ln_batch_at_the_end_of_pretraining():
    report, metrics, steps = a_run()
    plateau = [{**s, "loss": math.log(128) - 0.01} if s["epoch"] == 2 else s for s in steps]
    (found,) = assess(report, metrics, plateau, {}, batch_size=128).findings
    assert found["name"] == "contrastive_plateau"
    assert found["values"]["stage"] == "pretrain" and found["values"]["ln_batch"] == pytest.approx(math.log(128))
    # a short last batch (lower ln(batch)) does not move the median below the plateau
    plateau[-2] = {**plateau[-2], "loss": math.log(56)}
    assert names(report, metrics, plateau) == ["contrastive_plateau"]
    # the healthy run's pretraining ended at 3.0, far below ln(128) = 4.85
    assert names(report, metrics, steps) == []


def test_contrastive_plateau_reads_tips_itc_loss_and_says_when_it_cannot():
    report, metrics, steps = a_run(report={"method": "tip"})
    at_chance = [{**s, "loss_itc": math.log(64)} for s in steps]
    assert names(report, metrics, at_chance, batch=64) == ["contrastive_plateau"]
    assert names(report, metrics, [{**s, "loss_itc": 2.0} for s in steps], batch=64) == []
    result = assess(report, metrics, steps, {}, batch_size=64)
    assert "loss_itc" in result.unchecked["contrastive_plateau"]


def test_dependency_at_chance_reads_its_run_folder_from_a_moved_results_tree(tmp_path):
    teacher = tmp_path / "copy" / "results" / "exp" / "tabular" / "seed1"
    teacher.mkdir(parents=True)
    dead = {"metrics": {"val": {"tabular": {"acc": 0.8, "bal_acc": 0.5}}}, "inputs_at_test": ["tabular"]}
    (teacher / "report.json").write_text(json.dumps({**dead, "method": "tabular", "experiment": "exp"}))
    recorded = {"methods.kd.teacher": {"path": "results/exp/tabular/seed1/checkpoint.pt"}}
    deps = dependency_reports(recorded, [tmp_path / "elsewhere", tmp_path / "copy" / "results"])
    assert names(*a_run(), deps=deps) == ["dependency_at_chance"]
    alive = {"metrics": {"val": {"tabular": {"acc": 0.9, "bal_acc": 0.7}}}, "inputs_at_test": ["tabular"]}
    (teacher / "report.json").write_text(json.dumps(alive))
    assert names(*a_run(), deps=dependency_reports(recorded, [tmp_path / "copy"])) == []
    missing = dependency_reports({"methods.kd.teacher": {"path": "nowhere/checkpoint.pt"}}, [tmp_path])
    report, metrics, steps = a_run()
    assert "nowhere" in assess(report, metrics, steps, missing, batch_size=128).unchecked["dependency_at_chance"]


def test_collapsed_features_fire_below_the_spread_threshold():
    assert names(*a_run(report={"features": {"image": T.collapse_spread / 10, "tabular": 0.3}})) == [
        "collapsed_features"
    ]
    assert names(*a_run(report={"features": {"image": T.collapse_spread * 10, "tabular": 0.3}})) == []


def test_encoder_not_training_fires_only_for_an_encoder_its_stage_trains():
    report, metrics, steps = a_run()
    dead = [{**s, "grad_tabular": 0.0} if s["epoch"] == 2 else s for s in steps]
    (found,) = assess(report, metrics, dead, {}, batch_size=128).findings
    assert found["name"] == "encoder_not_training"
    assert found["values"] == {"stage": "pretrain", "encoder": "tabular", "epoch": 2, "max_grad_norm": 0.0, "steps": 3}
    # the probe stage trains no encoder: its zero encoder gradients are what it should have
    assert names(report, metrics, steps) == []
    # one step with a gradient in the last epoch: it trains
    dead[3] = {**dead[3], "grad_tabular": 0.01}
    assert names(report, metrics, dead) == []


def test_older_records_say_which_checks_were_not_made():
    report, metrics, steps = a_run()
    old = {k: v for k, v in report.items() if k != "features"}
    old["data"] = {"classes": 2}
    old["stages"] = [{k: v for k, v in s.items() if k != "encoders"} for s in report["stages"]]
    result = assess(old, metrics, steps, {}, batch_size=128)
    assert set(result.unchecked) == {"majority_class", "collapsed_features", "encoder_not_training"}
    assert result.findings == []


def test_gradient_flow_sees_every_backward_pass_and_an_encoder_cut_off():
    class Encoders(nn.Module):
        def __init__(self):
            super().__init__()
            self.image, self.tabular = nn.Linear(3, 2), nn.Linear(3, 2)

    method = nn.Module()
    method.encoders = Encoders()
    flow = GradientFlow(method, ("image", "tabular"))
    x = torch.ones(4, 3)
    method.encoders.image(x).sum().backward()
    method.encoders.zero_grad(set_to_none=True)  # a second pass of an alternating step
    method.encoders.tabular(x).detach().sum()  # cut off: no gradient reaches the tabular encoder
    grads = flow.take()
    assert float(grads["grad_image"]) > 0 and float(grads["grad_tabular"]) == 0.0
    assert float(flow.take()["grad_image"]) == 0.0  # reset after each step
    flow.close()
    method.encoders.image(x).sum().backward()
    assert float(flow.take()["grad_image"]) == 0.0


def test_feature_spread_is_zero_for_a_constant_encoder():
    class Batch:
        image, tabular = torch.randn(8, 3), torch.randn(8, 3)

    method = nn.Module()
    method.encoders = nn.Module()
    method.encoders.image = nn.Linear(3, 4)
    method.encoders.tabular = nn.Linear(3, 4)
    nn.init.zeros_(method.encoders.tabular.weight)  # every row maps to the bias
    spread = feature_spread(method, Batch, ("image", "tabular"))
    assert spread["image"] > T.collapse_spread and spread["tabular"] < T.collapse_spread


def test_a_real_run_records_health_and_a_dead_one_warns_on_the_console(tmp_path, tiny, monkeypatch):
    out = tmp_path / "run"
    report = train(load_config(overrides=[*tiny, "method=concat"]), out, show_progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["health"] == report["health"] and isinstance(saved["health"], list)
    assert saved["health_unchecked"] == {}  # a new run records what every check needs
    assert set(saved["features"]) == {"image", "tabular"}
    assert [sum(saved["data"]["class_counts"][s]) for s in ("train", "val", "test")] == [96, 48, 48]
    assert saved["stages"][0]["encoders"] == ["image", "tabular"]
    steps = RunFolder(out).read_steps()
    assert all(s["grad_image"] > 0 and s["grad_tabular"] > 0 for s in steps)

    # a margin no accuracy can clear makes the run dead: a warning paragraph, exit code unchanged
    monkeypatch.setattr(health, "THRESHOLDS", Thresholds(chance_margin=1.0))
    dead = tmp_path / "dead"
    result = runner.invoke(app, ["train", "-m", "concat", "--out", str(dead), "-q", *sets(tiny)])
    assert result.exit_code == 0, result.output
    assert "warning: this run may have learned nothing" in result.output
    assert "chance_balanced_accuracy" in result.output
    findings = json.loads((dead / "report.json").read_text())["health"]
    assert "chance_balanced_accuracy" in [f["name"] for f in findings]


def test_report_marks_flagged_cells_and_checks_older_runs_from_their_logs(tmp_path, tiny):
    root = tmp_path / "results"
    for method in ("concat", "image"):
        config = load_config(overrides=[*tiny, f"method={method}", "name=exp"])
        train(config, root / "exp" / method / "seed0", show_progress=False)
    # the image run as a run folder from before run health, whose logs show an encoder without gradient
    old = RunFolder(root / "exp" / "image" / "seed0")
    report = old.read_report()
    for key in ("health", "health_unchecked", "features"):
        report.pop(key)
    report["data"].pop("class_counts")
    report["stages"] = [{k: v for k, v in s.items() if k != "encoders"} for s in report["stages"]]
    old.file("report.json").write_text(json.dumps(report))
    steps = [{**{k: v for k, v in s.items() if k != "grad_image"}, "gnorm_image": 0.0} for s in old.read_steps()]
    old.file("steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    config = yaml.safe_load(old.file("config.yaml").read_text())
    assert config["method"] == "image"

    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "table1.md").read_text()
    image_row = next(line for line in table.splitlines() if line.startswith("| image "))
    assert "†" in image_row
    assert "†: at least one of the cell's runs has a run-health finding" in table
    runs = (out / "runs.csv").read_text()
    assert "encoder_not_training" in runs
    text = (out / "health.md").read_text()
    line = next(line for line in text.splitlines() if "exp/image/seed0" in line)
    assert "encoder_not_training" in line
    assert "`collapsed_features` in 1 runs" in text and "`majority_class` in 1 runs" in text
