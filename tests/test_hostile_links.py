"""Hostile input, round four (issue 29), first group: data loss and writes outside the run folder.

- One rule for every file and folder gaal creates, renames or removes: a link planted at any of
  them is refused naming it (exit 2) or replaced without being followed; nothing outside changes.
  One test per writer plants a link at every path it touches at once.
- A FIFO where the lock file goes never hangs a command, nor gives a traceback.
- No command writes onto anything it reads (the table's images, the image cache, a dependency).
- Names that become paths are checked where they enter (a plugin's method name; an experiment
  named like one of the report's own files).
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hostile import (
    TINY_RUN,
    assert_refused,
    copy_run,
    invoke,
    run_cli,
    sets,
    snapshot,
    train_table,
    train_tiny,
)
from raw_datasets import make_table

from gaal_cli.config import load_config
from gaal_cli.runs.folder import RunFolder

RUN_FILES = (
    ".lock",
    "config.yaml",
    "metrics.jsonl",
    "steps.jsonl",
    "checkpoint.pt",
    "last.pt",
    "report.json",
    "preprocessing.json",
    "predictions.safetensors",
    "DONE",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (two epochs) to copy."""
    return train_tiny(tmp_path_factory.mktemp("finished") / "run")


@pytest.fixture(scope="module")
def table_files(tmp_path_factory):
    """A user table with its photos (no cache yet) and a finished one-epoch run on it."""
    root = tmp_path_factory.mktemp("table")
    table = make_table(root / "user", n=24)
    run = root / "run"
    assert train_table(table, run).exit_code == 0
    shutil.rmtree(table.parent / ".gaal_cache")
    return table, run


@pytest.fixture
def outside(tmp_path):
    """What a planted link points at: a file and a folder outside every run, whose bytes are watched."""
    folder = tmp_path / "outside"
    (folder / "victim_dir").mkdir(parents=True)
    (folder / "victim.txt").write_text("the victim's notes\n")
    (folder / "victim_dir" / "notes.md").write_text("kept\n")
    return folder


# ---------------------------------------------------------------- planted links, every writer at once


def peel(command, planted: dict[Path, Path], outside: Path) -> list[Path]:
    """Plant every link of `planted` (path -> target), then run `command` until it succeeds: each run
    must leave `outside` as it was, print no traceback, and either succeed or be refused (exit 2)
    naming one of the links still planted, which is then removed. Returns the links refused."""
    for path, target in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a file of the layout gives way to the link
        path.symlink_to(target, target_is_directory=target.is_dir())
    before = snapshot(outside)
    refused = []
    for _ in range(len(planted) + 1):
        result = command()
        assert snapshot(outside) == before, f"a write went through a link (refused so far: {refused}):\n{result.output}"
        assert "Traceback" not in result.output and result.exit_code in (0, 2), result.output
        if result.exit_code == 0:
            return refused
        named = [p for p in sorted(planted, key=lambda p: -len(str(p))) if p.is_symlink() and str(p) in result.output]
        assert named, f"the refusal names no planted link:\n{result.output}"
        named[0].unlink()
        refused.append(named[0])
    raise AssertionError(f"still refused after every link was removed: {refused}")


def test_train_into_a_folder_with_a_link_at_every_file_of_the_layout(tmp_path, outside):
    run = tmp_path / "run"
    planted = {run / name: outside / "victim.txt" for name in RUN_FILES}
    refused = peel(lambda: invoke("train", "--out", run, "-q", *sets(TINY_RUN)), planted, outside)
    assert run / ".lock" in refused and run / "config.yaml" in refused and run / "checkpoint.pt" in refused
    assert RunFolder(run).done and not any(p.is_symlink() for p in run.iterdir())


def test_train_restart_with_links_at_its_aside_replaced_and_lock_paths(tmp_path, outside, finished):
    run = copy_run(finished, tmp_path / "run")
    planted = {
        tmp_path / ".run.restart": outside / "victim_dir",
        tmp_path / ".run.replaced": outside / "victim_dir",
        run / ".lock": outside / "victim.txt",
    }
    refused = peel(lambda: invoke("train", "--out", run, "-q", "--restart", *sets(TINY_RUN)), planted, outside)
    assert set(refused) == set(planted)
    assert not run.is_symlink() and RunFolder(run).done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "run"]


