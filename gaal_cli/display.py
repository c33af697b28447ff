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
