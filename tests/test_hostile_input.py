"""Hostile and careless input (issue 10): crafted checkpoints, non-finite numbers, YAML bombs,
out-of-range seeds, broken run folders, sweeps over missing data or unwritable folders.

Each bad input must give exit code 2 (1 for a sweep that went on to its summary), one paragraph
without a traceback, no planted code run and no half-written file.

The fourth round (issue 29) has a file per group beside this one: tests/test_hostile_links.py
(writes outside the run folder: planted links, FIFO locks, outputs onto inputs, names that become
paths), tests/test_hostile_results.py (wrong results shown as right) and
tests/test_hostile_failures.py (hangs and tracebacks, escaped text, column roles)."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY
from fake_runs import dependency_overrides
from raw_datasets import make_table
from typer.testing import CliRunner

import gaal_cli
from gaal_cli.cli import app
from gaal_cli.config import YAML_MAX_BYTES, load_config
from gaal_cli.data import make_loader
from gaal_cli.methods import METHODS
from gaal_cli.runs.folder import RunFolder, default_run_folder, load_state, to_json
from gaal_cli.training.engine import save_epoch, setup

runner = CliRunner()
CHECKOUT = str(Path(gaal_cli.__file__).resolve().parents[1])


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def tree(folder):
    """Every file under `folder` with its size and modification time: what a command changed."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for needle in needles:
        assert needle in result.output, result.output