def test_a_run_folder_that_is_a_link_is_refused(tmp_path, outside):
    run = tmp_path / "run"
    run.symlink_to(outside / "victim_dir", target_is_directory=True)
    before = snapshot(outside)
    assert_refused(invoke("train", "--out", run, "-q", *sets(TINY_RUN)), str(run), "symbolic link")
    assert snapshot(outside) == before


def test_write_predictions_with_links_at_the_lock_and_the_predictions_file(tmp_path, outside, finished):
    run = copy_run(finished, tmp_path / "run")
    (run / "predictions.safetensors").unlink()  # a run from before runs kept their predictions
    (run / ".lock").unlink(missing_ok=True)
    command = lambda: invoke("eval", run, "--write-predictions")  # noqa: E731
    assert peel(command, {run / ".lock": outside / "victim.txt"}, outside) == [run / ".lock"]
    (run / "predictions.safetensors").unlink()
    planted = {run / "predictions.safetensors": outside / "victim.txt"}
    assert peel(command, planted, outside) == list(planted)  # not "already there": replaced, not followed
    assert (run / "predictions.safetensors").is_file() and not (run / "predictions.safetensors").is_symlink()


def test_report_out_with_a_link_at_every_file_it_writes(tmp_path, outside, finished):
    copy_run(finished, tmp_path / "runs" / "concat" / "seed2022")
    out = tmp_path / "rep"
    names = (".lock", "runs.csv", "report.md", "health.md", "table1.md", "table1.csv", "table1_f1.md")
    planted = {out / name: outside / "victim.txt" for name in names} | {out / ".staging": outside / "victim_dir"}
    refused = peel(lambda: invoke("report", tmp_path / "runs", "--out", out), planted, outside)
    assert out / ".lock" in refused and out / ".staging" in refused
    assert (out / "report.md").is_file() and not (out / "report.md").is_symlink()


def test_report_out_that_is_a_link_is_refused(tmp_path, outside, finished):
    copy_run(finished, tmp_path / "runs" / "concat" / "seed2022")
    out = tmp_path / "rep"
    out.symlink_to(outside / "victim_dir", target_is_directory=True)
    before = snapshot(outside)
    assert_refused(invoke("report", tmp_path / "runs", "--out", out), str(out), "symbolic link")
    assert snapshot(outside) == before


def test_table_training_with_links_at_the_image_cache(tmp_path, outside, table_files):
    table, _ = table_files
    shutil.copytree(table.parent, tmp_path / "user")
    table = tmp_path / "user" / "table.csv"
    cache = table.parent / ".gaal_cache" / "table"
    planted = {cache / "images_16.npy": outside / "victim.txt", cache / "images_16.json": outside / "victim.txt"}
    refused = peel(lambda: train_table(table, tmp_path / "run"), planted, outside)
    assert cache / "images_16.npy" in refused
    shutil.rmtree(table.parent / ".gaal_cache")
    planted = {table.parent / ".gaal_cache": outside / "victim_dir"}
    assert peel(lambda: train_table(table, tmp_path / "run2"), planted, outside) == list(planted)


def test_predict_out_that_is_a_link_is_refused(tmp_path, outside, table_files):
    table, run = table_files
    out = tmp_path / "p.csv"
    planted = {out: outside / "victim.txt"}
    assert peel(lambda: invoke("predict", run, "--data", table, "--out", out), planted, outside) == [out]
    assert out.is_file() and not out.is_symlink()


def sweep_file(tmp_path, body):
    path = tmp_path / "sw.yaml"
    path.write_text(
        "name: sw\ndata: {synthetic: {n_train: 96, n_val: 48, n_test: 48}, image_size: 16, batch_size: 32}\n"
        "model: {feature_dim: 16, tabular_hidden: [16]}\ntrain: {epochs: 1, device: cpu, threads: 1}\n" + body
    )
    return path


def test_a_sweep_never_appends_its_log_through_a_link(tmp_path, outside):
    experiment = sweep_file(tmp_path, "sweep:\n  seeds: [1]\n")
    results = tmp_path / "results"
    folder = results / "sw" / "gaal" / "seed1"
    folder.mkdir(parents=True)
    (folder / "train.log").symlink_to(outside / "victim.txt")
    before = snapshot(outside)
    code, output = run_cli(["sweep", experiment, "--results", results], timeout=300)
    assert snapshot(outside) == before, output
    assert code == 1 and "train.log" in output and "symbolic link" in output and "Traceback" not in output


