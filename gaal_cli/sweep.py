"""Sweeps: an experiment file's grid of settings x seeds, one run folder and one process per run.

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
gaal_cli.locks: the one rule of every writer, naming host, pid and since when) for as long as it
lives: the sweep takes it before launching and hands it to the run's `gaal train`, so a second
sweep over the same file, or a `gaal train` into the same folder, leaves runs in progress alone. Finished runs (DONE + report.json)
are skipped; an interrupted one is retrained, resuming from its last epoch (see engine.train).

A run may depend on another run's checkpoint (a KD teacher, FMR's fixed model, `model.init_from`;
gaal_cli.dependencies). In a sweep file such a setting may name a run folder with the fields
`{results}` (the results root) and `{dotted.key}` of the run's own config, e.g.

    methods: {kd: {teacher: "{results}/{name}/concat/seed{seed}"}}

A dependency that is another run of the same sweep is trained first; a run starts only once
its dependencies are finished, waits while one is still training (here or in another process),
and is reported as not started when one failed or is unfinished outside the sweep. A finished
run whose dependency's checkpoint has changed since it was trained (a retrained teacher) is
stale, like one whose config changed: the sweep refuses to mix it with new results.
"""

from __future__ import annotations

import copy
import importlib.resources
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import gaal_cli
from gaal_cli.config import SEED_MAX, Config, Seed, config_from_mapping, read_yaml
from gaal_cli.errors import GaalError, did_you_mean
from gaal_cli.dependencies import changed_dependencies, file_hash  # noqa: F401
from gaal_cli.files import Terminated, write_file
from gaal_cli.locks import FD_ENV, LOCK, is_locked, try_lock, write_holder  # noqa: F401
from gaal_cli.results import WHERE_KEYS, RunFolder, changed_keys, result_changes  # noqa: F401

EXPERIMENTS = Path("experiments")
# the checkout an editable install runs from; a wheel carries the same files as gaal_cli/experiments
CHECKOUT_EXPERIMENTS = Path(gaal_cli.__file__).resolve().parents[1] / "experiments"
LOG = RunFolder.LOG
POLL_SECONDS = 0.5
# runs failing with the same input error (exit code 2) before the sweep stops launching more
SAME_ERROR_LIMIT = 2
# a --seeds range longer than this is a typo, not a sweep
MAX_SEEDS = 10_000


class SweepSpec(BaseModel):
    """The `sweep` block of an experiment file."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[Seed] = Field(default_factory=lambda: [2022], min_length=1, max_length=MAX_SEEDS)
    grid: dict[str, list[Any]] = {}
    variant: str = "{method}"

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"axis '{empty[0]}' has no values")
        return grid


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    config: Config
    folder: Path
    #: run folders this run needs finished before it starts (its dependencies)
    needs: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


@dataclass
class Sweep:
    name: str
    source: str
    runs: list[Run]


@dataclass
class Outcome:
    """What a sweep did: runs trained now, already done, failed (with why) and locked elsewhere."""

    trained: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    busy: list[Run] = field(default_factory=list)
    not_started: list[Run] = field(default_factory=list)
    stopped_because: str | None = None


# ---------------------------------------------------------------- spec -> runs (pure)


def packaged_experiments() -> Path:
    """The named experiments that came with this installation of gaal.

    A wheel (and so the Docker image) carries the top-level experiments/ folder as package data
    in gaal_cli/experiments (see pyproject.toml); an editable install or a checkout on
    PYTHONPATH has no such folder and reads the checkout's experiments/ instead.
    """
    packaged = importlib.resources.files(gaal_cli) / "experiments"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return CHECKOUT_EXPERIMENTS


def experiment_roots() -> tuple[Path, Path]:
    """Where a name is looked up, in order: ./experiments, then the installed ones."""
    return EXPERIMENTS, packaged_experiments()


def resolve_experiment(name: str) -> Path:
    """An experiment file from a path, or from a name relative to experiments/ ('synthetic/lambda'):
    a YAML path first, then ./experiments/<name>.yaml, then the experiments installed with gaal.

    Raises:
        GaalError: no such file; the message lists the known names.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    roots = experiment_roots()
    for root in roots:
        candidate = root / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({experiment_name(p, root) for root in roots for p in root.rglob("*.yaml")})
    hint = f"; known experiments: {', '.join(known)}" if known else ""
    raise GaalError(
        f"no experiment file '{name}' (nor experiments/{name}.yaml){did_you_mean(name, known)}{hint}", source=name
    )