class Planted:
    """Unpickling this creates the file `target`: stands for any code a crafted pickle runs."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def crafted(path, planted):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "config": {}, "epoch": 1, "payload": Planted(planted)}, path)


# ---------------------------------------------------------------- checkpoints


def test_eval_of_a_crafted_checkpoint_runs_no_code(tmp_path):
    planted = tmp_path / "PLANTED"
    crafted(tmp_path / "run" / "checkpoint.pt", planted)
    result = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert_refused(result, "checkpoint.pt", "plain data")
    assert not planted.exists()


def test_train_over_a_crafted_last_pt_runs_no_code_and_writes_nothing(tmp_path, tiny):
    planted, out = tmp_path / "PLANTED", tmp_path / "run"
    crafted(out / "last.pt", planted)
    before = tree(out)
    result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets(tiny)])
    assert_refused(result, "last.pt", "--restart")
    assert not planted.exists() and tree(out) == before


def test_truncated_last_pt_names_the_restart_and_restart_trains(tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    buffer = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "config": {}}, buffer)
    (out / "last.pt").write_bytes(buffer.read_bytes()[:300])
    before = tree(out)
    args = ["train", "-m", "concat", "--out", str(out), "-q", *sets([*tiny, "train.epochs=1"])]
    result = runner.invoke(app, args)
    assert_refused(result, "last.pt", "--restart")
    assert tree(out) == before
    result = runner.invoke(app, [*args, "--restart"])
    assert result.exit_code == 0, result.output
    assert (out / "DONE").exists() and not (out / "last.pt").exists()


def test_a_crafted_weights_file_runs_no_code(tmp_path):
    planted, weights = tmp_path / "PLANTED", tmp_path / "weights.pth"
    torch.save({"conv1.weight": Planted(planted)}, weights)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--out", str(out), *sets(["model.pretrained=true", f"model.weights={weights}"])]
    )
    assert_refused(result, str(weights), "model.weights")
    assert not planted.exists() and not out.exists()


def test_a_checkpoint_with_a_bad_config_is_one_paragraph(tmp_path):
    file = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"train": {"lr": float("inf")}}}, file)
    assert_refused(runner.invoke(app, ["eval", str(file)]), str(file), "train.lr")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_what_the_engine_saves_loads_with_weights_only(name, tiny, tmp_path, teacher_checkpoint):
    """Every method, optimiser and scheduler: last.pt and checkpoint.pt hold tensors and plain data."""
    index = sorted(METHODS).index(name)
    optimizer_kind = ("adam", "adamw", "sgd")[index % 3]
    scheduler_kind = ("step", "cosine", "none")[index // 3 % 3]
    config = load_config(
        overrides=[
            *tiny,
            f"method={name}",
            f"train.optimizer={optimizer_kind}",
            f"train.scheduler={scheduler_kind}",
            *dependency_overrides(name, teacher_checkpoint),  # KD's teacher, FMR's fixed model
        ]
    )
    session = setup(config)  # the first stage's optimiser and scheduler, as a run starts
    session.method.train()
    session.method.on_epoch_start(1)
    batch = next(iter(make_loader(session.data.train, 32, shuffle=True, seed=0)))
    session.method.train_step(batch, session.optimizer)
    session.scheduler.step()
    run = RunFolder(tmp_path)
    record = {"epoch": 1, "best": True}
    save_epoch(session, run, record, [], 0.5, {"score": 0.5, "epoch": 1, "stale": 0})
    for file in ("last.pt", "checkpoint.pt"):
        state = load_state(run.file(file))
        assert state["config"] == config.resolved()
    assert run.resumable(config.resolved()) is not None


# ---------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=.inf", "train.lr"),
        ("train.weight_decay=.nan", "train.weight_decay"),
        ("model.dropout=.nan", "model.dropout"),
        ("data.synthetic.tabular_noise=-.inf", "data.synthetic.tabular_noise"),
        ("methods.gaal.epsilon=.nan", "methods.gaal.epsilon"),
        ("methods.gaal.lambda_image=.inf", "methods.gaal.lambda_image"),
    ],
)
def test_non_finite_settings_are_refused_before_anything_is_written(tmp_path, override, key):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--set", override])
    assert_refused(result, key, "finite")
    assert not out.exists()


def test_non_finite_setting_in_an_experiment_file_names_the_file(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  lr: .inf\n")
    result = runner.invoke(app, ["train", str(exp), "--out", str(tmp_path / "run")])
    assert_refused(result, str(exp), "train.lr")
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step(tmp_path, tiny, monkeypatch):
    from gaal_cli.training import engine

    original = engine.create_method

    def diverging(config, data, *args):
        method = original(config, data, *args)
        step = method.train_step
        calls = {"n": 0}

        def train_step(batch, optimizer):
            stats = step(batch, optimizer)
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 2 (3 steps an epoch), step 2
                stats["loss"] = torch.tensor(float("nan"))
            return stats

        method.train_step = train_step
        return method

    monkeypatch.setattr(engine, "create_method", diverging)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-m", "concat", "--out", str(out), "-q", *sets([*tiny, "train.epochs=3"])])
    assert_refused(result, "epoch 2, step 2", "nan")
    # resumable: epoch 1 kept, nothing of epoch 2, no report
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "last.pt").exists() and not (out / "report.json").exists()
    assert load_state(out / "last.pt")["epoch"] == 1


def test_json_files_are_strict_a_nan_is_null(tmp_path):
    text = to_json({"acc": float("nan"), "f1": [1.0, float("inf")], "n": 2})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}")) == {
        "acc": None,
        "f1": [1.0, None],
        "n": 2,
    }
    run = RunFolder(tmp_path)
    run.log_epoch({"epoch": 1, "train": {"loss": float("nan")}})
    run.finish({"metrics": {"test": {"multi": {"acc": float("-inf")}}}})
    for name in ("metrics.jsonl", "report.json"):
        assert "NaN" not in run.file(name).read_text() and "Infinity" not in run.file(name).read_text()
    assert run.read_report()["metrics"]["test"]["multi"]["acc"] is None


# ---------------------------------------------------------------- YAML bombs and bad files


def laughs(levels, leaf='"lol"'):
    """Nested aliases: 9**levels leaves from a few hundred bytes."""
    lines = [f"a0: &a0 [{','.join([leaf] * 9)}]"]
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntrain: {{epochs: *a{levels - 1}}}\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        (laughs(6), "expands"),
        (laughs(12), "expands"),  # 9**12 leaves: never expanded
        ("a: &a [*a]\n", "contains itself"),
        ("a: " + "[" * 500 + "]" * 500 + "\n", "nested"),
        ("x: '" + "y" * (YAML_MAX_BYTES + 1) + "'\n", "bytes"),
    ],
)
def test_yaml_work_is_bounded(tmp_path, text, needle):
    exp = tmp_path / "bomb.yaml"
    exp.write_text(text)
    result = runner.invoke(app, ["train", str(exp), "--out", str(tmp_path / "run")])
    assert_refused(result, needle, str(exp))
    assert len(result.output) < 2000 and not (tmp_path / "run").exists()


def test_set_value_work_is_bounded(tmp_path):
    value = "[&a [1,1,1,1,1,1,1,1,1]"
    for name, prev in zip("bcdef", "abcde"):
        value += f", &{name} [{','.join([f'*{prev}'] * 9)}]"
    value += "]"
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", f"train.epochs={value}"])
    assert_refused(result, "expands", "--set")
    assert len(result.output) < 2000 and not (tmp_path / "run").exists()


def test_a_file_that_is_not_utf8_is_one_paragraph(tmp_path):
    exp = tmp_path / "bad.yaml"
    exp.write_bytes(b"train:\n  epochs: \xff\xfe\n")
    result = runner.invoke(app, ["train", str(exp), "--out", str(tmp_path / "run")])
    assert_refused(result, "UTF-8", str(exp))


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed, needle", [(2**64, "4294967295"), (2**32, "4294967295"), (-1, "greater than")])
def test_out_of_range_seed_is_refused_before_anything_is_written(tmp_path, seed, needle):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--seed", str(seed)])
    assert_refused(result, "seed", needle)
    assert not out.exists()


@pytest.mark.parametrize("seeds", ["0-1000000000000", "18446744073709551616", "5-3", "1,-2", "0-20000"])
def test_sweep_seeds_out_of_range_or_huge_are_refused(tmp_path, seeds):
    result = runner.invoke(app, ["sweep", "synthetic/lambda", "--seeds", seeds, "--results", str(tmp_path / "r")])
    assert_refused(result, "--seeds")
    assert not (tmp_path / "r").exists()


def test_sweep_file_seed_out_of_range_names_the_file(tmp_path):
    exp = tmp_path / "s.yaml"
    exp.write_text(f"name: s\nsweep:\n  seeds: [1, {2**64}]\n")
    result = runner.invoke(app, ["sweep", str(exp), "--dry-run", "--results", str(tmp_path / "r")])
    assert_refused(result, str(exp), "sweep.seeds")


# ---------------------------------------------------------------- run folders


def test_default_folder_names_the_dataset_safely():
    config = load_config()
    assert default_run_folder(config).as_posix() == "results/quickstart/synthetic/gaal/seed2022"
    table = load_config(overrides=["data.name=../../data/my cars.csv"])
    folder = default_run_folder(table).as_posix()  # the stem, and a hash of where and what the table is
    assert re.fullmatch(r"results/quickstart/my_cars-[0-9a-f]{8}/gaal/seed2022", folder), folder
    hidden = load_config(overrides=["data.name=/x/..csv"])
    assert ".." not in default_run_folder(hidden).parts


def fake_finished(folder, overrides):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(load_config(overrides=overrides).resolved()))
    (folder / "report.json").write_text("{}")
    (folder / "DONE").write_text("")


def test_train_never_overwrites_a_finished_run_of_another_config(tmp_path, tiny):
    out = tmp_path / "run"
    fake_finished(out, [*tiny, "data.synthetic.num_classes=5"])
    before = tree(out)
    result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets(tiny)])
    assert_refused(result, str(out), "data.synthetic.num_classes", "--restart")
    assert tree(out) == before


def report_run(root, variant, seed, acc):
    config = load_config(overrides=[f"seed={seed}", "name=t1", f"method={variant}"])
    folder = root / "t1" / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.resolved()))
    heads = {"multi": {"acc": acc}, "image": {"acc": None}, "tabular": {"acc": acc}}
    report = {
        "experiment": "t1",
        "method": variant,
        "dataset": "synthetic",
        "seed": seed,
        "metrics": {"val": heads, "test": heads},
        "best_epoch": 1,
        "epochs_run": 1,
        "timings": {"total_seconds": 1.0, "seconds_per_epoch": 1.0, "eval_seconds": 1.0},
    }
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "DONE").write_text("")
    return folder


@pytest.mark.parametrize("broken", ['{"metrics": ', "[1, 2]", '{"metrics": {}}', "\xff"])
def test_report_skips_a_broken_run_folder_with_a_warning(tmp_path, broken):
    root = tmp_path / "results"
    report_run(root, "gaal", 1, 0.8)
    report_run(root, "concat", 1, 0.6)
    bad = report_run(root, "gaal", 2, 0.9)
    (bad / "report.json").write_text(broken)
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "skipped" in result.output and str(bad) in result.output
    assert (tmp_path / "rep" / "table1.md").exists()


# ---------------------------------------------------------------- sweeps


def sweep_file(tmp_path, body):
    path = tmp_path / "sw.yaml"
    path.write_text(
        "name: sw\ndata: {synthetic: {n_train: 96, n_val: 48, n_test: 48}, image_size: 16, batch_size: 32}\n"
        "model: {feature_dim: 16, tabular_hidden: [16]}\ntrain: {epochs: 1, device: cpu}\n" + body
    )
    return path


def test_dry_run_names_missing_inputs_and_the_sweep_launches_nothing(tmp_path):
    path = sweep_file(
        tmp_path,
        f"sweep:\n  seeds: [1, 2]\n  grid:\n    data: [{{name: dvm, dir: {tmp_path / 'nodata'}}}, {{name: t.csv}}]\n"
        "  variant: '{data.name}'\n",
    )
    results = tmp_path / "r"
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--results", str(results)])
    assert_refused(result, "manifest.json", "t.csv", "(2 runs)")
    result = runner.invoke(app, ["sweep", str(path), "--results", str(results)])
    assert_refused(result, "manifest.json", "t.csv")
    assert not results.exists()


def test_a_sweep_stops_launching_when_the_same_input_error_repeats(tmp_path):
    path = sweep_file(tmp_path, "sweep:\n  seeds: [1, 2, 3]\n")
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    command = [sys.executable, "-m", "gaal_cli", "sweep", str(path), "--results", str(tmp_path / "r")]
    command += ["--set", "model.image_backbone=resnet_nope"]  # not in the file: it has a model block
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    output = " ".join((done.stdout + done.stderr).split())  # lines wrapped by the console joined
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert "2 failed" in output and "1 not started" in output and "same input error" in output
    assert not (tmp_path / "r/sw/gaal/seed3").exists()


def test_an_unwritable_run_folder_fails_that_run_and_the_sweep_reaches_its_summary(tmp_path):
    path = sweep_file(tmp_path, "sweep:\n  seeds: [1]\n")
    results = tmp_path / "r"
    (results / "sw").mkdir(parents=True)
    (results / "sw" / "gaal").write_text("a file where the run folder's parent should be")
    result = runner.invoke(app, ["sweep", str(path), "--results", str(results)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OSError)
    assert "cannot write the run folder" in result.output and "1 failed" in result.output


# ---------------------------------------------------------------- run folders you can trust (issue 20: lifecycle)
# A finished run is final, --restart keeps the old result until the new one is finished, one
# lock for every writer, one write helper (protected inputs, temp + rename, OS errors as exit 2),
# deterministic report files.


def snapshot(folder, lock=True):
    """Every file under `folder` with its bytes and modification time (with `lock`, the lock's record too)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and (lock or p.name != ".lock"))
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def train_tiny(out, *extra):
    result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets([*TINY_RUN, *extra])])
    assert result.exit_code == 0, result.output
    return result


