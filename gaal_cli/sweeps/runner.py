"""Sweeps: an experiment file's grid of settings x seeds, one run folder and one process per run.

The parts: gaal_cli.sweeps.experiment_files (finding and expanding experiment files), gaal_cli.sweeps.order
(dependencies first), gaal_cli.sweeps.staleness (each run's state: done, stale, running, missing
inputs) and gaal_cli.sweeps.scheduler (processes, a concurrency limit, dependencies and locks). This
module joins them: `run_sweep` trains a sweep's runs here, `submit_sweep` on Slurm; the names
the CLI and the report import from a sweep are importable from here.

A sweep file is an ordinary experiment file (every key `gaal train` accepts) plus a `sweep`
block naming what varies:

    # gaal sweep synthetic/lambda
    name: synthetic/lambda
    method: gaal
    train: {epochs: 8}
    sweep:
      seeds: [2022, 2023, 2024]
      grid:                                  # product over the axes, in file order
        methods.gaal.lambda_image: [0.1, 0.5, 0.9]
        methods.gaal.lambda_tabular: [0.1, 0.5, 0.9]
      variant: "li{methods.gaal.lambda_image}_lt{methods.gaal.lambda_tabular}"

A grid key is a dotted config key. An axis value that is a mapping is merged into the section
the key names, so settings that belong together move together
(`data: [{name: dvm, image_size: 128}, {name: sun, image_size: 225}]`). `variant` names the
run folder `<results>/<name>/<variant>/seed<seed>/`; `{key}` is replaced by the value of a
dotted key of the run's resolved config, and two runs may not share a folder.

Every grid point is validated before anything is written, and each run's inputs (a prepared
data folder, a table, a weights file) are checked on disk: a dry run lists the missing ones, and
a sweep launches no run whose inputs are missing. Each run is then its own process
(`python -m gaal_cli train <run>/config.yaml --out <run>`, output in `<run>/train.log`), so a
crash or kill of one run cannot touch another; when runs keep failing with the same input error
(exit code 2), the sweep stops launching and says so. A run folder that cannot be written fails
that run, and the sweep goes on to its summary. A run holds its folder's lock (`<run>/.lock`,
gaal_cli.foundation.locks: the one rule of every writer, naming host, pid and since when) for as
long as it lives: the sweep takes it before launching and hands it to the run's `gaal train`, so
a second sweep over the same file, or a `gaal train` into the same folder, leaves runs in
progress alone. Finished runs (DONE + report.json) are skipped; an interrupted one is retrained,
resuming from its last epoch (see gaal_cli.training.engine.train).

A run may depend on another run's checkpoint (a KD teacher, FMR's fixed model, `model.init_from`;
gaal_cli.runs.dependencies). In a sweep file such a setting may name a run folder with the fields
`{results}` (the results root) and `{dotted.key}` of the run's own config, e.g.

    methods: {kd: {teacher: "{results}/{name}/concat/seed{seed}"}}

A dependency that is another run of the same sweep is trained first; a run starts only once
its dependencies are finished, waits while one is still training (here or in another process),
and is reported as not started when one failed or is unfinished outside the sweep. A finished
run whose dependency's checkpoint has changed since it was trained (a retrained teacher) is
stale, like one whose config changed: the sweep refuses to mix it with new results.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

import gaal_cli
from gaal_cli.foundation.display import SweepProgress, styled
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import write_file
from gaal_cli.runs.dependencies import changed_dependencies
from gaal_cli.runs.folder import WHERE_KEYS, RunFolder, changed_keys
from gaal_cli.sweeps.experiment_files import (
    OWN_ABLATION_FILE,
    Run,
    Sweep,
    ablation_rows,
    expand,
    experiment_name,
    format_value,
    load_ablation,
    load_sweep,
    merge,
    parse_seeds,
    resolve_experiment,
    variant_name,
)
from gaal_cli.sweeps.scheduler import Active, Outcome, Plan, eta_seconds, run_jobs
from gaal_cli.sweeps.scheduler import next_startable as _next_startable
from gaal_cli.sweeps.staleness import (
    check_data,
    check_inputs,
    check_not_stale,
    locked,
    missing_inputs,
    status,
    statuses,
)

LOG = RunFolder.LOG

__all__ = [
    "WHERE_KEYS",
    "OWN_ABLATION_FILE",
    "Outcome",
    "Run",
    "Sweep",
    "ablation_rows",
    "changed_dependencies",
    "changed_keys",
    "check_data",
    "check_inputs",
    "check_not_stale",
    "eta_seconds",
    "expand",
    "experiment_name",
    "format_value",
    "load_ablation",
    "load_sweep",
    "locked",
    "merge",
    "missing_inputs",
    "next_startable",
    "parse_seeds",
    "resolve_experiment",
    "run_sweep",
    "status",
    "statuses",
    "submit_sweep",
    "variant_name",
]


def run_command(run: Run) -> list[str]:
    return [sys.executable, "-m", "gaal_cli", "train", str(run.folder / "config.yaml"), "--out", str(run.folder), "-q"]


def child_env(workers: int) -> dict[str, str]:
    """The environment of a run: this checkout importable, CPU threads shared among the workers."""
    env = dict(os.environ)
    root = str(Path(gaal_cli.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def run_done(folder: Path) -> bool:
    """Whether a run folder holds a finished run (DONE + report.json)."""
    return RunFolder(folder).done


def write_config(run: Run) -> None:
    """The run's resolved config, written into its folder before its process starts."""
    write_file(run.folder / RunFolder.CONFIG, yaml.safe_dump(run.config.resolved(), sort_keys=False))


