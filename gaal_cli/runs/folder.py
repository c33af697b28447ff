"""Run folders: the fixed layout every training run writes, and nothing else.

    <run>/config.yaml     resolved config (written when training starts)
    <run>/metrics.jsonl   one JSON line per finished epoch
    <run>/steps.jsonl     one JSON line per training step: the method's diagnostics
                          (losses, gradient cosines and norms, its own coefficients)
    <run>/checkpoint.pt   best epoch so far (plain dict: model, epoch, score, config)
    <run>/last.pt         latest epoch with optimiser state, for resuming; removed when done
    <run>/report.json     final metrics; present only when the run finished
    <run>/predictions.safetensors  the test predictions per sample and head (gaal_cli.runs.predictions_file)
    <run>/DONE            marker written last; reruns skip a folder that has it
    <run>/train.log       output of the run when a sweep launched it (gaal_cli.sweeps.runner)
    <run>/.lock           held by the process writing the run (gaal_cli.foundation.locks), naming it

A finished run is final: training it again with the same config changes nothing, and
`--restart` trains the new run aside, in `<parent>/.<name>.restart/`, and swaps the two folders
only once it has finished (`RunFolder.replace_with`), so a kill at any moment leaves the old
result whole.

Single files are written through gaal_cli.foundation.files.write_file (a temporary name, then a rename),
so a killed run never leaves a half-written one; the .jsonl logs are appended a line at a time
and a line cut short by a kill is skipped when read. Every JSON file is strict JSON: a NaN or infinite number is written
as null. Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain data only,
so loading a shared run folder cannot run code.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from gaal_cli.config import Config, method_dependency_fields, read_yaml_file
from gaal_cli.data.recipes import TABLE_SUFFIXES
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import append_file, os_error, own_folder, refuse_planted, remove_tree, write_file
from gaal_cli.foundation.locks import is_locked, read_holder
from gaal_cli.foundation.untrusted import check_checkpoint, check_report, iter_jsonl, open_regular, read_json
from gaal_cli.runs.predictions_file import FILE_NAME as PREDICTIONS_FILE

# settings of where and how fast a run trains, not of what it computes: a finished run that
# differs from a config only in these is still a run of that config
WHERE_KEYS = {
    "data.dir",
    "data.cache",
    "data.num_workers",
    "data.augment_on",
    "data.eval_batch_size",
    "train.device",
    "train.threads",
    "train.tensorboard",  # a second view of metrics.jsonl's scalars
}
# what last.pt holds beyond a checkpoint (see engine.save_epoch)
RESUME_KEYS = {"model", "config", "epoch", "optimizer", "scheduler", "rng", "best"}
RESTART_HINT = "rerun the same `gaal train` command with --restart to train the run again from epoch 1"


def to_json(data: Any, **kwargs: Any) -> str:
    """Strict JSON (what any JSON reader accepts): a NaN or infinite number becomes null."""
    return json.dumps(_finite(data), allow_nan=False, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def load_state(file: Path, map_location: Any = "cpu", hint: str = "") -> dict[str, Any]:
    """A checkpoint's dict, read with `weights_only=True`: a pickle that would build any other
    object (and so could run code) is refused, not loaded.

    Raises:
        GaalError: names the file: not tensors and plain data, unreadable or cut short, not a dict.
    """
    hint = f"; {hint}" if hint else ""
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise GaalError(
                "holds objects other than tensors and plain data (dict, list, number, string): "
                f"{_unpickling_reason(err)}; it is refused because loading them could run code. gaal writes "
                f"only tensors and plain data{hint}",
                source=str(file),
            ) from None
        raise GaalError(f"is not a readable checkpoint ({_first_line(err)}){hint}", source=str(file)) from None
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise GaalError(
            f"is not a readable checkpoint, cut short or not written by torch ({type(err).__name__}: "
            f"{_first_line(err)}){hint}",
            source=str(file),
        ) from None
    if not isinstance(state, dict):
        raise GaalError(
            f"is not a gaal checkpoint (expected a dict, got {type(state).__name__}){hint}", source=str(file)
        )
    return state


def _unpickling_reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that names the object (not its advice to load unsafely)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(err).__name__])[0].rstrip(".")


def _first_line(err: Exception) -> str:
    line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return line if len(line) <= 200 else line[:200] + "..."


def changed_keys(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = list(wanted) + [k for k in saved if k not in wanted]
        return [c for k in keys for c in changed_keys(saved.get(k), wanted.get(k), f"{prefix}{k}.")]
    return [] if saved == wanted else [prefix.rstrip(".")]


def result_changes(saved: Any, wanted: dict) -> list[str]:
    """Changed keys that can change a run's results (paths, devices and threads cannot).

    A key that gaal gained after the run finished (absent from its saved config) is no change
    when today's value is the key's default: every new option defaults to the behaviour runs
    had before it existed, so a finished run stays current until someone sets the new key.
    """
    method = wanted.get("method")
    defaults = _default_tree(method if isinstance(method, str) else None)
    return [
        k
        for k in changed_keys(saved, wanted)
        if k not in WHERE_KEYS and not _added_at_default(k, saved, wanted, defaults)
    ]


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


@functools.cache
def _default_tree(method: Any) -> dict | None:
    """Every key's default for a run of `method` (None when the method is unknown); computed once
    per method, as a sweep's status check asks for every run (callers only read it)."""
    try:
        return Config(method=method).resolved()
    except Exception:  # an unknown or malformed method: no defaults to excuse anything
        return None