def experiment_name(path: Path, *roots: Path) -> str:
    """'synthetic/lambda' for experiments/synthetic/lambda.yaml; the file stem elsewhere."""
    for root in roots or experiment_roots():
        if path.resolve().is_relative_to(root.resolve()):
            return path.resolve().relative_to(root.resolve()).with_suffix("").as_posix()
    return path.stem


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The grid points: the product of the axes, first axis slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def merge(tree: dict, key: str, value: Any) -> None:
    """Set dotted `key` in `tree`; a mapping value is merged into the section already there."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for sub, sub_value in value.items():
            merge(node[leaf], sub, sub_value)
    else:
        node[leaf] = copy.deepcopy(value)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def variant_name(rule: str, resolved: dict[str, Any]) -> str:
    """Fill `{dotted.key}` fields of `rule` from a resolved config.

    Raises:
        GaalError: a field that is no config key, or a name that is not one folder.
    """

    try:
        name = fill_fields(rule, resolved)
    except GaalError as err:
        raise GaalError(err.message, field="sweep.variant") from None
    if not name or "/" in name or name in (".", ".."):
        raise GaalError(f"'{name}' is not a folder name (rule '{rule}')", field="sweep.variant")
    return name


def parse_seeds(text: str | None) -> list[int] | None:
    """'2022,2024' or '2022-2026' (inclusive) or a mix; None stays None.

    Raises:
        GaalError: not a seed or range, a seed outside 0..2**32-1, or more than MAX_SEEDS seeds.
    """
    if text is None:
        return None
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if sep else int(first)
        except ValueError:
            raise GaalError(f"'{part}' is not a seed or a range like 2022-2026", source="--seeds") from None
        if not 0 <= low <= high <= SEED_MAX:
            raise GaalError(f"'{part}': seeds are whole numbers from 0 to {SEED_MAX}, low-high", source="--seeds")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise GaalError(f"more than {MAX_SEEDS:,} seeds; split the sweep", source="--seeds")
        seeds += range(low, high + 1)
    return seeds


def load_sweep(
    path: Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    seeds: list[int] | None = None,
    results: Path = Path("results"),
    axes: dict[str, list[Any]] | None = None,
) -> Sweep:
    """Expand a sweep file into validated runs; nothing is written.

    Args:
        overrides: `key=value` strings applied to every run (after the grid point).
        seeds: replaces `sweep.seeds`.
        axes: grid axes to set, replacing any axis at or below the same key (`gaal ablate`).

    Raises:
        GaalError: a bad sweep block, a grid point that does not validate (the message names
            the point), or two runs sharing a folder.
    """
    tree = read_yaml(path)
    spec = _read_spec(tree.pop("sweep", None), path)
    tree.setdefault("name", experiment_name(path))
    grid = dict(spec.grid)
    for key, values in (axes or {}).items():
        grid = {k: v for k, v in grid.items() if k != key and not k.startswith(f"{key}.")}
        grid[key] = values
    runs, seen = [], {}
    for seed in seeds or spec.seeds:
        for point in expand(grid):
            config = _point_config(tree, point, seed, overrides, path)
            variant = variant_name(spec.variant, config.resolved())
            folder = results / config.name / variant / f"seed{config.seed}"
            if folder in seen:
                raise GaalError(
                    f"grid points {seen[folder]} and {point} both write {folder}; name the axes in sweep.variant",
                    source=str(path),
                    field="sweep.variant",
                )
            seen[folder] = point
            config = fill_dependencies(config, results, path)
            runs.append(Run(variant, config.seed, config, folder, dependency_folders(config)))
    return Sweep(tree["name"], str(path), dependencies_first(runs, path))


def fill_dependencies(config: Config, results: Path, source: Path) -> Config:
    """Replace `{results}` and `{dotted.key}` fields in the run's dependency settings.

    Raises:
        GaalError: a field that is no config key.
    """
    resolved = config.resolved()
    filled = {}
    for key, value in config.dependencies().items():
        if "{" in value:
            try:
                filled[key] = fill_fields(value, {**resolved, "results": str(results)})
            except GaalError as err:
                raise GaalError(err.message, source=str(source), field=key) from None
    if not filled:
        return config
    tree = config.model_dump(mode="json")
    for key, value in filled.items():
        merge(tree, key, value)
    return Config.model_validate(tree)


def fill_fields(rule: str, resolved: dict[str, Any]) -> str:
    """`rule` with each `{dotted.key}` replaced by that key's value in `resolved`.

    Raises:
        GaalError: a field that is no key of `resolved`.
    """

    def lookup(match: re.Match) -> str:
        node: Any = resolved
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise GaalError(f"'{{{match.group(1)}}}' is not a key of the run's config")
            node = node[part]
        return format_value(node)

    return re.sub(r"\{([^{}]+)\}", lookup, rule)


def dependency_folders(config: Config) -> tuple[Path, ...]:
    """The run folders a run depends on. A dependency named as a checkpoint file is taken as it
    is: nothing to order or wait for (the run reports it if it is missing)."""
    paths = (Path(value) for value in config.dependencies().values())
    return tuple(p for p in paths if p.suffix not in (".pt", ".pth"))


def dependencies_first(runs: list[Run], source: Path) -> list[Run]:
    """The runs in file order, except that a run comes after the runs of this sweep it needs.

    Raises:
        GaalError: runs that need each other (a cycle).
    """
    # keyed by resolved path: `x/../x` and an absolute --results name the same run
    by_folder = {run.folder.resolve(): run for run in runs}
    ordered: list[Run] = []
    placed: set[Path] = set()
    visiting: set[Path] = set()

    def place(run: Run) -> None:
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


def _read_spec(block: Any, path: Path) -> SweepSpec:
    try:
        return SweepSpec.model_validate(block or {})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(["sweep", *(str(p) for p in first["loc"])])
        raise GaalError(first["msg"], source=str(path), field=key) from None


def _point_config(tree: dict, point: dict[str, Any], seed: int, overrides, path: Path) -> Config:
    run_tree = copy.deepcopy(tree)
    run_tree["seed"] = seed
    for key, value in point.items():
        merge(run_tree, key, value)
    where = ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "the base config"
    return config_from_mapping(run_tree, f"{path} (grid point {where})", overrides)


# datasets whose Table II has its own file (their scale differs from the paper's DVM and SUN runs)
OWN_ABLATION_FILE = {"synthetic": "synthetic/table2_ablation", "ham10000": "ham10000/table2_ablation"}


def ablation_rows(components: list[str]) -> list[dict[str, bool]]:
    """Table II rows: every component off, then switched on one at a time, cumulatively."""
    return [{c: i < k for i, c in enumerate(components)} for k in range(len(components) + 1)]


def load_ablation(
    components: list[str],
    datasets: list[str],
    experiment: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    seeds: list[int] | None = None,
    results: Path = Path("results"),
) -> Sweep:
    """Table II as a sweep: the `methods.gaal` axis of the ablation file becomes the rows of
    `components` (see `ablation_rows`), for the runs on `datasets`.

    Args:
        experiment: the ablation file; default the dataset's own (`OWN_ABLATION_FILE`), else
            `table2_ablation` (DVM and SUN).

    Raises:
        GaalError: a repeated component, one that is no GAAL setting, or a dataset the file lacks.
    """
    if len(set(components)) != len(components):
        raise GaalError(f"a component is listed twice: {' '.join(components)}", source="gaal ablate")
    by_file: dict[str, list[str]] = {}
    for dataset in datasets:
        default = OWN_ABLATION_FILE.get(dataset, "table2_ablation")
        by_file.setdefault(experiment or default, []).append(dataset)
    runs, names = [], []
    for name, wanted in by_file.items():
        axes = {"methods.gaal": ablation_rows(components)}
        sweep = load_sweep(resolve_experiment(name), overrides, seeds=seeds, results=results, axes=axes)
        covered = {r.config.data.name for r in sweep.runs}
        if set(wanted) - covered:
            missing = ", ".join(sorted(set(wanted) - covered))
            raise GaalError(f"has no runs on {missing}; it covers {', '.join(sorted(covered))}", source=sweep.source)
        runs += [r for r in sweep.runs if r.config.data.name in wanted]
        names.append(sweep.name)
    return Sweep(" + ".join(names), ", ".join(by_file), runs)


# ---------------------------------------------------------------- running


def missing_inputs(config: Config) -> list[str]:
    """What a run reads that is not on disk: its prepared data folder, its table, its weights.

    Checked before a sweep launches anything, so that a sweep over data that is not there says
    so at once instead of starting a process per run that fails after loading.
    """
    from gaal_cli.data.prepared import MANIFEST
    from gaal_cli.data.recipes import RECIPES, TABLE_SUFFIXES

    data, missing = config.data, []
    if data.name.lower().endswith(TABLE_SUFFIXES):
        if not Path(data.name).is_file():
            missing.append(f"the table {data.name} (data.name)")
    elif data.name in RECIPES:
        if not data.dir:
            missing.append(f"the prepared {data.name} folder (data.dir is not set)")
        elif not (Path(data.dir) / MANIFEST).is_file():
            missing.append(f"{Path(data.dir) / MANIFEST} (data.dir; make it with `gaal data prepare {data.name}`)")
    elif data.name != "synthetic":
        missing.append(f"the dataset '{data.name}' (data.name: not synthetic, {', '.join(RECIPES)} or a table)")
    if config.model.weights and not Path(config.model.weights).is_file():
        missing.append(f"the weights file {config.model.weights} (model.weights)")
    return missing


def check_inputs(sweep: Sweep) -> None:
    """Refuse a sweep whose runs miss inputs, naming each missing input once with its run count.

    Raises:
        GaalError: the missing inputs.
    """
    counts: dict[str, int] = {}
    for run in sweep.runs:
        for item in missing_inputs(run.config):
            counts[item] = counts.get(item, 0) + 1
    if counts:
        lines = "; ".join(f"{item} ({n} run{'s' if n > 1 else ''})" for item, n in counts.items())
        raise GaalError(f"inputs missing on disk: {lines}", source=sweep.source)


def status(run: Run) -> str:
    """'done', 'stale' (done with another config, or from a dependency that changed since),
    'running' (locked by a live process), 'partial' (started, unfinished), 'new', or
    'new, missing input' (see `missing_inputs`)."""
    folder = RunFolder(run.folder)
    if folder.done:
        return "stale" if folder.stale_keys(run.config.resolved()) or changed_dependencies(folder) else "done"
    if not run.folder.is_dir():
        return "new, missing input" if missing_inputs(run.config) else "new"
    if locked(run.folder):
        return "running"
    return "partial" if any(run.folder.iterdir()) else "new"


def locked(folder: Path) -> bool:
    """Whether a live process holds the run folder's lock (it is training that run)."""
    return is_locked(folder)