TINY_RUN = [*TINY, "train.threads=1"]


def test_the_same_command_over_a_finished_run_leaves_it_byte_identical(tmp_path):
    out = tmp_path / "run"
    train_tiny(out)
    before = snapshot(out)
    result = train_tiny(out)
    assert "nothing trained" in result.output and "multi" in result.output
    assert snapshot(out) == before


def test_a_restart_interrupted_midway_keeps_the_old_result(tmp_path):
    from gaal_cli.training import engine

    out = tmp_path / "run"
    train_tiny(out)
    before = snapshot(out, lock=False)  # the lock's record names the restart: it held the folder
    config = load_config(overrides=TINY_RUN)
    with pytest.raises(KeyboardInterrupt):  # the restart killed after its first epoch
        engine.train(config, out, show_progress=False, restart=True, interrupt_after=1)
    assert snapshot(out, lock=False) == before and RunFolder(out).done
    assert "nothing trained" in train_tiny(out).output  # the next command still sees it finished
    assert runner.invoke(app, ["eval", str(out)]).exit_code == 0

    report = engine.train(config, out, show_progress=False, restart=True)  # now to the end: swapped in
    assert RunFolder(out).read_report()["timings"] == report["timings"] != json.loads(before[out / "report.json"][0])[
        "timings"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no aside or replaced folder is left"


def test_a_second_writer_is_refused_while_the_first_holds_the_folder_and_allowed_after_it_is_killed(tmp_path):
    import signal
    import socket
    import time

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    slow = [*TINY_RUN, "train.epochs=500", "train.patience=1000"]
    first = subprocess.Popen(
        [sys.executable, "-m", "gaal_cli", "train", "--out", str(out), "-q", *sets(slow)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert (out / "metrics.jsonl").exists(), "the first writer never logged an epoch"
        result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets(TINY_RUN)])
        assert_refused(result, "is being written by gaal train", f"pid {first.pid}", socket.gethostname())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    train_tiny(out)  # the killed holder's lock is gone with it
    assert RunFolder(out).done and [r["epoch"] for r in RunFolder(out).read_metrics()] == [1, 2]


def test_eval_refuses_an_unfinished_run_naming_its_state_and_last_says_what_it_evaluates(tmp_path):
    from gaal_cli.training import engine

    out = tmp_path / "run"
    config = load_config(overrides=[*TINY_RUN, "train.epochs=3"])
    with pytest.raises(KeyboardInterrupt):
        engine.train(config, out, show_progress=False, interrupt_after=2)
    assert_refused(runner.invoke(app, ["eval", str(out)]), "unfinished", "after epoch 2", "--last")
    result = runner.invoke(app, ["eval", str(out), "--last"])
    assert result.exit_code == 0, result.output
    assert "last.pt" in result.output and "not a finished result" in result.output


def test_predict_never_overwrites_the_runs_own_files(tmp_path):
    from raw_datasets import make_table

    table = make_table(tmp_path / "user", n=24)
    run = tmp_path / "run"
    args = ["train", "--dataset", str(table), "--target", "species", "--image-column", "photo", "-q", "--out", str(run)]
    assert runner.invoke(app, [*args, *sets(TINY_RUN[3:])]).exit_code == 0
    before = snapshot(run)
    for target in ("checkpoint.pt", "config.yaml", "report.json", "DONE"):
        result = runner.invoke(app, ["predict", str(run), "--data", str(table), "--out", str(run / target)])
        assert_refused(result, target, "--out", "never overwritten")
    assert snapshot(run) == before
    assert not list(run.glob(".*.tmp"))


def test_write_file_turns_a_full_disk_into_exit_2_and_leaves_no_temp_file(tmp_path):
    import errno

    from gaal_cli.foundation.errors import GaalError
    from gaal_cli.foundation.files import write_file

    target = tmp_path / "old.csv"
    target.write_text("the old file\n")

    def full_disk(fh):
        fh.write(b"half of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(GaalError, match="No space left on device") as err:
        write_file(target, full_disk)
    assert str(target) in str(err.value)
    assert target.read_text() == "the old file\n" and sorted(tmp_path.iterdir()) == [target]


def unshare_works():
    import shutil

    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not unshare_works(), reason="needs unshare -rm to mount a small tmpfs")


def on_small_disk(tmp_path, options, script, timeout=600):
    """Run the shell `script` in a mount namespace where `tmp_path/mnt` is a fresh tmpfs (`options`)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=CHECKOUT, MNT=str(mnt), GAAL=f"{sys.executable} -m gaal_cli")
    shell = f"mount -t tmpfs -o {options} none {mnt} && {script}"
    command = ["unshare", "-rm", "sh", "-c", shell]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    return done.returncode, " ".join((done.stdout + done.stderr).split())


@needs_mounts
def test_a_full_disk_during_a_checkpoint_write_is_exit_2_with_no_temp_file(tmp_path):
    code, output = on_small_disk(
        tmp_path,
        "size=96k",
        f"$GAAL train --out $MNT/run -q {' '.join(sets(TINY_RUN))} 2>&1; echo rc=$? LS; ls -A $MNT/run",
    )
    assert "rc=2" in output and "Traceback" not in output, output
    assert "No space left on device" in output and "checkpoint.pt" in output, output
    assert ".tmp" not in output.split("LS")[1], output


@needs_mounts
def test_a_full_disk_during_the_image_cache_build_is_exit_2_not_sigbus(tmp_path):
    from raw_datasets import make_table

    table = make_table(tmp_path / "user", n=48)
    train = "$GAAL train --dataset $MNT/user/table.csv --target species --image-column photo -q --out $MNT/run"
    options = " ".join(sets([*TINY_RUN[3:], "data.image_size=128"]))
    code, output = on_small_disk(
        tmp_path,
        "size=1m",
        f"cp -r {table.parent} $MNT/user && {train} {options} 2>&1; echo rc=$? LS; ls -A $MNT/user/.gaal_cache/*",
    )
    assert "rc=2" in output and "Traceback" not in output, output
    assert "MiB free" in output and "image cache" in output, output
    assert ".tmp" not in output.split("LS")[1], output


@needs_mounts
def test_a_report_to_a_read_only_or_full_folder_is_exit_2_with_nothing_half_written(tmp_path):
    report_run(tmp_path / "runs", "gaal", 1, 0.5)
    report = f"$GAAL report {tmp_path / 'runs'} --out $MNT/rep"
    code, output = on_small_disk(tmp_path, "size=1m,ro", f"{report}; echo rc=$?")
    assert "rc=2" in output and "Traceback" not in output and "Read-only file system" in output, output
    code, output = on_small_disk(tmp_path, "size=12k", f"{report} 2>&1; echo rc=$? LS; ls -A $MNT/rep")
    assert "rc=2" in output and "Traceback" not in output and "No space left on device" in output, output
    assert "runs.csv" not in output.split("LS")[1] and ".staging" not in output.split("LS")[1], output


def test_sigterm_during_a_report_leaves_the_old_files_all_in_place(tmp_path):
    import signal

    runs, out = tmp_path / "runs", tmp_path / "rep"
    for seed in (1, 2):
        report_run(runs, "gaal", seed, 0.5)
    assert runner.invoke(app, ["report", str(runs), "--out", str(out)]).exit_code == 0
    before = snapshot(out, lock=False)
    report_run(runs, "gaal", 3, 0.9)  # a new run: the next report differs
    # SIGTERM arrives while the tables are being built (after runs.csv)
    script = (
        "import os, signal, sys; import gaal_cli.analysis.report as r; from gaal_cli.cli import app\n"
        "def stop(*a, **k): os.kill(os.getpid(), signal.SIGTERM)\n"
        "r.markdown = stop\n"
        "sys.argv = ['gaal', 'report', sys.argv[1], '--out', sys.argv[2]]; app()\n"
    )
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    done = subprocess.run([sys.executable, "-c", script, str(runs), str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 128 + signal.SIGTERM, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "terminated" in done.stderr
    assert snapshot(out, lock=False) == before and not (out / ".staging").exists()


def test_report_twice_gives_byte_identical_files(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        folder = report_run(runs, "gaal", seed, 0.5)
        lines = [{"epoch": e, "train": {"loss_image": 1.0 / e + seed, "loss_tabular": 0.5 / e}} for e in (1, 2, 3)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    outputs = []
    for name in ("a", "b"):
        assert runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / name)]).exit_code == 0
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir()) if p.name != ".lock"})
    assert "fig4_curves.svg" in outputs[0] and "fig4_curves.pdf" in outputs[0]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_with_swaps_a_finished_run_in_whole_with_or_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    from gaal_cli.runs import folder as results

    if not exchange:  # a system or file system without renameat2: two renames
        monkeypatch.setattr(results, "_exchange", lambda a, b: False)
    old, new = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run").aside()
    for folder, text in ((old, "old"), (new, "new")):
        folder.path.mkdir()
        (folder.path / "report.json").write_text(text)
    old.replace_with(new)
    assert (tmp_path / "run" / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_swap_cut_between_its_two_renames_is_undone(tmp_path):
    run = RunFolder(tmp_path / "run")
    replaced = tmp_path / ".run.replaced"  # the old run, moved away just before the kill
    replaced.mkdir()
    (replaced / "DONE").write_text("")
    run.recover()
    assert (tmp_path / "run" / "DONE").exists() and not replaced.exists()


def test_a_second_report_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    from gaal_cli.foundation.locks import folder_lock

    report_run(tmp_path / "runs", "gaal", 1, 0.5)
    out = tmp_path / "rep"
    with folder_lock(out, "gaal report"):
        result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out)])
    assert_refused(result, "is being written by gaal report", f"pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# ================================================================ issue 20: the third round of hostile input
# console text, YAML 1.2, `name` under --results, dependencies by resolved path and hash, strict
# and hashed model.weights, structure and finite checks of checkpoints and report.json, bounds,
# FIFOs and symlinks. Each case: exit code 2, no traceback, nothing planted or half-written.


def run_cli(args, timeout=120):
    """The CLI in a fresh process, with a timeout: a FIFO that blocks fails the test, not the suite."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    done = subprocess.run(
        [sys.executable, "-m", "gaal_cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


# ---------------------------------------------------------------- console text is printed as written


@pytest.mark.parametrize("name", ["a[/]b", "x[red]y", "[bold]z[/bold]"])
def test_user_text_in_a_path_prints_as_written(tmp_path, name):
    result = runner.invoke(app, ["eval", str(tmp_path / name)])
    assert_refused(result, f"{tmp_path / name}:", "no checkpoint found")


@pytest.mark.parametrize("key", ["tr[/]ain.epochs", "[red]train.epochs"])
def test_user_text_in_a_set_key_prints_as_written(tmp_path, key):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", f"{key}=2"])
    assert_refused(result, f"--set {key}=2", key.split(".")[0])
    assert not (tmp_path / "run").exists()


def test_a_validation_message_with_brackets_keeps_them(tmp_path):
    """pydantic's '[and 1 more problem]' and a value like '[red]' are text, not markup."""
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "train={epochs: '[red]', lr: x}"])
    assert_refused(result, "'[red]'", "[and 1 more problem]")