#: calls that create, write, rename or remove a path by name: Path's methods, and these modules' functions
PATH_WRITERS = {"write_text", "write_bytes", "mkdir", "touch", "symlink_to", "hardlink_to"}
MODULE_WRITERS = {
    "os": {"replace", "rename", "renames", "makedirs", "mkdir", "symlink", "link", "remove", "rmdir", "mkfifo"},
    "shutil": {"rmtree", "move", "copy", "copy2", "copytree", "copyfile"},
    "np": {"save", "savez", "savetxt"},
}
#: where the rule itself lives, and the calls it vouches for there (each checked as the comment says)
RULE_KEEPERS = {
    "foundation/locks.py": {"os.open"},  # O_NOFOLLOW | O_NONBLOCK, the type checked
    "runs/folder.py": {"os.rename"},  # RunFolder.replace_with / recover: both folders refused if links
    "analysis/report.py": {"os.replace"},  # staging files renamed over out's (a rename follows no link)
}


def direct_writes(path: Path, allowed: set[str]) -> list[str]:
    """Calls in `path` that write by name without gaal_cli.foundation.files: `open` in a writing
    mode, `os.open` for writing, `os.replace`, `Path.write_text`, `shutil.rmtree`, `np.save`, ..."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        call = f"{owner}.{name}" if owner else name
        given = [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "mode")]
        modes = [a.value for a in given if isinstance(a, ast.Constant)]
        flags = ast.dump(node.args[1]) if len(node.args) > 1 else ""
        writing = (
            (isinstance(func, ast.Attribute) and name in PATH_WRITERS)
            or name in MODULE_WRITERS.get(owner, ())
            or (call == "open" and any(isinstance(m, str) and set(m) & set("wax+") for m in modes))
            or (call == "os.open" and any(f in flags for f in ("O_CREAT", "O_WRONLY", "O_RDWR", "O_APPEND")))
        )
        if writing and call not in allowed:
            found.append(f"{path.name}:{node.lineno} {call}")
    return found


def test_every_write_goes_through_the_one_rule():
    """No module writes, renames or removes a path by name but through gaal_cli/foundation/files.py
    (and the few renames listed in RULE_KEEPERS, each checked there): one rule for every writer."""
    package = Path(__file__).resolve().parents[1] / "gaal_cli"
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative == "foundation/files.py":
            continue
        found += direct_writes(path, RULE_KEEPERS.get(relative, set()))
    assert direct_writes(package / "foundation" / "files.py", set()), "the scan finds the rule's own writes"
    assert found == [], "writes that bypass gaal_cli/foundation/files.py:\n" + "\n".join(found)


# ---------------------------------------------------------------- a FIFO where the lock goes


@pytest.fixture
def fifo_lock(tmp_path):
    """An unfinished run (interrupted after epoch 1) whose .lock is a FIFO."""
    from gaal_cli.training import engine

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        engine.train(load_config(overrides=TINY_RUN), run, show_progress=False, interrupt_after=1)
    (run / ".lock").unlink(missing_ok=True)
    os.mkfifo(run / ".lock")
    return run


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("command", [["eval", "{run}"], ["eval", "{run}", "--last"], ["compare", "{run}", "{run}"]])
def test_a_fifo_lock_never_hangs_a_reader(fifo_lock, command):
    code, output = run_cli([part.format(run=fifo_lock) for part in command], timeout=60)
    assert "Traceback" not in output, output
    assert code in (0, 2), output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_lock_never_hangs_a_sweep_dry_run(tmp_path, fifo_lock):
    experiment = sweep_file(tmp_path, "sweep:\n  seeds: [1]\n")
    folder = tmp_path / "results" / "sw" / "gaal" / "seed1"
    folder.parent.mkdir(parents=True)
    fifo_lock.rename(folder)
    code, output = run_cli(["sweep", experiment, "--results", tmp_path / "results", "--dry-run"], timeout=60)
    assert code == 0 and "Traceback" not in output, output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_lock_stops_train_with_one_paragraph(fifo_lock):
    code, output = run_cli(["train", "--out", fifo_lock, "-q", *sets(TINY_RUN)], timeout=60)
    assert code == 2 and "Traceback" not in output, output
    assert f"{fifo_lock}/.lock" in output and "FIFO" in output


# ---------------------------------------------------------------- no output onto an input


def test_predict_never_writes_over_an_image_of_its_table(tmp_path, table_files):
    table, run = table_files
    data = tmp_path / "user"
    shutil.copytree(table.parent, data)
    image = data / "photos" / "p1.jpg"
    before = image.read_bytes()
    result = invoke("predict", run, "--data", data / "table.csv", "--out", image)
    assert_refused(result, str(image), "--out", "never overwritten")
    assert image.read_bytes() == before


def test_predict_never_writes_into_the_image_cache(tmp_path, table_files):
    table, run = table_files
    cache = tmp_path / "user" / ".gaal_cache" / "table"
    cache.mkdir(parents=True)
    (cache / "images_16.npy").write_bytes(b"pixels")
    result = invoke("predict", run, "--data", table, "--out", cache / "images_16.npy")
    assert_refused(result, "images_16.npy", ".gaal_cache")
    assert (cache / "images_16.npy").read_bytes() == b"pixels"


def test_predict_never_writes_over_a_dependency(tmp_path, finished, teacher_checkpoint):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher_checkpoint, teacher)
    student = tmp_path / "student"
    train_tiny(student, "method=kd", f"methods.kd.teacher={teacher}", "train.epochs=1")
    before = teacher.read_bytes()
    assert_refused(invoke("predict", student, "--data", "test", "--out", teacher), str(teacher), "never overwritten")
    assert teacher.read_bytes() == before


# ---------------------------------------------------------------- names that become paths


def declare(site: Path, distribution: str, entries: str, modules: dict[str, str]) -> None:
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[gaal.methods]\n{entries}\n")
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text)


def test_a_plugin_method_name_that_leaves_results_is_never_a_path(tmp_path):
    site, work = tmp_path / "site", tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    module = (
        "from gaal_cli.methods.concat import Concat, ConcatSettings\n"
        "from gaal_cli.methods.registry import register_method\n"
        "register_method('../../../../outside', ConcatSettings)(type('Escape', (Concat,), {}))\n"
    )
    declare(site, "gaal-escape", "../../../../outside = gaal_escape", {"gaal_escape": module})
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])}
    code, output = run_cli(["train", "-m", "../../../../outside", "-q", *sets(TINY_RUN)], cwd=work, env=env)
    assert code == 2 and "Traceback" not in output, output
    assert "unknown method" in output
    assert not (work.parent / "outside").exists() and not (tmp_path / "outside").exists()
    code, output = run_cli(["methods"], cwd=work, env=env)
    assert code == 0 and "../../../../outside" in output and "is not a letter" in output, output


def test_register_method_refuses_a_name_that_is_no_path_component():
    from gaal_cli.foundation.errors import GaalError
    from gaal_cli.methods.registry import register_method

    for name in ("../x", "a/b", "a.b", "", "x\x1b"):
        with pytest.raises(GaalError, match="register_method"):
            register_method(name, object)


@pytest.mark.parametrize("experiment", ["runs", "report", "health"])
def test_an_experiment_named_like_a_report_file_never_breaks_report_out(tmp_path, finished, experiment):
    """Rows that vary more than the method make the experiment's own table, named after it."""
    root = tmp_path / "runs"
    for method, seed, lr in (("concat", 2022, 0.001), ("gaal", 2022, 0.001), ("gaal", 2023, 0.5)):
        run = copy_run(finished, root / experiment / f"{method}_{lr}" / f"seed{seed}")
        report = json.loads((run / "report.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        report["experiment"], report["method"], report["seed"] = experiment, method, seed
        config["name"], config["method"], config["seed"], config["train"]["lr"] = experiment, method, seed, lr
        (run / "report.json").write_text(json.dumps(report))
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "predictions.safetensors").unlink()
    out = tmp_path / "rep"
    old = invoke("report", root / experiment / "concat_0.001", "--out", out)
    assert old.exit_code == 0, old.output
    result = invoke("report", root, "--out", out)
    assert result.exit_code == 0, result.output
    assert len((out / "runs.csv").read_text().splitlines()) == 4  # the header and the three runs
    assert (out / "report.md").read_text().startswith("# Results under")
    assert (out / "health.md").read_text().startswith("Checks")
    assert (out / f"{experiment}_experiment.md").is_file() and (out / f"{experiment}_experiment.csv").is_file()
