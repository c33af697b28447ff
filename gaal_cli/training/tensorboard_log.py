"""TensorBoard event files beside metrics.jsonl, carrying the same scalars (optional).

metrics.jsonl stays the record gaal reads back (reports, health, resuming); the event files are
a view of it for watching a run live in TensorBoard (`tensorboard --logdir results/`). Each
numeric leaf of an epoch record becomes one scalar tagged by its path, e.g. `train/loss`,
`val/multi/acc`, `lr`, at the record's epoch: the same numbers, under the same names.

Needs the optional `tensorboard` package (`pip install 'gaal[tensorboard]'`); torch's
SummaryWriter writes the files. A run that asks for TensorBoard without it fails before
training, with an error saying what to install.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gaal_cli.foundation.errors import GaalError

#: the keys of an epoch record that are bookkeeping, not curves (`epoch` is the step itself)
SKIPPED = frozenset({"epoch", "best", "stage"})


def available() -> bool:
    """Whether torch's TensorBoard writer imports: the `tensorboard` package is installed (a folder
    named `tensorboard` in the working directory is found by `find_spec` as a namespace package,
    so only the import itself tells)."""
    spec = importlib.util.find_spec("tensorboard")
    if spec is None or spec.origin is None:  # absent, or a bare folder of that name
        return False
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for each numeric leaf of a metrics.jsonl record; nested keys joined by '/'.

    Booleans, strings and nulls (a NaN is written as null) are not scalars and are left out.
    """
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if not prefix and key in SKIPPED:
            continue
        if isinstance(value, Mapping):
            yield from scalars(value, f"{tag}/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)


def require(source: str = "train.tensorboard") -> None:
    """Refuse, before a run writes anything, to log to TensorBoard without the package.

    Raises:
        GaalError: the `tensorboard` package is not installed; `source` is where it was asked for.
    """
    if not available():
        raise GaalError(
            "TensorBoard logging was asked for but the 'tensorboard' package is not installed; "
            "install it with pip install 'gaal[tensorboard]' (or pip install tensorboard), or turn it off",
            source=source,
        )


class TensorBoardLog:
    """Writes TensorBoard event files into `run_dir` (beside metrics.jsonl).

    Args:
        run_dir: the run folder; the event files (`events.out.tfevents.*`) go straight into it,
            so `tensorboard --logdir results/` shows every run under its folder's name.
        first_step: the epoch this attempt starts at. TensorBoard discards what earlier event
            files hold from this step on, so a resumed run (which re-trains the epochs after its
            last checkpoint) or a restarted one (1) shows each epoch once, as metrics.jsonl does.
        source: where the request came from, for the error (e.g. the config key).

    Raises:
        GaalError: the `tensorboard` package is not installed.
    """

    def __init__(self, run_dir: str | Path, *, first_step: int = 1, source: str = "train.tensorboard"):
        require(source)
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=first_step)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Every scalar of `record` (one line of metrics.jsonl) at `step` (its epoch)."""
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # one flush per epoch: a live TensorBoard sees the epoch at once

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