def test_a_csv_header_cell_with_markup_is_shown_as_written(tmp_path):
    table = make_table(tmp_path / "user")
    table.write_text(table.read_text().replace("colour", "c[/]o[red]", 1))
    result = runner.invoke(app, ["data", "inspect", str(table), "--target", "species", "--image-column", "photo"])
    assert result.exit_code == 0, result.output
    assert "c[/]o[red]" in result.output and "Traceback" not in result.output


def test_a_folder_name_with_markup_in_a_report_warning(tmp_path):
    root = tmp_path / "results"
    report_run(root, "gaal", 1, 0.8)
    bad = report_run(root, "concat", 1, 0.6)
    named = bad.parent / "seed[/]1[red]"  # "[/]" holds a "/": two folders, "seed[" and "]1[red]"
    named.parent.mkdir()
    bad.rename(named)
    (named / "report.json").write_text("[1]")
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert str(named) in " ".join(result.output.split()) and "Traceback" not in result.output


# ---------------------------------------------------------------- YAML 1.2, duplicate keys, name


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  epochs: 2\n  lr: 0.01\n  epochs: 50\n")
    result = runner.invoke(app, ["train", str(exp), "--out", str(tmp_path / "run")])
    assert_refused(result, str(exp), "duplicate key 'epochs'", "line 2", "line 4")
    assert not (tmp_path / "run").exists()