def check_not_stale(sweep: Sweep) -> None:
    """Refuse to mix results: a finished run whose config differs from the sweep's, or one
    trained from a dependency that has changed since.

    Raises:
        GaalError: names the folder and the keys (or dependencies) that differ.
    """
    for run in sweep.runs:
        folder = RunFolder(run.folder)
        keys = ", ".join(folder.stale_keys(run.config.resolved())[:5])
        if keys:
            raise GaalError(
                f"holds a finished run of another config (differs in: {keys}); "
                "delete the folder to retrain it, or give the experiment another name",
                source=str(run.folder),
            )
        changed = ", ".join(changed_dependencies(folder)) if folder.done else ""
        if changed:
            raise GaalError(
                f"holds a finished run trained from a dependency that has changed since ({changed}); "
                "delete the folder to retrain it from the current one",
                source=str(run.folder),
            )


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


@dataclass
class Active:
    run: Run
    process: subprocess.Popen
    lock: int
    log: Any
    started: float


class Unwritable(str):
    """Why a run folder could not be written (launch's answer instead of a process)."""


def launch(run: Run, env: dict[str, str]) -> Active | str:
    """Lock the run folder and start its training process.

    Returns:
        The process, or 'running' if another process holds the run, or 'done' if another
        sweep finished it since this one started, or an `Unwritable` reason when the folder
        cannot be written (the results folder went read-only, a file is in the way, the disk is full).
    """
    lock = log = None
    try:
        lock = try_lock(run.folder, "gaal sweep")
        if lock is None:
            return "running"
        if RunFolder(run.folder).done:
            os.close(lock)
            return "done"
        write_file(run.folder / RunFolder.CONFIG, yaml.safe_dump(run.config.resolved(), sort_keys=False))
        command = run_command(run)
        log = open(run.folder / LOG, "a")
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        # the child inherits the locked descriptor and adopts it (gaal_cli.locks): the lock
        # lives as long as the run does, and the run's own `gaal train` is not refused by it
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**env, FD_ENV: str(lock)}, pass_fds=(lock,)
        )
    except (OSError, GaalError) as err:
        if log is not None:
            log.close()
        if lock is not None:
            os.close(lock)
        why = err.render() if isinstance(err, GaalError) else err.strerror or type(err).__name__
        return Unwritable(f"cannot write the run folder {run.folder} ({why})")
    write_holder(lock, "gaal train, launched by gaal sweep", pid=process.pid)
    return Active(run, process, lock, log, time.monotonic())


