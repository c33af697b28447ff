import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import gaal_cli
from gaal_cli.cli import app
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.locks import read_holder
from gaal_cli.sweeps.runner import (
    ablation_rows,
    changed_keys,
    eta_seconds,
    expand,
    load_sweep,
    merge,
    parse_seeds,
    variant_name,
)

runner = CliRunner()
CHECKOUT = str(Path(gaal_cli.__file__).resolve().parents[1])


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def spec(tmp_path, body, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


# ---------------------------------------------------------------- pure parts


def test_expand_is_the_product_first_axis_slowest():
    points = expand({"a": [1, 2], "b.c": ["x", "y", "z"]})
    assert len(points) == 6
    assert points[:3] == [{"a": 1, "b.c": "x"}, {"a": 1, "b.c": "y"}, {"a": 1, "b.c": "z"}]
    assert expand({}) == [{}]


def test_merge_sets_dotted_keys_and_merges_mappings_into_sections():
    tree = {"data": {"name": "synthetic", "batch_size": 64}}
    merge(tree, "data", {"name": "dvm", "image_size": 128})
    merge(tree, "methods.gaal.epsilon", 0.1)
    assert tree == {
        "data": {"name": "dvm", "batch_size": 64, "image_size": 128},
        "methods": {"gaal": {"epsilon": 0.1}},
    }


def test_variant_name_fills_dotted_keys_and_refuses_bad_rules():
    resolved = {"method": "gaal", "methods": {"gaal": {"lambda_image": 0.5, "cgs": True, "epsilon": -0.01}}}
    rule = "{method}_li{methods.gaal.lambda_image}_cgs-{methods.gaal.cgs}_eps{methods.gaal.epsilon}"
    assert variant_name(rule, resolved) == "gaal_li0.5_cgs-true_eps-0.01"
    with pytest.raises(GaalError, match="methods.gaal.nope"):
        variant_name("{methods.gaal.nope}", resolved)
    with pytest.raises(GaalError, match="folder"):
        variant_name("{method}/x", resolved)


def test_parse_seeds_lists_and_ranges():
    assert parse_seeds("2022-2024,7") == [2022, 2023, 2024, 7]
    assert parse_seeds(None) is None
    with pytest.raises(GaalError, match="--seeds"):
        parse_seeds("a-b")


def test_eta_spreads_the_mean_run_time_over_workers():
    assert eta_seconds([], 3, [], 2) is None
    # 4 left x 10 s + a running run 4 s into its 10 s, on 2 workers
    assert eta_seconds([8.0, 12.0], 4, [4.0], 2) == pytest.approx((40 + 6) / 2)
    assert eta_seconds([10.0], 0, [15.0], 2) == 0.0


def test_ablation_rows_switch_components_on_cumulatively():
    assert ablation_rows(["cgs", "ugg"]) == [
        {"cgs": False, "ugg": False},
        {"cgs": True, "ugg": False},
        {"cgs": True, "ugg": True},
    ]


def test_changed_keys_names_differences_at_any_depth():
    assert changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == ["a.c", "a.d"]


# ---------------------------------------------------------------- loading a sweep


def test_load_sweep_validates_every_point_and_names_the_bad_one(tmp_path):
    path = spec(
        tmp_path,
        "sweep:\n  grid:\n    methods.gaal.lambda_image: [0.5, 1.5]\n  variant: li{methods.gaal.lambda_image}\n",
    )
    with pytest.raises(GaalError) as err:
        load_sweep(path, results=tmp_path / "results")
    text = str(err.value)
    assert "methods.gaal.lambda_image" in text and "lambda_image=1.5" in text and str(path) in text
    assert not (tmp_path / "results").exists()


def test_load_sweep_refuses_two_runs_in_one_folder(tmp_path):
    path = spec(tmp_path, "sweep:\n  grid:\n    methods.gaal.epsilon: [0.0, 0.1]\n")  # variant {method} only
    with pytest.raises(GaalError, match="sweep.variant"):
        load_sweep(path, results=tmp_path)


def test_load_sweep_rejects_unknown_sweep_keys(tmp_path):
    path = spec(tmp_path, "sweep:\n  seed: [1]\n")
    with pytest.raises(GaalError, match="sweep.seed"):
        load_sweep(path, results=tmp_path)


def test_run_folders_seeds_and_overrides(tmp_path):
    path = spec(
        tmp_path,
        "name: exp\ndata: {image_size: 32}\nsweep:\n  seeds: [1, 2]\n"
        "  grid:\n    data: [{image_size: 16, batch_size: 8}, {image_size: 24}]\n  variant: px{data.image_size}\n",
    )
    sweep = load_sweep(path, ["train.epochs=3"], seeds=[5], results=tmp_path / "r")
    assert [r.folder for r in sweep.runs] == [tmp_path / "r/exp/px16/seed5", tmp_path / "r/exp/px24/seed5"]
    first, second = (r.config for r in sweep.runs)
    assert (first.data.image_size, first.data.batch_size, first.train.epochs, first.seed) == (16, 8, 3, 5)
    assert second.data.batch_size == 128  # the axis value merges into the section, keeping the rest


def test_dry_run_lists_runs_and_unknown_experiment_lists_names(tmp_path, tiny):
    path = spec(tmp_path, "name: dry\nsweep:\n  seeds: [1, 2]\n  grid:\n    method: [gaal, concat]\n")
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--results", str(tmp_path / "r"), *sets(tiny)])
    assert result.exit_code == 0, result.output
    assert result.output.count("new") == 4 and "dry: 4 runs" in result.output
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["sweep", "no_such_experiment"])
    assert result.exit_code == 2 and "synthetic/lambda" in result.output