def test_duplicate_keys_in_a_set_value_are_refused(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", "train={epochs: 2, epochs: 50}"])
    assert_refused(result, "--set", "duplicate key 'epochs'")


def test_merge_keys_still_override():
    from gaal_cli.config import parse_yaml

    assert parse_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n", "t")["b"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(
    "text, value",
    [
        ("1:00", "1:00"),  # YAML 1.1: 60 (sexagesimal)
        ("010", 10),  # YAML 1.1: 8 (octal)
        ("0o10", 8),
        ("0x1f", 31),
        ("yes", "yes"),  # YAML 1.1: True
        ("off", "off"),  # YAML 1.1: False
        ("2022-01-01", "2022-01-01"),  # YAML 1.1: a date
        ("1_000", "1_000"),  # YAML 1.1: 1000
        ("true", True),
        ("1e-3", 0.001),
        ("-.inf", float("-inf")),
    ],
)
def test_yaml_12_scalars(text, value):
    from gaal_cli.config import parse_yaml

    assert parse_yaml(f"v: {text}\n", "t")["v"] == value


def test_sexagesimal_epochs_are_refused(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", "train.epochs=1:00"])
    assert_refused(result, "train.epochs", "'1:00'")
    assert not (tmp_path / "run").exists()


def test_yaml_12_in_an_experiment_file():
    config = load_config(overrides=["name=no", "train.epochs=010"])
    assert config.name == "no" and config.train.epochs == 10


@pytest.mark.parametrize("name", ["/abs", "../..", "a/../../b", "~/x", "."])
def test_a_name_that_leaves_results_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    # train.epochs=0 as well: should the name pass, nothing is trained outside tmp_path either
    result = runner.invoke(app, ["train", "-q", "--set", f"name={name}", "--set", "train.epochs=0"])
    assert_refused(result, "field 'name'", "under --results")
    result = runner.invoke(app, ["sweep", "synthetic/lambda", "--dry-run", "--results", "r", "--set", f"name={name}"])
    assert_refused(result, "field 'name'")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- sweeps: dependencies by resolved path and hash


def student_sweep(tmp_path, teacher="{results}/sw/concat/seed{seed}"):
    """A student (KD) listed before its teacher (concat), which its setting names through {results}."""
    return sweep_file(
        tmp_path,
        f"methods:\n  kd: {{teacher: '{teacher}'}}\n"
        "sweep:\n  seeds: [1]\n  grid:\n    method: [kd, concat]\n  variant: '{method}'\n",
    )


def fake_done(run, checkpoint=None):
    """Mark a planned run finished, as training would: its config, a report and DONE."""
    run.folder.mkdir(parents=True)
    (run.folder / "config.yaml").write_text(yaml.safe_dump(run.config.resolved()))
    report = {"dependencies": {}}
    if checkpoint is not None:
        report["dependencies"]["methods.kd.teacher"] = {
            "path": str(checkpoint),
            "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        }
    (run.folder / "report.json").write_text(json.dumps(report))
    (run.folder / "DONE").write_text("")


@pytest.mark.parametrize("spelling", ["absolute", "dotdot", "elsewhere"])
def test_finished_runs_stay_done_whatever_the_results_spelling(tmp_path, monkeypatch, spelling, teacher_checkpoint):
    from gaal_cli.sweeps.runner import load_sweep, statuses

    path = student_sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    for run in load_sweep(path, [], results=Path("r")).runs:
        fake_done(run)
    results = {"absolute": tmp_path / "r", "dotdot": Path("r/../r"), "elsewhere": tmp_path / "r"}[spelling]
    if spelling == "elsewhere":
        (tmp_path / "other").mkdir()
        monkeypatch.chdir(tmp_path / "other")
    plan = load_sweep(path, [], results=results)
    assert [state for _, state in statuses(plan)] == ["done", "done"]


def test_a_dependency_spelled_with_dotdot_is_part_of_the_sweep(tmp_path, monkeypatch):
    from gaal_cli.sweeps.runner import Outcome, load_sweep, next_startable

    monkeypatch.chdir(tmp_path)
    plan = load_sweep(student_sweep(tmp_path, "{results}/sw/kd/../concat/seed{seed}"), [], results=Path("r"))
    assert [run.variant for run in plan.runs] == ["concat", "kd"]  # the teacher first
    todo = list(plan.runs)
    assert next_startable(todo, [], Outcome()) == (plan.runs[0], "")
    teacher_training = [SimpleNamespace(run=plan.runs[0])]
    assert next_startable(todo, teacher_training, Outcome()) is None  # the student waits for its teacher


def test_a_dependency_renamed_but_with_the_recorded_hash_is_the_same(tmp_path, monkeypatch, teacher_checkpoint):
    from gaal_cli.runs.folder import RunFolder

    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "t1"
    teacher.mkdir()
    (teacher / "checkpoint.pt").write_bytes(teacher_checkpoint.read_bytes())
    student = RunFolder(tmp_path / "s")
    saved = {"method": "kd", "methods": {"kd": {"teacher": "t1"}}}
    student.path.mkdir()
    report = {"dependencies": {"methods.kd.teacher": {"path": "t1/checkpoint.pt", "sha256": "0" * 64}}}
    copy = tmp_path / "t2"
    shutil.copytree(teacher, copy)
    wanted = {"method": "kd", "methods": {"kd": {"teacher": str(copy)}}}
    (student.path / "report.json").write_text(json.dumps(report))
    assert not student.same_dependency("methods.kd.teacher", saved, wanted)  # another hash
    digest = hashlib.sha256(copy.joinpath("checkpoint.pt").read_bytes()).hexdigest()
    report["dependencies"]["methods.kd.teacher"]["sha256"] = digest
    (student.path / "report.json").write_text(json.dumps(report))
    assert student.same_dependency("methods.kd.teacher", saved, wanted)


def test_a_dependency_is_hashed_from_the_bytes_it_loads(tmp_path, teacher_checkpoint, monkeypatch):
    """The file is read once: replaced after the read, the hash is still that of what was loaded."""
    from gaal_cli.runs import dependencies

    file = tmp_path / "checkpoint.pt"
    file.write_bytes(teacher_checkpoint.read_bytes())
    original = dependencies.read_bytes

    def read_then_replace(path, *args, **kwargs):
        data = original(path, *args, **kwargs)
        Path(path).write_bytes(b"replaced")
        return data

    monkeypatch.setattr(dependencies, "read_bytes", read_then_replace)
    dep = dependencies.read_dependency(file, "methods.kd.teacher")
    assert dep.sha256 == hashlib.sha256(teacher_checkpoint.read_bytes()).hexdigest()


# ---------------------------------------------------------------- model.weights: strict and hashed


@pytest.fixture(scope="module")
def backbone_state():
    import timm

    return timm.create_model("test_resnet", num_classes=10).state_dict()


@pytest.mark.parametrize(
    "content, needles",
    [
        ({}, ["0 of the model's"]),
        ({"foo.weight": torch.zeros(3)}, ["0 of the model's", "foo.weight"]),
        ("backbone", ["prefix 'backbone.'", "model.weights_prefix=backbone."]),
        ("half", ["of the model's", "model.weights_min_match"]),
        ([1, 2], ["expected a state dict", "list"]),
        ("a string", ["expected a state dict", "str"]),
        ("nan", ["non-finite"]),
    ],
)
def test_weights_that_do_not_fit_are_refused(tmp_path, tiny, backbone_state, content, needles):
    if content == "backbone":
        content = {f"backbone.{k}": v for k, v in backbone_state.items()}
    elif content == "half":
        content = dict(list(backbone_state.items())[: len(backbone_state) // 2])
    elif content == "nan":
        content = {k: v.clone() for k, v in backbone_state.items()}
        next(iter(content.values())).view(-1)[0] = float("nan")
    weights, out = tmp_path / "w.pth", tmp_path / "run"
    torch.save(content, weights)
    result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets([*tiny, f"model.weights={weights}"])])
    assert_refused(result, str(weights), "model.weights", *needles)
    assert not out.exists()


def test_weights_are_recorded_and_a_changed_file_makes_the_run_stale(tmp_path, tiny, backbone_state):
    from gaal_cli.runs.folder import RunFolder
    from gaal_cli.sweeps.runner import changed_dependencies

    weights, out = tmp_path / "w.pth", tmp_path / "run"
    torch.save({f"backbone.{k}": v for k, v in backbone_state.items()}, weights)
    overrides = [*tiny, "train.epochs=1", f"model.weights={weights}", "model.weights_prefix=backbone."]
    result = runner.invoke(app, ["train", "-m", "concat", "--out", str(out), "-q", *sets(overrides)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "report.json").read_text())["dependencies"]["model.weights"]
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    backbone = [k for k in backbone_state if not k.startswith("fc.") and "tracked" not in k]
    assert record["matched"] == f"{len(backbone)} of {len(backbone)} tensors"
    assert changed_dependencies(RunFolder(out)) == []
    torch.save({f"backbone.{k}": v * 2 for k, v in backbone_state.items()}, weights)
    assert changed_dependencies(RunFolder(out)) == [str(weights)]


# ---------------------------------------------------------------- checkpoints: structure and finite numbers


def crafted_checkpoint(path, base, **changes):
    state = torch.load(base, weights_only=True)
    state.update(changes)
    torch.save(state, path)
    return path


def _nan_model(base):
    model = dict(torch.load(base, weights_only=True)["model"])
    name = next(k for k, v in model.items() if v.is_floating_point())
    model[name] = torch.full_like(model[name], float("nan"))
    return model


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"model": [1, 2]}, "model"),
        ({"model": {"w": "text"}}, "model.w"),
        ({"data": "x"}, "data"),
        ({"data": {"classes": -3, "field_lengths": [1]}}, "data.classes"),
        ({"dependencies": [1]}, "dependencies"),
        ({"dependencies": {"methods.kd.teacher": "x"}}, "dependencies.methods.kd.teacher"),
        ({"dependencies": {"m.kd.teacher": {"path": 1, "sha256": "0" * 64}}}, "dependencies.m.kd.teacher.path"),
        ({"epoch": -1}, "epoch"),
        ({"preprocessing": {"image": {"size": -5}}}, "preprocessing.image.size"),
        ({"preprocessing": {"encoding": {"mean": [float("nan")], "std": [1.0]}}}, "preprocessing.encoding.mean[0]"),
        ({"preprocessing": {"encoding": {"mean": [0.0], "std": [0.0]}}}, "preprocessing.encoding.std[0]"),
        ({"preprocessing": {"field_lengths": [-2]}}, "preprocessing.field_lengths"),
        ("nan-model", "model."),
    ],
)
def test_crafted_checkpoint_fields_are_refused_by_name(tmp_path, teacher_checkpoint, changes, field):
    if changes == "nan-model":
        changes = {"model": _nan_model(teacher_checkpoint)}
    file = crafted_checkpoint(tmp_path / "checkpoint.pt", teacher_checkpoint, **changes)
    assert_refused(runner.invoke(app, ["eval", str(file)]), str(file), f"field '{field}")