def submit_sweep(sweep: Sweep, folder: Path, options=None, cluster: str = "slurm") -> tuple[list[Run], list]:
    """Submit the runs not yet done as one Slurm job array (through submitit).

    Same rules as a local sweep: a stale finished run is refused, DONE runs are left out, and a
    partial run's job resumes from its `last.pt`. The jobs run on other machines, so no lock is
    held for them: submit again only after the array has finished, to redo what failed.

    Returns:
        The submitted runs and their submitit jobs, in the same order.
    """
    from gaal_cli.launchers import submit_slurm

    check_not_stale(sweep)
    # a job array cannot wait for another job here: runs whose dependencies are unfinished go
    # in a later submission
    pending = [
        run
        for run in sweep.runs
        if status(run) in ("new", "partial") and all(RunFolder(need).done for need in run.needs)
    ]
    for run in pending:
        write_file(run.folder / RunFolder.CONFIG, yaml.safe_dump(run.config.resolved(), sort_keys=False))
    jobs = submit_slurm([run_command(run) for run in pending], folder, options, cluster=cluster)
    return pending, jobs


def release(active: Active) -> None:
    active.log.close()
    os.close(active.lock)


def failure_reason(active: Active) -> str:
    code = active.process.returncode
    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    last = last_log_line(active.run)
    return f"{why}{': ' + last if last else ''} (log: {active.run.folder / LOG})"


