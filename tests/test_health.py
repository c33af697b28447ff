"""Run health (gaal_cli/training/health.py): each finding fires on a hand-made dead run and on a barely
alive one (the cases the fixed thresholds before issue 28 let through), not on a healthy one; a
plateaued pretraining whose head learned is a note, not a finding; a real tiny run records
`health`; the console warns; `gaal report` marks flagged cells and computes the findings of older
run folders from their logs."""

import json
import math

import pandas as pd
import pytest
import torch
import yaml
from scipy import stats as sp
from test_report import fake_run
from torch import nn
from typer.testing import CliRunner

from gaal_cli.analysis.report import write_report
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
    as (report, metrics, steps); `changes` replace parts of it. 1,000 test samples, 800 of class 0:
    the majority rate is 0.8."""
    heads = {"multi": {"acc": 0.9, "bal_acc": 0.8}}
    report = {
        "method": "mmcl",
        "metrics": {"val": heads, "test": heads},
        "data": {"classes": 2, "class_counts": {"val": [80, 20], "test": [800, 200]}},
        "features": {"image": 0.4, "tabular": 0.3},
        "features_random_init": {"image": 0.5, "tabular": 0.4},
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


def with_test(multi):
    return {"metrics": {"val": {"multi": multi}, "test": {"multi": multi}}}


def test_a_healthy_run_has_no_finding_and_every_check_made():
    report, metrics, steps = a_run()
    result = assess(report, metrics, steps, {}, batch_size=128)
    assert result.findings == [] and result.unchecked == {} and result.notes == []


@pytest.mark.parametrize(
    ("right", "flagged"),
    [(800, True), (802, True), (840, False)],  # dead: the majority rate; barely alive: 2 samples more; healthy
)
def test_majority_class_is_a_binomial_test_on_the_test_size(right, flagged):
    multi = {"acc": right / 1000, "bal_acc": 0.8}
    found = assess(*a_run(report=with_test(multi)), {}, batch_size=128).findings
    assert [f["name"] for f in found] == (["majority_class"] if flagged else [])
    p = sp.binomtest(right, 1000, 0.8, alternative="greater").pvalue
    assert (p > T.alpha) == flagged
    if flagged:
        assert found[0]["values"] == {"head": "multi", "acc": right / 1000, "majority_rate": 0.8, "n": 1000,
                                      "p": round(p, 6)}  # fmt: skip


@pytest.mark.parametrize(("above", "flagged"), [(0.0, True), (0.02, True), (0.2, False)])
def test_balanced_accuracy_at_chance_is_judged_against_a_bound_for_the_test_size(above, flagged):
    # 800 and 200 test samples: a head answering regardless of the label reaches 0.5 + up to
    # 1.645 · sqrt(1/3200 + 1/800) / 2 = 0.0325 by chance; chance + 0.02 (barely alive) is inside
    chance, bound = health.chance_bound([800, 200], T.alpha)
    assert chance == 0.5 and bound == pytest.approx(sp.norm.ppf(0.95) * math.sqrt(1 / 3200 + 1 / 800) / 2)
    multi = {"acc": 0.9, "bal_acc": 0.5 + above}
    assert names(*a_run(report=with_test(multi))) == (["chance_balanced_accuracy"] if flagged else [])


def test_every_head_a_table_prints_is_checked():
    heads = {"multi": {"acc": 0.9, "bal_acc": 0.8}, "image": {"acc": 0.85, "bal_acc": 0.7},
             "tabular": {"acc": 0.8, "bal_acc": 0.5}}  # fmt: skip
    found = assess(*a_run(report={"metrics": {"val": heads, "test": heads}}), {}, batch_size=128).findings
    assert {(f["name"], f["values"]["head"]) for f in found} == {
        ("majority_class", "tabular"), ("chance_balanced_accuracy", "tabular"),
    }  # fmt: skip
    # a run tested on one modality only: that head alone is what the table prints
    report, metrics, steps = a_run(report={"metrics": {"val": heads, "test": heads}, "inputs_at_test": ["image"]})
    assert health.printed_heads(report) == ["image"]
    assert assess(report, metrics, steps, {}, batch_size=128).findings == []
    # which numbers each finding speaks about: accuracy against the majority rate, the class-averaged
    # metrics against chance, an encoder's findings its own head and the fused one
    majority, chance = found if found[0]["name"] == "majority_class" else found[::-1]
    assert health.affected_heads(majority, health.HEADS, "acc") == ["tabular"]
    assert health.affected_heads(majority, health.HEADS, "bal_acc") == []
    assert health.affected_heads(chance, health.HEADS, "f1") == ["tabular"]
    collapsed = {"name": "collapsed_features", "values": {"encoder": "image"}}
    assert health.affected_heads(collapsed, health.HEADS, "acc") == ["multi", "image"]


def test_a_plateaued_pretraining_whose_head_learned_is_a_note_not_a_finding():
    # TIP-like: the contrastive pretraining ends on ln(batch), the fused head then learns (0.886)
    report, metrics, steps = a_run(report={"method": "tip", **with_test({"acc": 0.886, "bal_acc": 0.88})})
    plateau = [{**s, "loss_itc": math.log(64) - 0.001} for s in steps]
    result = assess(report, metrics, plateau, {}, batch_size=64)
    assert result.findings == []
    (note,) = result.notes
    assert note["name"] == "contrastive_plateau" and note["values"]["ln_batch"] == pytest.approx(math.log(64))
    # the same plateau with a head that learned nothing: the head's findings say so, the note stays
    dead = assess(*a_run(report={"method": "tip", **with_test({"acc": 0.8, "bal_acc": 0.5})})[:2], plateau, {},
                  batch_size=64)  # fmt: skip
    assert {f["name"] for f in dead.findings} == {"majority_class", "chance_balanced_accuracy"} and dead.notes


def test_contrastive_plateau_fires_at_ln_batch_at_the_end_of_pretraining():
    report, metrics, steps = a_run()
    plateau = [{**s, "loss": math.log(128) - 0.01} if s["epoch"] == 2 else s for s in steps]
    (note,) = assess(report, metrics, plateau, {}, batch_size=128).notes
    assert note["name"] == "contrastive_plateau" and note["values"]["stage"] == "pretrain"
    # a short last batch (lower ln(batch)) does not move the median below the plateau
    plateau[-2] = {**plateau[-2], "loss": math.log(56)}
    assert len(assess(report, metrics, plateau, {}, batch_size=128).notes) == 1
    # the healthy run's pretraining ended at 3.0, far below ln(128) = 4.85
    assert assess(report, metrics, steps, {}, batch_size=128).notes == []
    result = assess(*a_run(report={"method": "tip"}), {}, batch_size=64)
    assert "loss_itc" in result.unchecked["contrastive_plateau"]


def _teacher(folder, right):
    test = {"tabular": {"acc": right / 1000, "bal_acc": 0.5 if right <= 802 else 0.7}}
    report = {"metrics": {"val": test, "test": test}, "inputs_at_test": ["tabular"], "method": "tabular",
              "experiment": "exp", "data": {"class_counts": {"test": [800, 200]}}}  # fmt: skip
    (folder / "report.json").write_text(json.dumps(report))


@pytest.mark.parametrize(("right", "flagged"), [(800, True), (802, True), (900, False)])
def test_dependency_at_chance_reads_its_run_folder_from_a_moved_results_tree(tmp_path, right, flagged):
    teacher = tmp_path / "copy" / "results" / "exp" / "tabular" / "seed1"
    teacher.mkdir(parents=True)
    _teacher(teacher, right)
    recorded = {"methods.kd.teacher": {"path": "results/exp/tabular/seed1/checkpoint.pt"}}
    deps = dependency_reports(recorded, [tmp_path / "elsewhere", tmp_path / "copy" / "results"])
    assert names(*a_run(), deps=deps) == (["dependency_at_chance"] if flagged else [])
    missing = dependency_reports({"methods.kd.teacher": {"path": "nowhere/checkpoint.pt"}}, [tmp_path])
    report, metrics, steps = a_run()
    assert "nowhere" in assess(report, metrics, steps, missing, batch_size=128).unchecked["dependency_at_chance"]


@pytest.mark.parametrize(("spread", "flagged"), [(0.0, True), (0.004, True), (0.35, False)])
def test_collapsed_features_are_measured_against_a_randomly_initialised_encoder(spread, flagged):
    # dead: one point for every sample; barely alive: 1 % of the random copy's 0.5 (the old fixed 1e-3
    # passed it); healthy: as much as a random initialisation
    changed = a_run(report={"features": {"image": spread, "tabular": 0.3}})
    assert names(*changed) == (["collapsed_features"] if flagged else [])
    assert spread < T.collapse_fraction * 0.5 if flagged else spread > T.collapse_fraction * 0.5


@pytest.mark.parametrize(("last", "flagged"), [(0.0, True), (1e-6, True), (0.05, False)])
def test_encoder_not_training_is_measured_against_its_first_steps_gradient(last, flagged):
    # the tabular encoder received 0.2 on the run's first step; its last pretraining epoch: nothing
    # (dead), 1e-6 (barely alive: the old check needed exactly 0), a quarter of its start (healthy)
    report, metrics, steps = a_run()
    changed = [{**s, "grad_tabular": last} if s["epoch"] == 2 else s for s in steps]
    found = assess(report, metrics, changed, {}, batch_size=128).findings
    assert [f["name"] for f in found] == (["encoder_not_training"] if flagged else [])
    if flagged:
        assert found[0]["values"] == {"stage": "pretrain", "encoder": "tabular", "epoch": 2, "max_grad_norm": last,
                                      "first_grad_norm": 0.2, "steps": 3}  # fmt: skip
    # the probe stage trains no encoder: its zero encoder gradients are what it should have
    assert names(report, metrics, steps) == []


def test_older_records_say_which_checks_were_not_made():
    report, metrics, steps = a_run()
    old = {k: v for k, v in report.items() if k not in ("features", "features_random_init")}
    old["data"] = {"classes": 2, "counts": {"test": 1000}}
    old["stages"] = [{k: v for k, v in s.items() if k != "encoders"} for s in report["stages"]]
    result = assess(old, metrics, steps, {}, batch_size=128)
    assert set(result.unchecked) == {
        "majority_class", "chance_balanced_accuracy", "collapsed_features", "encoder_not_training",
    }  # fmt: skip
    assert "assumes 2 equal classes of 1000 samples" in result.unchecked["chance_balanced_accuracy"]
    assert result.findings == []
    # the counts another run on the same data recorded make the majority check possible
    borrowed = assess(old, metrics, steps, {}, batch_size=128, test_counts=[800, 200])
    assert "majority_class" not in borrowed.unchecked and "chance_balanced_accuracy" not in borrowed.unchecked


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
    state = torch.random.get_rng_state()
    spread, initial = feature_spread(method, Batch, ("image", "tabular"))
    assert torch.equal(torch.random.get_rng_state(), state)  # the random copy drew from a forked generator
    assert spread["tabular"] == 0.0 and spread["image"] > T.collapse_fraction * initial["image"]
    # the reference is a randomly initialised copy: the zeroed encoder's copy varies again
    assert initial["tabular"] > 0.1 and (method.encoders.tabular.weight == 0).all()


def test_a_real_run_records_health_and_a_dead_one_warns_on_the_console(tmp_path, tiny, monkeypatch):
    out = tmp_path / "run"
    report = train(load_config(overrides=[*tiny, "method=concat"]), out, show_progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["health"] == report["health"] and isinstance(saved["health"], list)
    assert saved["health_unchecked"] == {}  # a new run records what every check needs
    assert set(saved["features"]) == set(saved["features_random_init"]) == {"image", "tabular"}
    assert saved["health_notes"] == []
    assert [sum(saved["data"]["class_counts"][s]) for s in ("train", "val", "test")] == [96, 48, 48]
    assert saved["stages"][0]["encoders"] == ["image", "tabular"]
    steps = RunFolder(out).read_steps()
    assert all(s["grad_image"] > 0 and s["grad_tabular"] > 0 for s in steps)

    # a level no accuracy can reach makes every head dead: a warning paragraph, exit code unchanged
    monkeypatch.setattr(health, "THRESHOLDS", Thresholds(alpha=1e-12))
    dead = tmp_path / "dead"
    result = runner.invoke(app, ["train", "-m", "concat", "--out", str(dead), "-q", *sets(tiny)])
    assert result.exit_code == 0, result.output
    assert "warning: a head of this run may have learned nothing" in result.output
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
    for key in ("health", "health_unchecked", "health_notes", "features", "features_random_init"):
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
    assert "†: a run of the cell has a run-health finding on that number" in table
    runs = (out / "runs.csv").read_text()
    assert "encoder_not_training" in runs
    text = (out / "health.md").read_text()
    line = next(line for line in text.splitlines() if "exp/image/seed0" in line)
    assert "encoder_not_training" in line
    # its test class counts come from the concat run on the same data and seed; the collapse check has
    # no randomly initialised reference in its records
    unchecked = next(line for line in text.splitlines() if line.startswith("Not checked"))
    assert "`collapsed_features` in 1 runs" in unchecked and "majority_class" not in unchecked


def test_report_marks_a_head_below_the_model_of_one_modality_alone(tmp_path):
    root = tmp_path / "results"
    # the embedded set's default test split; image alone 0.80, table alone 0.60: concat's Multi 0.70
    # and its image head 0.74 are below the image model by far more than the test size allows, GAAL's
    # 0.80 and 0.795 are not
    accs = {"image": (None, 0.80, None), "tabular": (None, None, 0.60), "concat": (0.70, 0.74, 0.60),
            "gaal": (0.80, 0.795, 0.61)}  # fmt: skip
    for method, values in accs.items():
        fake_run(root, "t1", method, 1, [f"method={method}"], values)
    write_report(root, tmp_path / "out")
    table = (tmp_path / "out" / "table1.md").read_text().split("\n\n")[0]
    concat = next(line for line in table.splitlines() if line.startswith("| concat |"))
    gaal = next(line for line in table.splitlines() if line.startswith("| gaal |"))
    assert concat.count("↓") == 2 and "↓" not in gaal
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("method")
    assert runs.loc["concat", "below_one_modality_heads"] == "multi image"
    assert "below_one_modality" in (tmp_path / "out" / "health.md").read_text()