@pytest.mark.parametrize(
    "config_change, field",
    [
        ({"data": {"image_size": -5}}, "data.image_size"),
        ({"model": {"weights": [1]}}, "model.weights"),
        ({"model": {"weights": 3}}, "model.weights"),
    ],
)
def test_crafted_checkpoint_configs_are_refused_by_name(tmp_path, teacher_checkpoint, config_change, field):
    config = torch.load(teacher_checkpoint, weights_only=True)["config"]
    for section, values in config_change.items():
        config[section] = {**config[section], **values}
    file = crafted_checkpoint(tmp_path / "checkpoint.pt", teacher_checkpoint, config=config)
    assert_refused(runner.invoke(app, ["eval", str(file)]), str(file), field)


def test_a_teacher_with_nan_weights_is_refused_before_training(tmp_path, tiny, teacher_checkpoint):
    teacher = crafted_checkpoint(tmp_path / "teacher.pt", teacher_checkpoint, model=_nan_model(teacher_checkpoint))
    out = tmp_path / "run"
    overrides = [*tiny, f"methods.kd.teacher={teacher}"]
    result = runner.invoke(app, ["train", "-m", "kd", "--out", str(out), "-q", *sets(overrides)])
    assert_refused(result, str(teacher), "non-finite", "methods.kd.teacher")
    assert not out.exists()


