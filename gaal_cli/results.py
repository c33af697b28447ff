"""Run folders: the fixed layout every training run writes, and nothing else.

    <run>/config.yaml     resolved config (written when training starts)
    <run>/metrics.jsonl   one JSON line per finished epoch
    <run>/steps.jsonl     one JSON line per training step: the method's diagnostics
                          (losses, gradient cosines and norms, its own coefficients)
    <run>/checkpoint.pt   best epoch so far (plain dict: model, epoch, score, config)
    <run>/last.pt         latest epoch with optimiser state, for resuming; removed when done
    <run>/report.json     final metrics; present only when the run finished
    <run>/DONE            marker written last; reruns skip a folder that has it
    <run>/train.log       output of the run when a sweep launched it (gaal_cli.sweep)
    <run>/.lock           held by the process training the run, when a sweep launched it

Single files are written to a temporary name and renamed, so a killed run never leaves a
half-written one; the .jsonl logs are appended a line at a time and a line cut short by a
kill is skipped when read.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import yaml

from gaal_cli.errors import GaalError


def atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunFolder:
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    STEPS = "steps.jsonl"
    CHECKPOINT = "checkpoint.pt"
    LAST = "last.pt"
    REPORT = "report.json"
    PREPROCESSING = "preprocessing.json"  # a user table's fitted encoding (TableState), when there is one
    DONE = "DONE"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        return self.file(self.DONE).exists() and self.file(self.REPORT).exists()

    def check_writable(self) -> None:
        """Fail early, before any work, if the folder cannot be created."""
        existing = next((p for p in [self.path, *self.path.parents] if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise GaalError("is a file, expected a folder for the run", source=str(existing), field="--out")
        if existing is not None and not os.access(existing, os.W_OK):
            raise GaalError("is not writable", source=str(existing), field="--out")

    def start(self, config: dict[str, Any], resume_epoch: int | None) -> None:
        """Create the folder and write config.yaml.

        Without `resume_epoch` an earlier attempt is cleared; with it, epoch lines past that
        epoch (written after the last saved state of an interrupted run) are dropped.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(self.REPORT).unlink(missing_ok=True)
        self.file(self.DONE).unlink(missing_ok=True)
        for name in (self.METRICS, self.STEPS):
            if resume_epoch is None:
                self.file(name).unlink(missing_ok=True)
            else:
                rows = [r for r in _read_jsonl(self.file(name)) if r["epoch"] <= resume_epoch]
                atomic_write(self.file(name), "".join(json.dumps(r) + "\n" for r in rows))
        if resume_epoch is None:
            self.file(self.LAST).unlink(missing_ok=True)
        atomic_write(self.file(self.CONFIG), yaml.safe_dump(config, sort_keys=False))

    def resumable(self, config: dict[str, Any]) -> dict | None:
        """The last-epoch state of an interrupted run with the same config, if there is one."""
        last = self.file(self.LAST)
        if not last.exists():
            return None
        state = torch.load(last, map_location="cpu", weights_only=False)
        return state if state.get("config") == config else None

    def log_epoch(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.file(self.METRICS), [record])

    def log_steps(self, epoch: int, steps: list[dict[str, Any]]) -> None:
        _append_jsonl(self.file(self.STEPS), [{"epoch": epoch, **row} for row in steps])

    def read_metrics(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.file(self.METRICS))

    def read_steps(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.file(self.STEPS))

    def save(self, name: str, state: dict[str, Any]) -> None:
        tmp = self.file(f".{name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.file(name))

    def finish(self, report: dict[str, Any]) -> None:
        atomic_write(self.file(self.REPORT), json.dumps(report, indent=2))
        self.file(self.LAST).unlink(missing_ok=True)
        atomic_write(self.file(self.DONE), "")

    def read_report(self) -> dict[str, Any]:
        return json.loads(self.file(self.REPORT).read_text())


def finished_runs(root: str | Path) -> list[RunFolder]:
    """Every finished run folder at or below `root` (an unfinished one is never counted)."""
    folders = (RunFolder(report.parent) for report in sorted(Path(root).rglob(RunFolder.REPORT)))
    return [folder for folder in folders if folder.done]


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(row) + "\n" for row in rows))
        fh.flush()
        os.fsync(fh.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line cut short by a killed process is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Load a checkpoint from a run folder or a checkpoint file, as tensors and plain data only.

    `weights_only=True`: a checkpoint is a file from a stranger, and unpickling anything else
    (a class, a function reference) could run code.

    Raises:
        GaalError: no checkpoint there, one holding other objects, or not a gaal checkpoint.
    """
    path = Path(path)
    file = path / RunFolder.CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise GaalError("no checkpoint found (expected a run folder or a checkpoint.pt file)", source=str(path))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise GaalError(
            "refused: the checkpoint holds objects other than tensors and plain data, and loading them "
            f"could run code ({_unpickling_reason(err)})",
            source=str(file),
        ) from None
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise GaalError(f"cannot read the checkpoint ({type(err).__name__}: {err})", source=str(file)) from None
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise GaalError("not a gaal checkpoint (expected keys 'model' and 'config')", source=str(file))
    return state, file


def _unpickling_reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that names the object (not its advice to load unsafely)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(err).__name__])[0].rstrip(".")
