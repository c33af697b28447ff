"""Terminal output: a progress bar per epoch with live metrics, and result tables (rich).

Every console here and in the CLI reads no markup: text from users and their files (a path, a
CSV cell, a `--set` key, a folder name) is printed exactly as written, and `[/]` in it cannot
turn a clean error into a MarkupError. Styling is asked for explicitly: `styled` for a console
line, `escape` for the user's part of a progress-bar description (rich columns read markup).

Nor does their text reach the terminal as control codes: an ESC in a sample id, a file name or a
plugin's error message would otherwise move the cursor, recolour or retitle the terminal, or hide
the rest of the line. `TerminalConsole` writes every control character (and the bidirectional
overrides that reorder a line) of the text it prints as a visible escape (`\\x1b`); the control
codes rich itself sends to draw progress bars are left alone.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

#: control characters but newline and tab (C0, DEL, C1) and the bidirectional overrides and isolates
_UNPRINTABLE = [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F)]
_ESCAPES = {code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _UNPRINTABLE}
_ESCAPES |= {code: f"\\u{code:04x}" for code in range(0x2066, 0x206A)}


def printable(text: str) -> str:
    """`text` with every control character written as a visible escape (ESC as `\\x1b`)."""
    return text.translate(_ESCAPES)


#: what would end a Markdown table cell, start a link, an HTML tag or code, or escape the next character
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\|[]<>`"} | {"\n": " ", "\r": " "})


def markdown_text(value: object) -> str:
    """A value from a run folder (a setting, a path, a label) as literal text in a Markdown table or
    line: `|`, brackets, angle brackets, backticks and backslashes escaped, control characters
    written as escapes, line breaks as spaces."""
    return printable(str(value).translate(_MARKDOWN_SPECIAL))


#: a cell a spreadsheet runs as a formula starts with one of these (OWASP, CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_quoting(cells) -> int:
    """How to quote a CSV of these text cells: every cell when one holds a carriage return (Python
    3.11's csv writer leaves such a cell unquoted, and a reader splits the row there), else as
    needed (csv.QUOTE_MINIMAL)."""
    import csv

    carriage = any(isinstance(cell, str) and "\r" in cell for cell in cells)
    return csv.QUOTE_ALL if carriage else csv.QUOTE_MINIMAL


def csv_text(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, with a leading apostrophe (shown as text);
    anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class TerminalConsole(Console):
    """A rich Console whose printed text carries no control character (see the module's docstring)."""

    def _render_buffer(self, buffer):  # rich's one place where segments become the text written
        return super()._render_buffer(
            segment if segment.control else Segment(printable(segment.text), segment.style, segment.control)
            for segment in buffer
        )


console = TerminalConsole(stderr=True, markup=False)
HEADS = ("multi", "image", "tabular")


class EpochProgress:
    """One bar per epoch that advances at every step; `step` shows the running loss/accuracy.

    Reading a loss from the GPU waits for the device, so the stats are read only when asked for
    (`force`: the engine's every-LOG_EVERY-steps check) or once `STATS_SECONDS` have passed since
    the last read: at most one extra wait per interval, never one per step.

    The whole run's time is estimated from its first steps (the seconds per step since the first
    one ended, validation included once an epoch has passed, times the steps left in every epoch
    to come): printed once after `ESTIMATE_STEPS` steps, and kept up to date beside the bar. It
    assumes every epoch runs: early stopping may end the run sooner.
    """

    STATS_SECONDS = 2.0
    ESTIMATE_STEPS = 5

    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[run]}"),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not enabled,
        )
        self.task = None
        self.enabled, self.clock, self.last_read = enabled, clock, 0.0
        self.steps_left = 0  # the run's steps still to take, this epoch's included
        self.timed = 0  # steps timed since the first one ended
        self.first_end: float | None = None
        self.said = False

    def __enter__(self) -> EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, stats="", run="")
        self.steps_left = steps * (epochs - epoch + 1)
        self.last_read = self.clock()

    def update(self, advance: int, stats: Mapping[str, float] | None = None) -> None:
        fields = {"stats": format_stats(stats)} if stats is not None else {}
        self.progress.update(self.task, advance=advance, **fields)

    def step(self, read_stats: Callable[[], Mapping[str, float]], *, force: bool = False) -> None:
        """Advance by one step; show `read_stats()` when forced or when the last read is old."""
        now = self.clock()
        self.steps_left -= 1
        self._estimate(now)
        due = self.enabled and now - self.last_read >= self.STATS_SECONDS
        if force or due:
            self.last_read = now
            self.update(1, read_stats())
        else:
            self.update(1)

    def run_left(self) -> float | None:
        """Seconds the run's remaining steps take at the rate seen so far (None before a step was timed)."""
        if self.first_end is None or not self.timed:
            return None
        return (self.clock() - self.first_end) / self.timed * self.steps_left

    def _estimate(self, now: float) -> None:
        if self.first_end is None:
            self.first_end = now  # the first step warms caches and allocators: not counted
            return
        self.timed += 1
        left = self.run_left()
        if left is None:
            return
        self.progress.update(self.task, run=f"run ~{_clock(left)} left")
        if not self.said and self.timed >= self.ESTIMATE_STEPS:
            self.said = True
            if self.enabled:
                self.log(
                    f"estimated time left: ~{_clock(left)} if every epoch runs (from the first {self.timed + 1} "
                    "steps; early stopping may end the run sooner)"
                )

    def log(self, message: str | Text) -> None:
        self.progress.console.print(message)


def styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style`, then `rest` as it is: a console line whose user text reads no markup."""
    return Text.assemble((label, style), rest)


def format_stats(stats: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in stats.items())


_METRIC_ORDER = ["acc", "bal_acc", "f1", "auroc"]


def metrics_table(title: str, metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    """Rows: split x head (multi/image/tabular); columns: accuracy, balanced accuracy, macro-F1
    (AUROC when binary). A row per head keeps the table narrow enough for an 80-column terminal."""
    table = Table(title=title)
    table.add_column("split")
    table.add_column("head")
    keys = sorted({k for split in metrics.values() for head in split.values() for k in head}, key=_METRIC_ORDER.index)
    for key in keys:
        table.add_column(key, justify="right")
    for split, heads in metrics.items():
        for head in HEADS:
            if head in heads:
                values = [heads[head].get(key) for key in keys]
                table.add_row(split, head, *("-" if v is None else f"{v:.4f}" for v in values))
    return table


# a confusion matrix wider than this many classes is left to --json and the figure
CONFUSION_CLASSES = 12


def class_tables(scores: Mapping, title: str) -> list:
    """`gaal eval` and `gaal predict` on labelled rows (gaal_cli.training.scores.Scores.to_json()):
    every head's metrics, then the chosen head's table per class and its confusion matrix."""
    parts: list = [metrics_table(f"{title}: {scores['where']}", {"rows": scores["metrics"]})]
    head = f"{scores['head']} head" + (f" ({scores['head_reason']})" if scores["head_reason"] else "")
    per_class = Table(title=f"per class, {head}")
    for name in ("class", "rows", "predicted", "recall", "precision", "f1"):
        per_class.add_column(name, justify="left" if name == "class" else "right")
    for row in scores["per_class"]:
        values = ["-" if row[k] is None else f"{row[k]:.4f}" for k in ("recall", "precision", "f1")]
        per_class.add_row(str(row["class"]), str(row["rows"]), str(row["predicted"]), *values)
    parts.append(per_class)
    names, matrix = scores["confusion"]["classes"], scores["confusion"]["rows_true_columns_predicted"]
    if len(names) <= CONFUSION_CLASSES:
        confusion = Table(title=f"confusion matrix, {scores['head']} head (rows: true class, columns: predicted)")
        confusion.add_column("true class")
        for name in names:
            confusion.add_column(str(name), justify="right")
        for name, counts in zip(names, matrix):
            confusion.add_row(str(name), *(str(c) for c in counts))
        parts.append(confusion)
    else:
        parts.append(f"confusion matrix of {len(names)} classes: in --json, and as a figure with --out FILE.png")
    parts += [styled("note:", "yellow", f" {note}") for note in scores["notes"]]
    return parts


def report_data_notes(info: Mapping) -> None:
    """Print the column roles that are not plain features, and what loading a table dropped,
    imputed or mapped to `unknown` (nothing when none)."""
    decided = {name: r for name, r in info.get("roles", {}).items() if r["role"] not in ("categorical", "continuous")}
    if decided:
        console.print(
            "column roles: " + "; ".join(f"{name}: {r['role']} ({r['reason']})" for name, r in decided.items()),
            highlight=False,
        )
    dropped = {k: v for k, v in info.get("dropped", {}).items() if v}
    if dropped:
        total = sum(dropped.values())
        console.print(f"dropped {total} row{'s' * (total > 1)}: " + _counts(dropped), highlight=False)
    if info.get("imputed"):
        console.print("imputed missing values (train medians / a missing code): " + _counts(info["imputed"]))
    if info.get("train_only_classes"):
        console.print("kept in the train split only (data.rare_classes=train): " + _counts(info["train_only_classes"]))
    unknown = {s: c for s, c in info.get("unknown_categories", {}).items() if c}
    for split, counts in unknown.items():
        console.print(f"categories unseen in training, coded unknown, in {split}: " + _counts(counts), highlight=False)
    if info.get("leakage_warning"):
        console.print(styled("warning:", "yellow", f" {info['leakage_warning']}"), highlight=False, soft_wrap=True)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def inspection_tables(found: Mapping) -> list:
    """`gaal data inspect` on the console: each column's role and why, classes per split, bad rows
    (first 20), what training would drop, and the error training would raise."""
    columns = Table(title=f"{found['table']}: {found['rows']} rows")
    for name in ("column", "role", "why", "missing", "distinct"):
        columns.add_column(name, justify="right" if name in ("missing", "distinct") else "left")
    roles = found["roles"]
    for column, missing in found["missing"].items():
        role = roles.get(column, {"role": "(not a feature)", "why": ""})
        kind, why = role["role"], role["why"]
        if column == found["id_column"]:
            kind, why = "id", (why + "; " if why else "") + "names the rows of `gaal predict`"
        columns.add_row(column, kind, why, str(missing), str(found["distinct"][column]))
    parts: list = [columns]
    counts = found["split_counts_trained"] or found["split_counts"]
    when = "after dropping" if found["split_counts_trained"] else "before dropping"
    classes = Table(title=f"classes per split ({when}): {found['split']}")
    classes.add_column("class")
    for name in ("all", *counts):
        classes.add_column(name, justify="right")
    for name, count in found["classes"].items():
        if all(name in c for c in counts.values()):
            classes.add_row(name, str(count), *(str(c[name]) for c in counts.values()))
        else:
            classes.add_row(name, str(count), *("dropped" for _ in counts))
    parts.append(classes)
    bad = found["bad_rows"]
    if bad:
        rows = Table(title=f"{len(bad)} bad row{'s' * (len(bad) > 1)} (training fails on them; --skip-bad drops them)")
        for name in ("row", "column", "reason"):
            rows.add_column(name)
        for item in bad[:20]:
            where = f" ({item['file']})" if item["file"] else ""
            rows.add_row(item["row"], item["column"] or "", item["reason"] + where)
        parts.append(rows)
    if found["train_only_classes"]:
        parts.append("kept in the train split only (data.rare_classes=train): " + _counts(found["train_only_classes"]))
    if found.get("leakage_warning"):
        parts.append(styled("warning:", "yellow", f" {found['leakage_warning']}"))
    dropped = {k: v for k, v in found["dropped"].items() if v}
    if found["error"] is None:
        parts.append(f"training would drop: {_counts(dropped)}" if dropped else "training would drop no rows")
    return parts


class CountProgress:
    """A bar over a fixed number of items (the image-cache build), gone from the screen when done."""

    def __init__(self, description: str, total: int, enabled: bool = True):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task = self.progress.add_task(description, total=total)

    def __enter__(self) -> CountProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)


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
        title = f"[bold]sweep {escape(self.name)}"
        self.overall = self.progress.add_task(title, total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def started(self, run) -> None:
        label = f"  {escape(run.label)}"
        self.rows[run.folder] = self.progress.add_task(label, total=run.config.train.epochs, info="starting")

    def update(self, active, left: int, eta: float | None) -> None:
        """`active`: runs in progress (with .run and .started); their epochs come from metrics.jsonl."""
        for a in active:
            epochs = _count_lines(a.run.folder / "metrics.jsonl")
            self.progress.update(self.rows[a.run.folder], completed=epochs, info=f"epoch {epochs}")
        eta_text = "?" if eta is None else _clock(eta)
        info = f"{self.done} done · {len(active)} running · {left} left · {self.failed} failed · ETA {eta_text}"
        self.progress.update(self.overall, info=info)

    def finished(self, run, status: Text, kind: str = "done") -> None:
        """`status`: what became of the run (`styled`); `kind`: done, failed, or busy (left to another process)."""
        if run.folder in self.rows:
            self.progress.remove_task(self.rows.pop(run.folder))
        self.done += kind == "done"
        self.failed += kind == "failed"
        self.progress.advance(self.overall)
        self.progress.console.print(Text(f"{run.label}  ") + status, highlight=False)


def _count_lines(path) -> int:
    """Lines of a run's metrics.jsonl; 0 when it is missing or not a regular file (a FIFO is not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        os.set_blocking(fd, True)
        return sum(1 for line in fh if line.endswith(b"\n"))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def plan_table(title: str, rows, finished: Callable[[object], bool]) -> Table:
    """A sweep's runs before it starts: folder, status (done, partial, new, running, stale) and
    the dependencies (teachers, fixed models) that must finish before it can start, i.e. those
    not `finished` (the caller knows run folders; this module only draws)."""
    table = Table(title=title)
    for column in ("variant", "seed", "status", "folder", "waits for"):
        table.add_column(column)
    for run, state in rows:
        waits = "\n".join(str(need) for need in run.needs if not finished(need))
        table.add_row(run.variant, str(run.seed), state, str(run.folder), waits)
    return table
