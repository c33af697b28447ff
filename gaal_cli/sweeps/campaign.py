"""A reproduction campaign: one file names the sweeps that rebuild a set of committed results, in
dependency order (a teacher's sweep before its students'), and the reports built from them.
`gaal reproduce FILE` runs the sweeps in that order into one results root, then the reports: each
sweep skips what is done and resumes what was killed, so the campaign can be stopped and rerun on
any later day; a stale finished run (other config, changed dependency, other behaviour) stops it
(gaal_cli.sweeps.staleness), so one campaign never mixes code states unannounced.

The file (results/campaign.yaml for the committed results):

    sweeps: [synthetic/table1, synthetic/conflict, ...]       # experiment names or YAML paths
    reports:                                                  # folders relative to the results root
      - {folders: [synthetic], out: synthetic/report}
      - {folders: [synthetic, ham10000], out: across}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaal_cli.config import read_yaml_file
from gaal_cli.foundation.errors import GaalError
from gaal_cli.sweeps.experiment_files import Sweep, load_sweep, resolve_experiment
from gaal_cli.sweeps.staleness import described_statuses


@dataclass(frozen=True)
class ReportSpec:
    """One `gaal report FOLDERS --out OUT`, its paths relative to the results root."""

    folders: tuple[str, ...]
    out: str


@dataclass(frozen=True)
class Campaign:
    """The sweeps in the order they run and the reports built after them."""

    source: Path
    sweeps: tuple[str, ...]
    reports: tuple[ReportSpec, ...]

    def plans(self, results: Path, overrides: list[str] | tuple[str, ...] = ()) -> list[Sweep]:
        """Each sweep expanded into its runs under `results` (nothing is written).

        Raises:
            GaalError: an unknown experiment, or one that does not validate (named).
        """
        return [load_sweep(resolve_experiment(name), overrides, results=results) for name in self.sweeps]


def dry_run_lines(campaign: Campaign, plans: list[Sweep], results: Path) -> list[str]:
    """What `gaal reproduce --dry-run` prints: each sweep's runs counted by status, then the reports."""
    lines = []
    for plan in plans:
        counts = Counter(status_kind(state) for _, state in described_statuses(plan))
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        runs = len(plan.runs)
        lines.append(f"{plan.name}: {runs} run{'s' * (runs != 1)} ({states})")
    for spec in campaign.reports:
        folders = " ".join(str(results / f) for f in spec.folders)
        lines.append(f"then: gaal report {folders} --out {results / spec.out}")
    return lines


def status_kind(state: str) -> str:
    """A dry run's status without its details: 'done, unverified', 'done on another host', 'stale', ..."""
    if state.startswith("done (unverified"):
        return "done, unverified"
    if state.startswith("done (on "):
        return "done on another host"
    return state.split(":")[0].split(" (")[0]


def load_campaign(path: Path) -> Campaign:
    """A campaign file, checked.

    Raises:
        GaalError: not a mapping of `sweeps` (a list of names) and `reports` (a list of
            {folders, out}), an unknown key, or a report path that leaves the results root.
    """
    tree = read_yaml_file(path)
    if not isinstance(tree, dict) or set(tree) - {"sweeps", "reports"} or "sweeps" not in tree:
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise GaalError(f"expected a mapping with 'sweeps' and 'reports' only, got {got}", source=str(path))
    sweeps = tree["sweeps"]
    if not isinstance(sweeps, list) or not sweeps or not all(isinstance(s, str) and s for s in sweeps):
        raise GaalError("expected a list of experiment names, in the order they run", source=str(path), field="sweeps")
    if len(set(sweeps)) != len(sweeps):
        twice = next(s for s in sweeps if sweeps.count(s) > 1)
        raise GaalError(f"names '{twice}' twice", source=str(path), field="sweeps")
    reports = tree.get("reports") or []
    if not isinstance(reports, list):
        raise GaalError("expected a list of {folders, out}", source=str(path), field="reports")
    return Campaign(path, tuple(sweeps), tuple(_report(r, path, i) for i, r in enumerate(reports)))


def _report(block: Any, path: Path, i: int) -> ReportSpec:
    field = f"reports[{i}]"
    if not isinstance(block, dict) or set(block) != {"folders", "out"}:
        raise GaalError("expected {folders: [FOLDER, ...], out: FOLDER}", source=str(path), field=field)
    folders, out = block["folders"], block["out"]
    if not isinstance(folders, list) or not folders or not all(isinstance(f, str) for f in folders):
        raise GaalError("expected a list of folders under the results root", source=str(path), field=f"{field}.folders")
    if not isinstance(out, str):
        raise GaalError("expected a folder under the results root", source=str(path), field=f"{field}.out")
    for name in (*folders, out):
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise GaalError(f"'{name}' is not a folder under the results root", source=str(path), field=field)
    return ReportSpec(tuple(folders), out)
