"""Runs that need another run's checkpoint: a teacher (KD), a fixed model (FMR), a pretrained
encoder (`model.init_from`). One concept for all of them, so no method loads files itself.

A dependency is a config key whose value names a run folder or a checkpoint file:
`model.init_from`, and each setting a method lists in `dependency_fields` (Config.dependencies).
Here it is

- found: a run folder must be finished (DONE); a run still training has a checkpoint.pt, but
  that is only its best epoch so far, and training on it would make the result depend on timing;
- read with `torch.load(weights_only=True)`: a checkpoint is a plain dict (model state, config,
  the data's classes and field lengths), and a file from a stranger runs no code;
- checked against this run's data (number of classes, tabular field lengths) before any weight
  is used, so a teacher trained on other data is a clear error rather than a shape mismatch;
- fingerprinted (sha256): the checkpoint and report.json of the run that uses it record path,
  hash and what it was, and a sweep treats a finished run whose dependency has changed since
  as stale (gaal_cli.sweeps.runner).

A method receives its dependencies already loaded (`dependencies={field: Dependency}`); a frozen
model (`Dependency.model`) is built only where its weights are present, i.e. for training, not
when a finished run is evaluated (its checkpoint keeps each dependency's config, enough to
rebuild the method's shapes). Building it is the trained run's job
(gaal_cli.training.trained_run.load_dependencies): this module reads and checks files, and builds no
method, so the methods can import it.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from gaal_cli.config import Config
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.untrusted import check_checkpoint, read_bytes
from gaal_cli.runs.folder import RunFolder

#: keys a dependency's checkpoint must hold
REQUIRED = ("model", "config")
#: a checkpoint is read whole into memory once, hashed, then loaded from those bytes
CHECKPOINT_MAX_BYTES = 8_000_000_000


@dataclass
class Dependency:
    """Another run's checkpoint, as this run uses it.

    Attributes:
        key: the dotted config key that names it (e.g. `methods.kd.teacher`).
        file: its checkpoint file.
        sha256: hash of that file when it was loaded.
        config: its own config.
        state: its model state dict; None when rebuilt from a record (evaluation only).
        data: the classes and field lengths it was trained on, if its checkpoint says.
        records: its own dependencies, as its checkpoint recorded them (a teacher's teacher).
        model: the frozen model (eval mode, no gradients), when built by
            `trained_run.load_dependencies`.
    """

    key: str
    file: Path
    sha256: str
    config: Config
    state: dict[str, torch.Tensor] | None = None
    data: dict[str, Any] | None = None
    records: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """What report.json records: where, which file contents, and what the run was."""
        return {
            "path": str(self.file),
            "sha256": self.sha256,
            "experiment": self.config.name,
            "method": self.config.method,
            "seed": self.config.seed,
        }

    def record(self) -> dict[str, Any]:
        """What a checkpoint records: the summary plus the config (to rebuild shapes without the file)."""
        return {**self.summary(), "config": self.config.model_dump(mode="json"), "data": self.data}

    @classmethod
    def from_record(cls, key: str, record: dict[str, Any]) -> Dependency:
        """A dependency known only from a checkpoint's record (no weights)."""
        try:
            config = Config.model_validate(record["config"])
        except (ValidationError, GaalError) as err:
            raise GaalError(
                f"the recorded config of this dependency does not validate ({str(err).splitlines()[0]})",
                source=record.get("path"),
                field=key,
            ) from None
        return cls(key, Path(record["path"]), record["sha256"], config, data=record.get("data"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_file(path: str | Path, key: str) -> Path:
    """The checkpoint a dependency names: `<run>/checkpoint.pt` of a finished run, or a file.

    Raises:
        GaalError: nothing there, or a run folder whose training has not finished.
    """
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        if not run.done:
            raise GaalError(
                "is an unfinished run (no DONE marker): train it to the end first (rerun its sweep or "
                "`gaal train`); its checkpoint.pt so far is only the best epoch yet",
                source=str(path),
                field=key,
            )
        path = run.file(RunFolder.CHECKPOINT)
        if not path.is_file():
            raise GaalError(
                "is a finished run without its checkpoint.pt (committed results keep none): delete the "
                "folder and train it again to use it",
                source=str(path.parent),
                field=key,
            )
    if not path.is_file():
        raise GaalError("no such run folder or checkpoint file", source=str(path), field=key)
    return path


def read_dependency(path: str | Path, key: str) -> Dependency:
    """Load another run's checkpoint with `weights_only=True` and validate its config.

    Raises:
        GaalError: missing or unfinished, unreadable, not a gaal checkpoint, or a config that
            no longer validates.
    """
    file = checkpoint_file(path, key)
    data = read_bytes(file, CHECKPOINT_MAX_BYTES, field=key)  # read once: the hash is of the bytes loaded
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt, foreign or code-carrying file
        raise GaalError(
            f"cannot read it as a checkpoint of plain data ({type(err).__name__}: {str(err).splitlines()[0]})",
            source=str(file),
            field=key,
        ) from None
    if not isinstance(state, dict) or not set(REQUIRED) <= state.keys():
        raise GaalError(
            "not a gaal checkpoint (expected a dict with 'model' and 'config')", source=str(file), field=key
        )
    try:
        check_checkpoint(state, file)
        config = Config.model_validate(state["config"])
    except ValidationError as err:
        raise GaalError(
            f"its config does not validate ({str(err).splitlines()[0]})", source=str(file), field=key
        ) from None
    except GaalError as err:
        raise GaalError(err.message, source=str(file), field=f"{key}: {err.field}" if err.field else key) from None
    records = state.get("dependencies") or {}
    sha256 = hashlib.sha256(data).hexdigest()
    return Dependency(key, file, sha256, config, state["model"], state.get("data"), records)


def check_matches_data(dep: Dependency, num_classes: int, field_lengths: tuple[int, ...]) -> None:
    """A dependency must have been trained on the same label set and table layout.

    Raises:
        GaalError: names what differs.
    """
    if dep.data is None:
        return  # an older checkpoint: loading the state dict into this data's shapes checks it
    problems = []
    if dep.data.get("classes") != num_classes:
        problems.append(f"{dep.data.get('classes')} classes, this run's data has {num_classes}")
    if tuple(dep.data.get("field_lengths", ())) != tuple(field_lengths):
        problems.append(f"field lengths {list(dep.data.get('field_lengths', []))}, this run's {list(field_lengths)}")
    if problems:
        raise GaalError(
            f"was trained on other data ({'; '.join(problems)}): a teacher or fixed model must share the "
            "classes and the table columns of the run that uses it",
            source=str(dep.file),
            field=dep.key,
        )


def architecture_only(config: Config) -> Config:
    """The config that rebuilds a dependency's modules without reading any file again."""
    model = config.model.model_copy(update={"pretrained": False, "weights": None, "init_from": None})
    return config.model_copy(update={"model": model})


def recorded_dependencies(records: dict[str, dict[str, Any]] | None) -> dict[str, Dependency]:
    """Dependencies rebuilt from a checkpoint's records: configs and hashes, no weights."""
    return {key: Dependency.from_record(key, record) for key, record in (records or {}).items()}


def encoder_state(dep: Dependency, modality: str) -> dict[str, torch.Tensor]:
    """The weights of one encoder (`encoders.<modality>.*`) in a dependency's model state."""
    prefix = f"encoders.{modality}."
    found = {k[len(prefix) :]: v for k, v in (dep.state or {}).items() if k.startswith(prefix)}
    if not found:
        raise GaalError(f"its model has no {modality} encoder to start from", source=str(dep.file), field=dep.key)
    return found


def init_encoders(encoders, dep: Dependency, modalities: list[str]) -> None:
    """Start `encoders` from a dependency's trained encoders (`model.init_from`).

    Raises:
        GaalError: an encoder whose architecture differs (backbone, widths).
    """
    for modality in modalities:
        try:
            getattr(encoders, modality).load_state_dict(encoder_state(dep, modality))
        except RuntimeError as err:
            raise GaalError(
                f"its {modality} encoder does not fit this run's (backbone, feature_dim and tabular_hidden must "
                f"match: {str(err).splitlines()[0]})",
                source=str(dep.file),
                field=dep.key,
            ) from None


def required_dependency(dependencies: dict[str, Dependency], field: str, method: str) -> Dependency:
    """A method's loaded dependency `field` (its teacher, its fixed model), or a GaalError saying
    how to name one: every method that needs another run's checkpoint asks through here."""
    dep = dependencies.get(field)
    if dep is None:
        raise GaalError(
            f"{method} needs another run's checkpoint: set methods.{method}.{field}=RUN_FOLDER (a finished run) "
            "or a checkpoint file",
            field=f"methods.{method}.{field}",
        )
    return dep


def changed_dependencies(folder: RunFolder) -> list[str]:
    """Dependencies of a finished run whose checkpoint now differs from the one it used.

    A checkpoint that is gone changes nothing: committed results keep no checkpoints, and a
    teacher trained again writes a new one, which then differs.
    """
    recorded = folder.read_report().get("dependencies", {})
    return [record["path"] for record in recorded.values() if file_hash(record["path"]) not in (None, record["sha256"])]


def file_hash(path: str) -> str | None:
    """sha256 of a file (None when missing), computed once per file version in this process."""
    file = Path(path)
    if not file.is_file():
        return None
    stat = file.stat()
    return _hash_version(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _hash_version(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(Path(path))
