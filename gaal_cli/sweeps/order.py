"""The order a sweep's runs start in: after the runs of the same sweep they depend on.

A run depends on another run's checkpoint through a setting that names a run folder (a KD
teacher, FMR's fixed model, `model.init_from`; gaal_cli.runs.dependencies). Only the folders are
ordered here; waiting for them while they train is the scheduler's (gaal_cli.sweeps.scheduler).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from gaal_cli.foundation.errors import GaalError

if TYPE_CHECKING:
    from gaal_cli.config import Config


class Ordered(Protocol):
    """What ordering reads of a run: its folder, the folders it needs, its name in errors."""

    folder: Path
    needs: tuple[Path, ...]

    @property
    def label(self) -> str: ...


R = TypeVar("R", bound=Ordered)


def dependency_folders(config: Config) -> tuple[Path, ...]:
    """The run folders a run depends on. A dependency named as a checkpoint file is taken as it
    is: nothing to order or wait for (the run reports it if it is missing)."""
    paths = (Path(value) for value in config.dependencies().values())
    return tuple(p for p in paths if p.suffix not in (".pt", ".pth"))


def dependencies_first(runs: list[R], source: Path) -> list[R]:
    """The runs in file order, except that a run comes after the runs of this sweep it needs.

    Raises:
        GaalError: runs that need each other (a cycle).
    """
    # keyed by resolved path: `x/../x` and an absolute --results name the same run
    by_folder: dict[Path, R] = {run.folder.resolve(): run for run in runs}
    ordered: list[R] = []
    placed: set[Path] = set()
    visiting: set[Path] = set()

    def place(run: R) -> None:
        if run.folder in placed:
            return
        if run.folder in visiting:
            raise GaalError(f"{run.label} depends on itself through its dependencies", source=str(source))
        visiting.add(run.folder)
        for need in run.needs:
            if need.resolve() in by_folder:
                place(by_folder[need.resolve()])
        visiting.discard(run.folder)
        placed.add(run.folder)
        ordered.append(run)

    for run in runs:
        place(run)
    return ordered