def _added_at_default(key: str, saved: Any, wanted: dict, defaults: dict | None) -> bool:
    if defaults is None or _lookup(saved, key) is not _MISSING:
        return False
    today, default = _lookup(wanted, key), _lookup(defaults, key)
    return today is not _MISSING and today == default


class RunFolder:
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    STEPS = "steps.jsonl"
    CHECKPOINT = "checkpoint.pt"
    LAST = "last.pt"
    REPORT = "report.json"
    # the data's fitted encoding, when there is one: a readable copy of the checkpoint's, which
    # eval and predict read (so a checkpoint file alone suffices)
    PREPROCESSING = "preprocessing.json"
    DONE = "DONE"
    LOG = "train.log"
    #: the test predictions (gaal_cli.runs.predictions_file), written before DONE; `gaal eval
    #: --write-predictions` writes it for an older finished run that lacks it
    PREDICTIONS = PREDICTIONS_FILE
    #: the files of the layout: no command but the run's own training writes them
    OWN_FILES = (CONFIG, METRICS, STEPS, CHECKPOINT, LAST, REPORT, PREPROCESSING, PREDICTIONS, DONE, LOG, ".lock")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        """Whether the run finished: DONE and report.json are there, and not as links (a link planted
        at either makes no finished run, and is never read as one)."""
        return all(_present(self.file(name)) for name in (self.DONE, self.REPORT))

    @property
    def holds_run(self) -> bool:
        """Whether training wrote here, finished or not (a checkpoint file alone is no run)."""
        return any(self.file(name).is_file() for name in (self.CONFIG, self.METRICS, self.LAST, self.DONE))

    def own_files(self) -> list[Path]:
        """The layout's file names here, when the folder holds a run: no other command may write them."""
        return [self.file(name) for name in self.OWN_FILES] if self.holds_run else []

    def state(self) -> str:
        """'finished', or what an unfinished folder is: being trained (by whom), interrupted
        (after which epoch), or holding no run."""
        if self.done:
            return "finished"
        if is_locked(self.path):
            holder = read_holder(self.path)
            return "being trained now" + (f" by {holder.describe()}" if holder else "")
        epochs = [row.get("epoch") for row in self.read_metrics() if isinstance(row, dict)]
        if self.file(self.LAST).exists() or epochs:
            last = max((e for e in epochs if isinstance(e, int)), default=None)
            return f"unfinished (interrupted{f' after epoch {last}' if last else ''}; no report.json or DONE)"
        return "unfinished (no epoch trained)"

    def aside(self) -> RunFolder:
        """Where `--restart` trains a finished run again while the old result stays in place."""
        return RunFolder(self.path.parent / f".{self.path.name}.restart")

    def replace_with(self, new: RunFolder) -> None:
        """Put the finished run `new` in this folder's place and remove the old one.

        The two folders are exchanged in one atomic step where the system can (Linux's
        renameat2), so any reader sees the old run or the new one; elsewhere in two renames,
        with the old folder kept under `.<name>.replaced` until the new one is in place.

        Raises:
            GaalError: the OS refused a rename.
        """
        for folder in (new.path, self.path):
            refuse_planted(folder, folder=True)  # a link is never renamed over, nor into place
        try:
            if _exchange(new.path, self.path):
                remove_tree(new.path)  # now the old run
                return
            old = self.path.parent / f".{self.path.name}.replaced"
            remove_tree(old)
            os.rename(self.path, old)
            os.rename(new.path, self.path)
            remove_tree(old)
        except OSError as err:
            raise os_error(err, self.path, "cannot be replaced by the restarted run") from None

    def recover(self) -> None:
        """Undo a swap cut between its two renames (see `replace_with`): the old run returns."""
        old = self.path.parent / f".{self.path.name}.replaced"
        if refuse_planted(old, folder=True) and not os.path.lexists(self.path):
            os.rename(old, self.path)

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
        own_folder(self.path)
        self.file(self.REPORT).unlink(missing_ok=True)
        self.file(self.DONE).unlink(missing_ok=True)
        self.file(self.PREDICTIONS).unlink(missing_ok=True)
        for name in (self.METRICS, self.STEPS):
            if resume_epoch is None:
                self.file(name).unlink(missing_ok=True)
            else:
                rows = [r for r in _read_jsonl(self.file(name)) if _epoch(r) <= resume_epoch]
                self.write(name, "".join(to_json(r) + "\n" for r in rows))
        if resume_epoch is None:
            self.file(self.LAST).unlink(missing_ok=True)
        self.write(self.CONFIG, yaml.safe_dump(config, sort_keys=False))

    def resumable(self, config: dict[str, Any]) -> dict | None:
        """The last-epoch state of an interrupted run with the same config, if there is one.

        Raises:
            GaalError: a last.pt that cannot be read or is not gaal's; the message says how to restart.
        """
        last = self.file(self.LAST)
        if not last.exists():
            return None
        state = load_state(last, hint=RESTART_HINT)
        missing = RESUME_KEYS - state.keys()
        if missing:
            raise GaalError(
                f"is not a gaal resume state (no {', '.join(sorted(missing))}); {RESTART_HINT}", source=str(last)
            )
        best = state["best"]
        if not isinstance(state["epoch"], int) or not (
            isinstance(best, dict) and {"score", "epoch", "stale"} <= best.keys()
        ):
            raise GaalError(f"is not a gaal resume state (bad 'epoch' or 'best'); {RESTART_HINT}", source=str(last))
        return state if state["config"] == config else None

    def stale_keys(self, config: dict[str, Any]) -> list[str]:
        """The result-changing keys in which the finished run here differs from `config`
        (none when no run finished here).

        Raises:
            GaalError: the finished run's config.yaml cannot be read.
        """
        if not self.done:
            return []
        saved = read_yaml_file(self.file(self.CONFIG))
        if not isinstance(saved, dict):
            return ["config.yaml (not a mapping)"]
        return [key for key in result_changes(saved, config) if not self.same_dependency(key, saved, config)]

    def same_dependency(self, key: str, saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
        """Whether a dependency setting spelled differently (`methods.kd.teacher`, `model.init_from`,
        `model.weights`) names what this run was trained from: the same folder or file once
        resolved, or a file with the hash this run's report.json recorded.

        A relative path is resolved from the current folder and, for the saved one, from each
        folder above this run (a sweep ran from one of them): `--results` given as an absolute
        path, a sweep started elsewhere and `x/../x` all name the same run.
        """
        if key not in dependency_keys(wanted):
            return False
        before, now = _lookup(saved, key), _lookup(wanted, key)
        if not (isinstance(before, str) and isinstance(now, str)):
            return False
        target = _run_of(Path(now).resolve())
        bases = [Path.cwd(), *self.path.resolve().parents]
        if any(_run_of((base / before).resolve()) == target for base in bases):
            return True
        try:
            recorded = self.read_report().get("dependencies", {}).get(key, {}).get("sha256")
        except GaalError:
            return False
        checkpoint = target / self.CHECKPOINT if target.is_dir() else target
        return recorded is not None and checkpoint.is_file() and sha256_of(checkpoint) == recorded

    def refuse_overwrite(self, config: dict[str, Any]) -> None:
        """A finished run of another config is never overwritten silently (the sweeps' rule).

        Raises:
            GaalError: names the folder and the keys that differ.
        """
        keys = self.stale_keys(config)
        other = self.other_dataset(config) if keys else None
        if other:
            raise GaalError(
                f"holds a finished run on another dataset ({other}); choose another --out "
                "(--restart would replace that run)",
                source=str(self.path),
            )
        if keys:
            raise GaalError(
                f"holds a finished run of another config (differs in: {', '.join(keys[:5])}); "
                "choose another --out to keep it (--restart would replace it with the new run)",
                source=str(self.path),
            )

    def other_dataset(self, config: dict[str, Any]) -> str | None:
        """How the finished run here is on another dataset than `config`'s, or None when it is on
        the same one (a table named by another path, with the content the run recorded, is the same)."""
        saved = read_yaml_file(self.file(self.CONFIG)) if self.done else None
        before = _lookup(saved, "data.name") if isinstance(saved, dict) else _MISSING
        now = _lookup(config, "data.name")
        if not isinstance(before, str) or before == now:
            return None
        try:
            recorded = self.read_report().get("data", {}).get("table_sha256")
        except (GaalError, AttributeError):
            recorded = None
        if recorded is not None and isinstance(now, str) and Path(now).is_file() and sha256_of(Path(now)) == recorded:
            return None
        return f"{before}, not {now}"

    def log_epoch(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.file(self.METRICS), [record])

    def log_steps(self, epoch: int, steps: list[dict[str, Any]]) -> None:
        _append_jsonl(self.file(self.STEPS), [{"epoch": epoch, **row} for row in steps])

    def read_metrics(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.file(self.METRICS))

    def read_steps(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.file(self.STEPS))

    def write(self, name: str, content: bytes | str) -> None:
        """Write one of the run's files (gaal_cli.foundation.files.write_file: aside, then renamed)."""
        write_file(self.file(name), content)

    def save(self, name: str, state: dict[str, Any]) -> None:
        write_file(self.file(name), lambda fh: torch.save(state, fh))

    def finish(self, report: dict[str, Any]) -> None:
        self.write(self.REPORT, to_json(report, indent=2))
        self.file(self.LAST).unlink(missing_ok=True)
        self.write(self.DONE, "")

    def read_report(self) -> dict[str, Any]:
        """The run's report.json.

        Raises:
            GaalError: it cannot be read (a FIFO, too large, nested too deep), is not a JSON
            object, or a field a command uses has the wrong type (`untrusted.check_report`).
        """
        file = self.file(self.REPORT)
        return check_report(read_json(file), file)

    def iter_metrics(self) -> Iterator[dict[str, Any]]:
        """metrics.jsonl's rows one at a time (a reader of many runs never holds a log whole)."""
        return iter_jsonl(self.file(self.METRICS))

    def iter_steps(self) -> Iterator[dict[str, Any]]:
        """steps.jsonl's rows one at a time: it holds a row per training step."""
        return iter_jsonl(self.file(self.STEPS))


def dependency_keys(config: dict[str, Any]) -> set[str]:
    """The keys of a resolved config that name a file a run is trained from: another run (see
    Config.dependencies) or the starting weights (`model.weights`)."""
    keys = {"model.init_from", "model.weights"}
    method = config.get("method")
    if isinstance(method, str):
        keys |= {f"methods.{method}.{field}" for field in method_dependency_fields(method)}
    return keys


def _present(path: Path) -> bool:
    return path.exists() and not path.is_symlink()


def _run_of(path: Path) -> Path:
    """The run folder a dependency names: a run's checkpoint.pt stands for its folder."""
    return path.parent if path.name == RunFolder.CHECKPOINT else path


def sha256_of(path: Path) -> str:
    """sha256 of a regular file, read in blocks."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_to_evaluate(path: str | Path, last: bool = False) -> tuple[Path, str | None]:
    """The checkpoint `gaal eval` reads for `path`, and a note when it is no finished result.

    A run folder must hold a finished run: an unfinished run's checkpoint.pt is only its best
    epoch so far, and a number from it would pass for the run's result. `last` takes the last
    saved epoch (last.pt) of an unfinished run instead, and the note says so. A checkpoint
    file named directly is read as it is, with a note when it belongs to an unfinished run.

    Raises:
        GaalError: an unfinished run without `last` (naming its state), or no last.pt with it.
    """
    path = Path(path)
    if not path.is_dir():
        if last:
            raise GaalError("--last takes a run folder, not a checkpoint file", source=str(path))
        folder = RunFolder(path.parent)
        if path.name in (RunFolder.CHECKPOINT, RunFolder.LAST) and folder.holds_run and not folder.done:
            return path, f"{path} belongs to a run that is {folder.state()}: this is not a finished result"
        return path, None
    run = RunFolder(path)
    if last:
        file = run.file(RunFolder.LAST)
        if not file.is_file():
            finished = "; evaluate it without --last" if run.done else ""
            raise GaalError(f"has no last.pt to evaluate (the run is {run.state()}{finished})", source=str(path))
        return file, f"evaluating {file}, the last saved epoch of a run that is {run.state()}: not a finished result"
    if run.holds_run and not run.done:
        raise GaalError(
            f"holds a run that is {run.state()}: its checkpoint.pt is only the best epoch so far, not a result. "
            "Finish it with the same `gaal train` command, or evaluate its last saved epoch with --last",
            source=str(path),
        )
    return path, None


def default_run_folder(config: Any, root: Path = Path("results")) -> Path:
    """`<root>/<experiment>/<dataset>/<method>/seed<seed>`: runs on different datasets never share
    a folder (see `run_dataset_folder`)."""
    return root / config.name / run_dataset_folder(config.data.name) / config.method / f"seed{config.seed}"


def run_dataset_folder(name: str) -> str:
    """The folder of a dataset's runs: its name, or for a table the file's stem and a short hash of
    its resolved path and content (`cars-3f2a9c1b`), so that two tables called `train.csv` never
    share a default folder, and an edited table starts new runs rather than meeting its old ones."""
    if not name.lower().endswith(TABLE_SUFFIXES):
        return dataset_folder(name)
    path = Path(name)
    digest = hashlib.sha256(str(path.resolve()).encode())
    if path.is_file():
        digest.update(sha256_of(path).encode())
    return f"{dataset_folder(path.stem)}-{digest.hexdigest()[:8]}"


def dataset_folder(name: str) -> str:
    """One safe folder name for a dataset: `data/cars.csv` -> `cars.csv`, `/x/a b.csv` -> `a_b.csv`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip(".")
    return safe or "dataset"


def finished_runs(root: str | Path) -> list[RunFolder]:
    """Every finished run folder at or below `root` (an unfinished one is never counted)."""
    root = Path(root)
    reports = (r for r in sorted(root.rglob(RunFolder.REPORT)) if not _hidden(r.parent.relative_to(root)))
    return [folder for folder in (RunFolder(r.parent) for r in reports) if folder.done]


def _hidden(relative: Path) -> bool:
    """A folder gaal keeps out of sight: a run restarted aside, one being replaced, a staging folder."""
    return any(part.startswith(".") for part in relative.parts)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd, exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    append_file(path, "".join(to_json(row) + "\n" for row in rows).encode())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line cut short by a killed process is skipped (as is a
    FIFO or an overlong line: `untrusted.iter_jsonl`)."""
    return list(iter_jsonl(path))


def _epoch(row: dict[str, Any]) -> float:
    """A log row's epoch; a row without a whole epoch sorts after every epoch (it is dropped)."""
    epoch = row.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else math.inf


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Load a checkpoint from a run folder or a checkpoint file, as tensors and plain data only.

    `weights_only=True`: a checkpoint is a file from a stranger, and unpickling anything else
    (a class, a function reference) could run code.

    Raises:
        GaalError: no checkpoint there, one holding other objects, not a gaal checkpoint, or a
            field of the wrong type or with non-finite numbers (`untrusted.check_checkpoint`).
    """
    path = Path(path)
    file = path / RunFolder.CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise GaalError("no checkpoint found (expected a run folder or a checkpoint.pt file)", source=str(path))
    state = load_state(file)
    if not {"model", "config"} <= state.keys():
        raise GaalError(
            "not a gaal checkpoint: expected a mapping under each of the keys 'model' and 'config'", source=str(file)
        )
    check_checkpoint(state, file)
    return state, file
