"""Helpers shared by the hostile-input tests (tests/test_hostile_*.py): the CLI in process and in a
fresh one, the refusal every bad input must give, snapshots of what a command may not change."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY
from typer.testing import CliRunner

import gaal_cli
from gaal_cli.cli import app

runner = CliRunner()
CHECKOUT = str(Path(gaal_cli.__file__).resolve().parents[1])
TINY_RUN = [*TINY, "train.threads=1"]
#: a user-table run's small settings (one epoch, concat)
TABLE_RUN = [
    "data.image_size=16",
    "data.batch_size=16",
    "model.feature_dim=16",
    "model.tabular_hidden=[16]",
    "train.epochs=1",
    "train.device=cpu",
    "train.threads=1",
    "method=concat",
]


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result, *needles):
    """Exit code 2, one paragraph, no traceback, each needle in the output."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for needle in needles:
        assert needle in result.output, result.output


def run_cli(args, timeout=120, cwd=None, env=None):
    """The CLI in a fresh process, with a timeout (a FIFO that blocks fails the test, not the suite):
    its exit code and its output with whitespace runs joined."""
    env = {**os.environ, "PYTHONPATH": CHECKOUT, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "gaal_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def snapshot(folder: Path) -> dict:
    """Every entry under `folder` (links not followed): its kind, bytes and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            found[path] = ("link", os.readlink(path))
        elif path.is_file():
            found[path] = ("file", path.read_bytes(), info.st_mtime_ns)
        else:
            found[path] = ("folder",)
    return found


def train_tiny(out, *extra):
    result = invoke("train", "--out", out, "-q", *sets([*TINY_RUN, *extra]))
    assert result.exit_code == 0, result.output
    return out


def copy_run(template: Path, folder: Path) -> Path:
    shutil.copytree(template, folder, symlinks=True)
    return folder


def train_table(table: Path, out: Path):
    args = ["train", "--dataset", table, "--target", "species", "--image-column", "photo", "-q", "--out", out]
    return invoke(*args, *sets(TABLE_RUN))
