"""Run health in the report: the mark a table cell gets when its runs have a health finding
(gaal_cli/training/health.py), the legend line under such a table, and the Run health section."""

from __future__ import annotations

import pandas as pd

from gaal_cli.foundation.display import markdown_text
from gaal_cli.training.health import CHECKS

HEALTH_MARK = "†"


def health_rule(summary: pd.DataFrame) -> str:
    """The legend line of the health mark, under every table that has one."""
    if "flagged" not in summary.columns or not summary["flagged"].any():
        return ""
    return (
        f"{HEALTH_MARK}: at least one of the cell's runs has a run-health finding (it may have learned nothing: "
        f"majority class, chance, contrastive plateau, a dead dependency, collapsed features or an encoder without "
        f"gradient; {HEALTH_MARK}k/n when k of its n runs do); the runs and findings are listed under Run health in "
        "report.md (health.md).\n"
    )


def health_mark(cell: pd.Series) -> str:
    """` †` when every run of the cell has a finding, ` †k/n` when k of n do, else nothing."""
    flagged, n = int(cell.get("flagged", 0)), int(cell["n"])
    if not flagged:
        return ""
    return f" {HEALTH_MARK}" if flagged == n else f" {HEALTH_MARK}{flagged}/{n}"


def health_markdown(runs: pd.DataFrame) -> str:
    """Run health over every run: the flagged runs with their findings, and which checks the
    older runs' records did not allow (how many runs each)."""
    lines = [
        "Checks (gaal_cli/training/health.py; thresholds there and in the README): "
        + "; ".join(f"`{name}`: {text}" for name, text in CHECKS.items())
        + ".\n"
    ]
    flagged = runs[runs["health"].fillna("") != ""].sort_values("folder")
    if flagged.empty:
        lines.append(f"No finding in any of the {len(runs)} runs.\n")
    else:
        lines += [f"{len(flagged)} of {len(runs)} runs have findings:\n", "| run | findings |", "|---|---|"]
        lines += [f"| {markdown_text(row.folder)} | {markdown_text(row.health)} |" for row in flagged.itertuples()]
        lines.append("")
    unchecked = runs["health_unchecked"].fillna("").str.split().explode().dropna()
    counts = unchecked[unchecked != ""].value_counts()
    if len(counts):
        lines.append(
            "Not checked (runs from before run health carry no `health` in report.json; it is computed from their "
            "logs, which do not allow these checks): "
            + "; ".join(f"`{name}` in {count} runs" for name, count in counts.sort_index().items())
            + ". A cell without the mark is healthy only by the checks that were made.\n"
        )
    return "\n".join(lines)