def next_startable(todo: list[Run], active: list[Active], outcome: Outcome) -> tuple[Run, str] | None:
    """The next run of `todo` to start (gaal_cli.sweeps.scheduler.next_startable, a run finished when DONE)."""
    return _next_startable(todo, active, outcome, run_done)


def submit_sweep(sweep: Sweep, folder: Path, options=None, cluster: str = "slurm") -> tuple[list[Run], list]:
    """Submit the runs not yet done as one Slurm job array (through submitit).

    Same rules as a local sweep: a stale finished run is refused, DONE runs are left out, and a
    partial run's job resumes from its `last.pt`. The jobs run on other machines, so no lock is
    held for them: submit again only after the array has finished, to redo what failed.

    Returns:
        The submitted runs and their submitit jobs, in the same order.
    """
    from gaal_cli.sweeps.launchers import submit_slurm

    check_not_stale(sweep)
    # a job array cannot wait for another job here: runs whose dependencies are unfinished go
    # in a later submission
    pending = [
        run
        for run in sweep.runs
        if status(run) in ("new", "partial") and all(run_done(need) for need in run.needs)
    ]
    for run in pending:
        write_config(run)
    jobs = submit_slurm([run_command(run) for run in pending], folder, options, cluster=cluster)
    return pending, jobs


def run_seconds(folder: RunFolder) -> float | None:
    """A finished run's training time from its report; None when the report does not say."""
    try:
        seconds = folder.read_report()["timings"]["total_seconds"]
    except (GaalError, KeyError, TypeError):
        return None
    return float(seconds) if isinstance(seconds, int | float) else None


def run_sweep(sweep: Sweep, workers: int = 1) -> Outcome:
    """Train every run of `sweep` not yet done, `workers` at a time, with one progress display
    (each run a `gaal train` process, through gaal_cli.sweeps.scheduler).

    A failed run is recorded and the sweep goes on, until gaal_cli.sweeps.scheduler.SAME_ERROR_LIMIT runs have failed
    with the same input error: then no more runs are launched (`Outcome.not_started`). Ctrl-C
    (or SIGTERM) stops the runs in progress (they keep their last epoch, so the next sweep
    resumes them) and is raised again.

    Raises:
        GaalError: a stale finished run, or runs whose inputs are missing (nothing is launched).
    """
    check_not_stale(sweep)
    outcome = Outcome()
    todo = []
    for run in sweep.runs:
        (outcome.skipped if run_done(run.folder) else todo).append(run)
    check_inputs(Sweep(sweep.name, sweep.source, todo))
    check_data(Sweep(sweep.name, sweep.source, todo))
    durations = [t for t in (run_seconds(RunFolder(r.folder)) for r in outcome.skipped) if t is not None]
    plan = Plan(
        command=run_command,
        finished=run_done,
        prepare=write_config,
        env=child_env(workers),
        log_name=LOG,
        taker="gaal sweep",
        holder="gaal train, launched by gaal sweep",
    )
    with SweepProgress(sweep.name, len(sweep.runs), len(outcome.skipped)) as progress:
        return run_jobs(todo, workers, plan, _Shown(progress), outcome, durations)


class _Shown:
    """The scheduler's reports as lines of the sweep's progress display."""

    def __init__(self, progress):
        self.progress = progress

    def started(self, run: Run) -> None:
        self.progress.started(run)

    def update(self, active: list[Active], left: int, eta: float | None) -> None:
        self.progress.update(active, left, eta)

    def done(self, run: Run, seconds: float) -> None:
        self.progress.finished(run, styled("done", "green", f" in {seconds:.0f} s  {accuracy_line(run)}"))

    def failed(self, run: Run, why: str) -> None:
        self.progress.finished(run, styled("failed", "red", f": {why}"), "failed")

    def not_started(self, run: Run, why: str) -> None:
        self.progress.finished(run, styled("not started", "red", f": {why}"), "failed")

    def busy(self, run: Run) -> None:
        self.progress.finished(run, styled("skipped: running in another process", "yellow"), "busy")

    def skipped(self, run: Run) -> None:
        self.progress.finished(run, "skipped: finished by another process")


def accuracy_line(run: Run) -> str:
    """'multi 0.8125  image 0.75 ...' from a finished run's report; '' when it does not say."""
    try:
        report = RunFolder(run.folder).read_report()["metrics"]["test"]
        return "  ".join(f"{head} {m['acc']:.4f}" for head, m in report.items())
    except (GaalError, KeyError, TypeError, ValueError):
        return ""
