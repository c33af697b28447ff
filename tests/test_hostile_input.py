"""Hostile and careless input (issue 10): crafted checkpoints, non-finite numbers, YAML bombs,
out-of-range seeds, broken run folders, sweeps over missing data or unwritable folders.

Each bad input must give exit code 2 (1 for a sweep that went on to its summary), one paragraph
without a traceback, no planted code run and no half-written file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fake_runs import dependency_overrides
from typer.testing import CliRunner

import gaal_cli
from gaal_cli.cli import app
from gaal_cli.config import YAML_MAX_BYTES, load_config
from gaal_cli.data import make_loader
from gaal_cli.engine import save_epoch, setup
from gaal_cli.methods import METHODS
from gaal_cli.results import RunFolder, default_run_folder, load_state, to_json

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
    from gaal_cli import engine

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
    assert default_run_folder(table).as_posix() == "results/quickstart/my_cars.csv/gaal/seed2022"
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
    path = sweep_file(tmp_path, "model: {image_backbone: resnet_nope}\nsweep:\n  seeds: [1, 2, 3]\n")
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    command = [sys.executable, "-m", "gaal_cli", "sweep", str(path), "--results", str(tmp_path / "r")]
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


TINY_RUN = [
    "data.synthetic.n_train=96",
    "data.synthetic.n_val=48",
    "data.synthetic.n_test=48",
    "data.image_size=16",
    "data.batch_size=32",
    "model.feature_dim=16",
    "model.tabular_hidden=[16]",
    "train.epochs=2",
    "train.device=cpu",
    "train.threads=1",
]


def test_the_same_command_over_a_finished_run_leaves_it_byte_identical(tmp_path):
    out = tmp_path / "run"
    train_tiny(out)
    before = snapshot(out)
    result = train_tiny(out)
    assert "nothing trained" in result.output and "multi" in result.output
    assert snapshot(out) == before


def test_a_restart_interrupted_midway_keeps_the_old_result(tmp_path, monkeypatch):
    from gaal_cli import engine

    out = tmp_path / "run"
    train_tiny(out)
    before = snapshot(out, lock=False)  # the lock's record names the restart: it held the folder
    original, calls = engine.evaluate, {"n": 0}

    def interrupted_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", interrupted_in_epoch_2)
    config = load_config(overrides=TINY_RUN)
    with pytest.raises(KeyboardInterrupt):
        engine.train(config, out, show_progress=False, restart=True)
    monkeypatch.setattr(engine, "evaluate", original)
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


def test_eval_refuses_an_unfinished_run_naming_its_state_and_last_says_what_it_evaluates(tmp_path, monkeypatch):
    from gaal_cli import engine

    out = tmp_path / "run"
    config = load_config(overrides=[*TINY_RUN, "train.epochs=3"])
    original, calls = engine.evaluate, {"n": 0}

    def interrupted_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        engine.train(config, out, show_progress=False)
    monkeypatch.setattr(engine, "evaluate", original)
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

    from gaal_cli.errors import GaalError
    from gaal_cli.files import write_file

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
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=env, timeout=timeout)
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
    train = f"$GAAL train --dataset $MNT/user/table.csv --target species --image-column photo -q --out $MNT/run"
    options = " ".join(sets([*TINY_RUN[3:], "data.image_size=128"]))
    code, output = on_small_disk(
        tmp_path, "size=1m", f"cp -r {table.parent} $MNT/user && {train} {options} 2>&1; echo rc=$? LS; ls -A $MNT/user/.gaal_cache/*"
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
        "import os, signal, sys; import gaal_cli.report as r; from gaal_cli.cli import app\n"
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
    from gaal_cli import results

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
    from gaal_cli.locks import folder_lock

    report_run(tmp_path / "runs", "gaal", 1, 0.5)
    out = tmp_path / "rep"
    with folder_lock(out, "gaal report"):
        result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out)])
    assert_refused(result, "is being written by gaal report", f"pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
