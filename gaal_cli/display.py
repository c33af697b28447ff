"""Terminal output: a progress bar per epoch with live metrics, and result tables (rich)."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
HEADS = ("multi", "image", "tabular")


class EpochProgress:
    """One bar per epoch; `update` shows the running loss/accuracy of the epoch."""

    def __init__(self, enabled: bool = True):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not enabled,
        )
        self.task = None

    def __enter__(self) -> EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, stats="")

    def update(self, advance: int, stats: Mapping[str, float] | None = None) -> None:
        fields = {"stats": format_stats(stats)} if stats is not None else {}
        self.progress.update(self.task, advance=advance, **fields)

    def log(self, message: str) -> None:
        self.progress.console.print(message)


def format_stats(stats: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in stats.items())


def metrics_table(title: str, metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    """Rows: split; columns: multi/image/tabular accuracy and macro-F1 (AUROC when binary)."""
    table = Table(title=title)
    table.add_column("split")
    keys = sorted(
        {k for split in metrics.values() for head in split.values() for k in head}, key=["acc", "f1", "auroc"].index
    )
    for head in HEADS:
        for key in keys:
            table.add_column(f"{head} {key}", justify="right")
    for split, heads in metrics.items():
        row = [split]
        for head in HEADS:
            for key in keys:
                value = heads.get(head, {}).get(key)
                row.append("-" if value is None else f"{value:.4f}")
        table.add_row(*row)
    return table


class SweepProgress:
    """One bar over a whole sweep (runs done / running / left, ETA) and a line per run in progress."""

    def __init__(self, name: str, total: int, done: int):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.name, self.total, self.done, self.failed = name, total, done, 0
        self.rows: dict = {}

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        title = f"[bold]sweep {self.name}"
        self.overall = self.progress.add_task(title, total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def started(self, run) -> None:
        self.rows[run.folder] = self.progress.add_task(f"  {run.label}", total=run.config.train.epochs, info="starting")

    def update(self, active, left: int, eta: float | None) -> None:
        """`active`: runs in progress (with .run and .started); their epochs come from metrics.jsonl."""
        for a in active:
            epochs = _count_lines(a.run.folder / "metrics.jsonl")
            self.progress.update(self.rows[a.run.folder], completed=epochs, info=f"epoch {epochs}")
        eta_text = "?" if eta is None else _clock(eta)
        info = f"{self.done} done · {len(active)} running · {left} left · {self.failed} failed · ETA {eta_text}"
        self.progress.update(self.overall, info=info)

    def finished(self, run, message: str, kind: str = "done") -> None:
        """`kind`: done, failed, or busy (left to another process)."""
        if run.folder in self.rows:
            self.progress.remove_task(self.rows.pop(run.folder))
        self.done += kind == "done"
        self.failed += kind == "failed"
        self.progress.advance(self.overall)
        self.progress.console.print(f"{run.label}  {message}", highlight=False)


def _count_lines(path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def plan_table(title: str, rows) -> Table:
    """A sweep's runs before it starts: folder, status (done, partial, new, running, stale) and
    the dependencies (teachers, fixed models) that must finish before it can start."""
    from gaal_cli.results import RunFolder

    table = Table(title=title)
    for column in ("variant", "seed", "status", "folder", "waits for"):
        table.add_column(column)
    for run, state in rows:
        waits = "\n".join(str(need) for need in run.needs if not RunFolder(need).done)
        table.add_row(run.variant, str(run.seed), state, str(run.folder), waits)
    return table