def test_a_recorded_dependency_config_that_does_not_validate(tmp_path, teacher_checkpoint):
    record = {"path": "t.pt", "sha256": "0" * 64, "config": {"train": {"lr": -1}}, "data": None}
    file = crafted_checkpoint(tmp_path / "c.pt", teacher_checkpoint, dependencies={"methods.kd.teacher": record})
    assert_refused(runner.invoke(app, ["eval", str(file)]), "methods.kd.teacher", "does not validate")


# ---------------------------------------------------------------- report.json and config.yaml: structure


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": [1]}, "seed"),
        ({"experiment": {"a": 1}}, "experiment"),
        ({"metrics": {"test": "0.9"}}, "metrics.test"),
        ({"metrics": {"test": {"multi": {"acc": "high"}}}}, "metrics.test.multi.acc"),
        ({"timings": {"seconds_per_epoch": "fast"}}, "timings.seconds_per_epoch"),
        ({"dependencies": {"m.kd.teacher": {"path": "x", "sha256": "no"}}}, "dependencies.m.kd.teacher.sha256"),
    ],
)
def test_crafted_report_fields_are_named(tmp_path, change, field):
    root = tmp_path / "results"
    bad = report_run(root, "gaal", 2, 0.9)
    report = json.loads((bad / "report.json").read_text())
    (bad / "report.json").write_text(json.dumps({**report, **change}))
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert_refused(result, "skipped a broken run folder", f"field '{field}'", "no finished runs")
    assert not (tmp_path / "rep").exists()