def last_log_line(run: Run) -> str:
    """The last line a run's process wrote (its error, when it failed); '' when there is none."""
    try:
        lines = [line for line in (run.folder / LOG).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines and not lines[-1].startswith("# ") else ""


def input_error(active: Active) -> str | None:
    """The error of a run that failed on bad input (exit code 2), with its own folder left out,
    so that the same error in two runs compares equal; None for any other outcome."""
    if active.process.returncode != 2:
        return None
    return last_log_line(active.run).removeprefix("error: ").replace(str(active.run.folder), "<run>") or None


def eta_seconds(durations: list[float], left: int, running_elapsed: list[float], workers: int) -> float | None:
    """Time to finish: the mean run duration so far spread over the workers; None before any."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = left * mean + sum(max(mean - elapsed, 0.0) for elapsed in running_elapsed)
    return work / max(1, min(workers, left + len(running_elapsed)))


def statuses(sweep: Sweep) -> list[tuple[Run, str]]:
    """Each run with its status, for a dry run."""
    return [(run, status(run)) for run in sweep.runs]


def run_seconds(folder: RunFolder) -> float | None:
    """A finished run's training time from its report; None when the report does not say."""
    try:
        seconds = folder.read_report()["timings"]["total_seconds"]
    except (GaalError, KeyError, TypeError):
        return None
    return float(seconds) if isinstance(seconds, int | float) else None


def run_sweep(sweep: Sweep, workers: int = 1) -> Outcome:
    """Train every run of `sweep` not yet done, `workers` at a time, with one progress display.

    A failed run is recorded and the sweep goes on, until SAME_ERROR_LIMIT runs have failed
    with the same input error: then no more runs are launched (`Outcome.not_started`). Ctrl-C
    (or SIGTERM) stops the runs in progress (they keep their last epoch, so the next sweep
    resumes them) and is raised again.

    Raises:
        GaalError: a stale finished run, or runs whose inputs are missing (nothing is launched).
    """
    from gaal_cli.display import SweepProgress, styled

    check_not_stale(sweep)
    outcome = Outcome()
    todo = []
    for run in sweep.runs:
        (outcome.skipped if RunFolder(run.folder).done else todo).append(run)
    check_inputs(Sweep(sweep.name, sweep.source, todo))
    durations = [t for t in (run_seconds(RunFolder(r.folder)) for r in outcome.skipped) if t is not None]
    errors: dict[str, int] = {}
    env = child_env(workers)
    active: list[Active] = []
    with SweepProgress(sweep.name, len(sweep.runs), len(outcome.skipped)) as progress:
        try:
            while todo or active:
                while (
                    len(active) < workers
                    and outcome.stopped_because is None
                    and (picked := next_startable(todo, active, outcome))
                ):
                    run, blocked = picked
                    if blocked:
                        outcome.failed.append((run, blocked))
                        progress.finished(run, styled("not started", "red", f": {blocked}"), "failed")
                        continue
                    started = launch(run, env)
                    if isinstance(started, Unwritable):
                        outcome.failed.append((run, str(started)))
                        progress.finished(run, styled("failed", "red", f": {started}"), "failed")
                        continue
                    if started == "running":
                        outcome.busy.append(run)
                        progress.finished(run, styled("skipped: running in another process", "yellow"), "busy")
                        continue
                    if started == "done":
                        outcome.skipped.append(run)
                        progress.finished(run, "skipped: finished by another process")
                        continue
                    active.append(started)
                    progress.started(run)
                time.sleep(POLL_SECONDS)
                for a in [a for a in active if a.process.poll() is not None]:
                    active.remove(a)
                    _settle(a, outcome, durations, progress)
                    _stop_on_repeated_error(a, errors, outcome)
                if outcome.stopped_because is not None and not active:
                    outcome.not_started, todo = todo, []
                now = time.monotonic()
                elapsed = [now - a.started for a in active]
                progress.update(active, len(todo), eta_seconds(durations, len(todo), elapsed, workers))
        except (KeyboardInterrupt, Terminated):  # Ctrl-C or SIGTERM: the runs stop with the sweep
            _stop(active)
            raise
    return outcome


def _stop_on_repeated_error(active: Active, errors: dict[str, int], outcome: Outcome) -> None:
    """Count a run's input error; at SAME_ERROR_LIMIT of the same one, the sweep stops launching."""
    error = input_error(active)
    if error is None:
        return
    errors[error] = errors.get(error, 0) + 1
    if errors[error] >= SAME_ERROR_LIMIT and outcome.stopped_because is None:
        outcome.stopped_because = f"{errors[error]} runs failed with the same input error: {error}"


def next_startable(todo: list[Run], active: list[Active], outcome: Outcome) -> tuple[Run, str] | None:
    """Take from `todo` the first run that need not wait for a dependency.

    Returns:
        (run, '') for a run whose dependencies are all finished; (run, why) for one that cannot
        start because a dependency failed or is unfinished and not being trained; None when
        every run left waits for a dependency still training (here or in another process).
    """
    pending = {run.folder.resolve() for run in todo} | {a.run.folder.resolve() for a in active}
    failed = {run.folder.resolve() for run, _ in outcome.failed}
    for run in todo:
        why = ""
        for need in run.needs:
            if RunFolder(need).done:
                continue
            if need.resolve() in failed:
                why = f"its dependency {need} failed"
            elif need.resolve() in pending or locked(need):
                why = "wait"
            else:
                why = f"its dependency {need} is unfinished and not part of this sweep: train it first"
            break
        if why != "wait":
            todo.remove(run)
            return run, why
    return None


def _settle(active: Active, outcome: Outcome, durations: list[float], progress) -> None:
    from gaal_cli.display import styled

    release(active)
    seconds = time.monotonic() - active.started
    if active.process.returncode == 0 and RunFolder(active.run.folder).done:
        outcome.trained.append(active.run)
        durations.append(seconds)
        try:
            report = RunFolder(active.run.folder).read_report()["metrics"]["test"]
            accs = "  ".join(f"{head} {m['acc']:.4f}" for head, m in report.items())
        except (GaalError, KeyError, TypeError, ValueError):
            accs = ""
        progress.finished(active.run, styled("done", "green", f" in {seconds:.0f} s  {accs}"))
    else:
        reason = failure_reason(active)
        outcome.failed.append((active.run, reason))
        progress.finished(active.run, styled("failed", "red", f": {reason}"), "failed")


def _stop(active: list[Active]) -> None:
    """Interrupt runs in progress; a run that ignores the interrupt for 30 s is killed."""
    for a in active:
        if a.process.poll() is None:
            a.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    for a in active:
        try:
            a.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            a.process.kill()
            a.process.wait()
        release(a)