def test_ablate_builds_table2_rows_from_components(tmp_path, tiny):
    path = spec(tmp_path, "name: abl\nsweep:\n  seeds: [1]\n  variant: cgs-{methods.gaal.cgs}_ugg-{methods.gaal.ugg}\n")
    args = ["ablate", "cgs", "ugg", "--from", str(path), "--dry-run", "--results", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for row in ("cgs-false_ugg-false", "cgs-true_ugg-false", "cgs-true_ugg-true"):
        assert row in result.output
    result = runner.invoke(app, ["ablate", "cgs", "--dataset", "dvm", "--from", str(path), "--dry-run"])
    assert result.exit_code == 2 and "dvm" in result.output
    result = runner.invoke(app, ["ablate", "cgs", "nope", "--from", str(path), "--dry-run"])
    assert result.exit_code == 2 and "methods.gaal.nope" in result.output


# ---------------------------------------------------------------- running sweeps (real processes)


def sweep_process(args, tmp_path, log_name):
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    log = open(tmp_path / log_name, "w")
    # own session: the test can kill the sweep with every run it started, like a lost machine
    return subprocess.Popen(
        [sys.executable, "-m", "gaal_cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def wait_for(condition, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("timed out")


def epochs_logged(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def test_failed_run_is_reported_and_the_sweep_goes_on(tmp_path, tiny):
    path = spec(
        tmp_path,
        "name: fail\nmethod: concat\nsweep:\n  grid:\n    model.image_backbone: [resnet_nope, test_resnet]\n"
        "  variant: '{model.image_backbone}'\n",
    )
    results = tmp_path / "r"
    args = ["sweep", str(path), "--results", str(results), *sets([*tiny, "train.epochs=1"])]
    process = sweep_process(args, tmp_path, "sweep.log")
    assert process.wait(timeout=900) == 1
    output = (tmp_path / "sweep.log").read_text()
    assert "1 trained" in output and "1 failed" in output and "resnet_nope" in output
    assert (results / "fail/test_resnet/seed2022/DONE").exists()
    assert not (results / "fail/resnet_nope/seed2022/DONE").exists()
    assert "resnet_nope" in (results / "fail/resnet_nope/seed2022/train.log").read_text()


def test_killed_sweep_reruns_to_each_run_exactly_once(tmp_path, tiny):
    """SIGKILL one run mid-training, then the whole sweep mid-resume; reruns finish the job."""
    epochs = 25
    path = spec(tmp_path, "name: kill\nsweep:\n  seeds: [1, 2]\n  grid:\n    method: [gaal, concat]\n")
    results = tmp_path / "r"
    args = ["sweep", str(path), "--workers", "2", "--results", str(results)]
    args += sets([*tiny, f"train.epochs={epochs}", "train.patience=100"])
    folders = [results / "kill" / m / f"seed{s}" for s in (1, 2) for m in ("gaal", "concat")]

    # 1. kill one run's process after its first epoch: the sweep reports it and finishes the rest
    sweep = sweep_process(args, tmp_path, "a.log")
    victim = wait_for(lambda: next((f for f in folders if epochs_logged(f) and not (f / "DONE").exists()), None))
    os.kill(read_holder(victim).pid, signal.SIGKILL)
    assert sweep.wait(timeout=900) == 1, (tmp_path / "a.log").read_text()
    assert "killed by signal 9" in (tmp_path / "a.log").read_text()
    others = [f for f in folders if f != victim]
    assert all((f / "DONE").exists() for f in others) and not (victim / "DONE").exists()
    finished_at = {f: (f / "report.json").stat().st_mtime_ns for f in others}

    # 2. rerun, and kill the whole sweep (its process group) once the victim has resumed
    resume_from = len(epochs_logged(victim))
    sweep = sweep_process(args, tmp_path, "b.log")
    wait_for(lambda: len(epochs_logged(victim)) > resume_from + 1)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=60)
    assert not (victim / "DONE").exists()

    # 3. rerun to the end: only the victim trains; the finished runs are not touched
    sweep = sweep_process(args, tmp_path, "c.log")
    assert sweep.wait(timeout=900) == 0, (tmp_path / "c.log").read_text()
    assert "1 trained, 3 already done, 0 failed" in (tmp_path / "c.log").read_text()
    assert {f: (f / "report.json").stat().st_mtime_ns for f in others} == finished_at
    assert epochs_logged(victim) == list(range(1, epochs + 1)), "each epoch logged once despite two kills"

    result = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(runs) == 4 and not runs.duplicated(["method", "seed"]).any()
    table = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert sorted(table["method"]) == ["concat", "gaal"] and table["n"].tolist() == [2, 2]


def test_a_run_locked_by_another_process_is_left_to_it(tmp_path, tiny):
    import fcntl

    from gaal_cli.sweeps.runner import run_sweep, statuses

    sweep = load_sweep(spec(tmp_path, "name: busy\n"), tiny, results=tmp_path / "r")
    folder = sweep.runs[0].folder
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run launched by another sweep holds it
        assert statuses(sweep) == [(sweep.runs[0], "running")]
        outcome = run_sweep(sweep)
    assert outcome.busy == sweep.runs and not outcome.trained and not outcome.failed
    assert not (folder / "config.yaml").exists()


def test_a_finished_run_of_another_config_is_refused(tmp_path, tiny):
    from gaal_cli.runs.folder import RunFolder
    from gaal_cli.sweeps.runner import run_sweep, statuses

    path = spec(tmp_path, "name: stale\n")
    old = load_sweep(path, tiny, results=tmp_path / "r")
    run = old.runs[0]
    folder = RunFolder(run.folder)
    run.folder.mkdir(parents=True)
    (run.folder / "config.yaml").write_text(yaml.safe_dump(run.config.resolved()))
    folder.finish({"timings": {"total_seconds": 1.0}})
    assert statuses(old) == [(run, "done")]
    # where a run trains does not change what it computes; its settings do
    assert (
        statuses(load_sweep(path, [*tiny, "data.cache=false", "data.num_workers=2"], results=tmp_path / "r"))[0][1]
        == "done"
    )
    changed = load_sweep(path, [*tiny, "train.lr=0.01"], results=tmp_path / "r")
    assert statuses(changed)[0][1] == "stale"
    with pytest.raises(GaalError, match="train.lr"):
        run_sweep(changed)
    # a run on another dataset in the same folder is never offered for deletion
    other = {**run.config.resolved(), "data": {**run.config.resolved()["data"], "name": "elsewhere.csv"}}
    (run.folder / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(GaalError, match="another dataset") as refused:
        run_sweep(old)
    assert "delete the folder" not in refused.value.message


def test_a_teacher_trains_first_and_kills_leave_every_run_finished_once(tmp_path, tiny):
    """A KD student listed before its teacher waits for it; the teacher is SIGKILLed mid-way (the
    student is then reported not started), and reruns finish each run exactly once."""
    epochs = 8
    path = spec(
        tmp_path,
        "name: dep\nmethods:\n  kd: {teacher: '{results}/{name}/concat/seed{seed}'}\n"
        "sweep:\n  seeds: [1]\n  grid:\n    method: [kd, concat]\n",
    )
    results = tmp_path / "r"
    args = ["sweep", str(path), "--workers", "2", "--results", str(results)]
    args += sets([*tiny, f"train.epochs={epochs}", "train.patience=100"])
    teacher, student = results / "dep/concat/seed1", results / "dep/kd/seed1"

    # 1. a free worker does not start the student while its teacher trains; kill the teacher
    sweep = sweep_process(args, tmp_path, "a.log")
    wait_for(lambda: epochs_logged(teacher))
    assert not student.exists(), "the student started before its teacher finished"
    os.kill(read_holder(teacher).pid, signal.SIGKILL)
    assert sweep.wait(timeout=900) == 1
    log = (tmp_path / "a.log").read_text()
    assert "killed by signal 9" in log and "its dependency" in log and "failed" in log
    assert not student.exists() and not (teacher / "DONE").exists()

    # 2. rerun: the teacher resumes and finishes, then the student trains from it
    sweep = sweep_process(args, tmp_path, "b.log")
    assert sweep.wait(timeout=900) == 0, (tmp_path / "b.log").read_text()
    assert "2 trained, 0 already done, 0 failed" in (tmp_path / "b.log").read_text()
    assert epochs_logged(teacher) == list(range(1, epochs + 1)), "each teacher epoch logged once"
    assert epochs_logged(student) == list(range(1, epochs + 1))
    record = json.loads((student / "report.json").read_text())["dependencies"]["methods.kd.teacher"]
    assert record["path"] == str(teacher / "checkpoint.pt") and record["method"] == "concat"

    # 3. nothing left to do; then a retrained teacher makes the finished student stale
    sweep = sweep_process(args, tmp_path, "c.log")
    assert sweep.wait(timeout=900) == 0
    assert "0 trained, 2 already done" in (tmp_path / "c.log").read_text()
    checkpoint = teacher / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # as a retrained teacher would differ
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and str(student) in result.output and "dependency" in result.output


def test_a_finished_run_is_stale_when_its_dependency_changed_not_when_it_is_gone(tmp_path, tiny):
    import hashlib

    from gaal_cli.runs.folder import RunFolder
    from gaal_cli.sweeps.runner import statuses

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"first teacher")
    path = spec(tmp_path, f"name: st\nmethod: kd\nmethods:\n  kd: {{teacher: '{teacher}'}}\n")
    sweep = load_sweep(path, tiny, results=tmp_path / "r")
    run = sweep.runs[0]
    assert run.needs == ()  # a checkpoint file is no run to wait for
    run.folder.mkdir(parents=True)
    (run.folder / "config.yaml").write_text(yaml.safe_dump(run.config.resolved()))
    record = {"path": str(teacher), "sha256": hashlib.sha256(b"first teacher").hexdigest()}
    RunFolder(run.folder).finish({"dependencies": {"methods.kd.teacher": record}})
    assert statuses(sweep) == [(run, "done")]
    teacher.write_bytes(b"retrained teacher")
    assert statuses(sweep) == [(run, "stale")]
    teacher.unlink()  # results committed without their checkpoints are still current
    assert statuses(sweep) == [(run, "done")]


def test_a_key_added_since_a_run_finished_is_no_change_at_its_default():
    from gaal_cli.config import Config
    from gaal_cli.runs.folder import result_changes

    today = Config(method="kd").resolved()
    saved = json.loads(json.dumps(today))
    del saved["model"]["pretrained"], saved["methods"]["kd"]["alpha"]  # keys gaal gained since
    assert result_changes(saved, today) == []
    today["model"]["pretrained"] = True
    today["methods"]["kd"]["alpha"] = 0.5
    assert sorted(result_changes(saved, today)) == ["methods.kd.alpha", "model.pretrained"]
    saved["train"]["lr"] = 0.5  # a key the run had, changed: always a change
    assert "train.lr" in result_changes(saved, Config(method="kd").resolved())