def test_deeply_nested_report_json_is_one_paragraph(tmp_path):
    root = tmp_path / "results"
    report_run(root, "concat", 1, 0.6)
    bad = report_run(root, "gaal", 2, 0.9)
    (bad / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "nested too deeply" in result.output and "Traceback" not in result.output


def test_a_config_yaml_that_is_a_list(tmp_path):
    root = tmp_path / "results"
    bad = report_run(root, "gaal", 2, 0.9)
    (bad / "config.yaml").write_text("- 1\n- 2\n")
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert_refused(result, str(bad / "config.yaml"), "expected a mapping")
    result = runner.invoke(app, ["train", str(bad / "config.yaml"), "--out", str(tmp_path / "run")])
    assert_refused(result, str(bad / "config.yaml"), "mapping")


def test_a_crafted_report_stops_a_sweep_status_with_its_name(tmp_path, monkeypatch):
    from gaal_cli.sweeps.runner import load_sweep

    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path, "sweep:\n  seeds: [1]\n")
    (run,) = load_sweep(path, [], results=Path("r")).runs
    fake_done(run)
    (run.folder / "report.json").write_text(json.dumps({"dependencies": {"model.init_from": [1]}}))
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--results", "r"])
    assert_refused(result, "report.json", "dependencies.model.init_from")


# ---------------------------------------------------------------- bounds, FIFOs, symlinks, streaming


def test_image_size_has_a_maximum(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", "data.image_size=100000"])
    assert_refused(result, "data.image_size", "1024")
    assert not (tmp_path / "run").exists()


def test_a_table_with_too_many_columns_is_refused_before_parsing(tmp_path):
    from gaal_cli.foundation.untrusted import TABLE_MAX_COLUMNS

    table = tmp_path / "wide.csv"
    header = ",".join(f"c{i}" for i in range(TABLE_MAX_COLUMNS + 5))
    table.write_text(f"photo,species,{header}\n" + "p.jpg,cat," + ",".join("1" * (TABLE_MAX_COLUMNS + 5)) + "\n")
    result = runner.invoke(app, ["data", "inspect", str(table), "--target", "species", "--image-column", "photo"])
    assert_refused(result, str(table), "columns", f"{TABLE_MAX_COLUMNS:,}")


def test_report_reads_logs_as_a_stream_and_skips_an_overlong_line(tmp_path):
    from gaal_cli.foundation.untrusted import JSONL_MAX_LINE
    from gaal_cli.runs.folder import RunFolder

    run = RunFolder(tmp_path)
    long = json.dumps({"cos_image": 0.1, "pad": "x" * JSONL_MAX_LINE})
    lines = [json.dumps({"epoch": 1, "cos_image": -0.5}), long, json.dumps({"cos_image": 0.5})]
    run.file("steps.jsonl").write_text("\n".join([*lines, "[1]", '{"cut']) + "\n")
    steps = run.iter_steps()
    assert iter(steps) is steps  # a generator: rows come one at a time
    assert [s["cos_image"] for s in steps] == [-0.5, 0.5]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_report_json_is_refused_not_waited_on(tmp_path):
    root = tmp_path / "results"
    report_run(root, "concat", 1, 0.6)
    bad = report_run(root, "gaal", 2, 0.9)
    (bad / "report.json").unlink()
    os.mkfifo(bad / "report.json")
    code, output = run_cli(["report", root, "--out", tmp_path / "rep"], timeout=120)
    assert code == 0, output
    assert "FIFO" in output and str(bad / "report.json") in output and "Traceback" not in output


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A tiny finished run on a user table (one epoch)."""
    root = tmp_path_factory.mktemp("table_run")
    table = make_table(root / "user", split=True)
    run = root / "run"
    args = ["train", "--dataset", str(table), "--target", "species", "--image-column", "photo", "-q", "--out", str(run)]
    overrides = ["data.image_size=16", "data.batch_size=16", "model.feature_dim=16", "model.tabular_hidden=[16]"]
    result = runner.invoke(app, [*args, *sets([*overrides, "train.epochs=1", "train.device=cpu", "method=concat"])])
    assert result.exit_code == 0, result.output
    return run, table


def table_copy(table, folder):
    shutil.copytree(table.parent, folder, ignore=shutil.ignore_patterns(".gaal_cache"))
    return folder / "table.csv"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_an_image_in_predict_is_a_bad_row(table_run, tmp_path):
    run, table = table_run
    data = table_copy(table, tmp_path / "t")
    (data.parent / "photos" / "p0.jpg").unlink()
    os.mkfifo(data.parent / "photos" / "p0.jpg")
    out = tmp_path / "p.csv"
    code, output = run_cli(["predict", run, "--data", data, "--out", out], timeout=300)
    assert code == 2, output
    assert "FIFO" in output and "p0.jpg" in output and "Traceback" not in output and not out.exists()


def test_a_symlink_leaving_the_image_folder_is_refused(table_run, tmp_path):
    run, table = table_run
    data = table_copy(table, tmp_path / "t")
    outside = tmp_path / "outside.jpg"
    (data.parent / "photos" / "p0.jpg").rename(outside)
    (data.parent / "photos" / "p0.jpg").symlink_to(outside)
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(run), "--data", str(data), "--out", str(out)])
    assert_refused(result, "leaves the table's folder", "symlink")
    assert not out.exists()


@pytest.mark.parametrize(
    "field, value, needle",
    [("mean", float("nan"), "preprocessing.encoding.mean[0]"), ("std", 0.0, "preprocessing.encoding.std[0]")],
)
def test_predict_refuses_non_finite_preprocessing(table_run, tmp_path, field, value, needle):
    run, table = table_run
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["preprocessing"]["encoding"][field][0] = value
    file = tmp_path / "checkpoint.pt"
    torch.save(state, file)
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(file), "--data", str(table), "--out", str(out)])
    assert_refused(result, str(file), needle)
    assert not out.exists()


def test_predict_reads_the_preprocessing_from_the_checkpoint_not_the_folder(table_run, tmp_path):
    """README: predict rebuilds everything from the checkpoint; preprocessing.json is a copy to read."""
    run, table = table_run
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    (folder / "preprocessing.json").write_text("not json")
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(folder), "--data", str(table), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 49
