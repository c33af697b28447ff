"""Experiment files and their grids: find a file by name, expand its `sweep` block into runs.

A sweep file is an ordinary experiment file plus a `sweep` block (seeds, grid, variant; see
gaal_cli.sweeps.runner). `load_sweep` expands it into validated `Run`s, each with its run folder and
the run folders it depends on, dependencies first (gaal_cli.sweeps.order); `load_ablation`
makes Table II's rows a sweep. Nothing here writes or runs anything.
"""

from __future__ import annotations

import copy
import importlib.resources
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import gaal_cli
from gaal_cli.config import SEED_MAX, Config, Seed, config_from_mapping, read_yaml
from gaal_cli.data.recipes import TABLE_SUFFIXES
from gaal_cli.foundation.errors import GaalError, did_you_mean
from gaal_cli.runs.folder import run_dataset_folder
from gaal_cli.sweeps.order import dependencies_first, dependency_folders

EXPERIMENTS = Path("experiments")
# the checkout an editable install runs from; a wheel carries the same files as gaal_cli/experiments
CHECKOUT_EXPERIMENTS = Path(gaal_cli.__file__).resolve().parents[1] / "experiments"
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
    dataset: dict[str, Any] | None = None,
) -> Sweep:
    """Expand a sweep file into validated runs; nothing is written.

    Args:
        overrides: `key=value` strings applied to every run (after the grid point).
        seeds: replaces `sweep.seeds`.
        axes: grid axes to set, replacing any axis at or below the same key (`gaal ablate`).
        dataset: the `data.*` keys of `--dataset`, `--target`, ... (None values ignored): every run is
            on that dataset, and the experiment's name becomes `<name>/<dataset folder>` (a table's
            folder is its stem and a hash: gaal_cli.runs.folder.run_dataset_folder), the name losing
            a first part that named the file's own dataset (`synthetic/lambda` -> `lambda/cars-3f2a9c1b`).

    Raises:
        GaalError: a bad sweep block, a grid point that does not validate (the message names
            the point), or two runs sharing a folder.
    """
    tree = read_yaml(path)
    spec = _read_spec(tree.pop("sweep", None), path)
    tree.setdefault("name", experiment_name(path))
    flags = {k: v for k, v in (dataset or {}).items() if v is not None}
    if flags.get("data.name"):
        # the dataset's folder joins the name, so that `{name}` in a dependency's path finds it too
        tree["name"] = f"{name_for_dataset(tree)}/{run_dataset_folder(str(flags['data.name']))}"
    grid = dict(spec.grid)
    for key, values in (axes or {}).items():
        grid = {k: v for k, v in grid.items() if k != key and not k.startswith(f"{key}.")}
        grid[key] = values
    runs, seen = [], {}
    for seed in seeds or spec.seeds:
        for point in expand(grid):
            config = _point_config(tree, point, seed, overrides, path, flags)
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


def _read_spec(block: Any, path: Path) -> SweepSpec:
    try:
        return SweepSpec.model_validate(block or {})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(["sweep", *(str(p) for p in first["loc"])])
        raise GaalError(first["msg"], source=str(path), field=key) from None


def _point_config(tree: dict, point: dict[str, Any], seed: int, overrides, path: Path, flags=None) -> Config:
    run_tree = copy.deepcopy(tree)
    run_tree["seed"] = seed
    for key, value in point.items():
        merge(run_tree, key, value)
    where = ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "the base config"
    return config_from_mapping(run_tree, f"{path} (grid point {where})", overrides, flags)


def name_for_dataset(tree: dict) -> str:
    """An experiment's name once `--dataset` puts its runs on another dataset: without a first part
    that named the file's own dataset (`synthetic/lambda` -> `lambda`), so no folder says synthetic."""
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    own = str(data.get("name", "synthetic"))
    first, _, rest = str(tree["name"]).partition("/")
    return rest if rest and first == own else str(tree["name"])


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
    table: dict[str, Any] | None = None,
) -> Sweep:
    """Table II as a sweep: the `methods.gaal` axis of the ablation file becomes the rows of
    `components` (see `ablation_rows`), for the runs on `datasets`.

    Args:
        experiment: the ablation file; default the dataset's own (`OWN_ABLATION_FILE`), the
            CPU-scale one for a table (.csv, .parquet), else `table2_ablation` (DVM and SUN).
        table: the `data.*` keys of a table's `--target`, `--image-column`, ... (a table dataset's
            runs go under its own folder: see `load_sweep`'s `dataset`).

    Raises:
        GaalError: a repeated component, one that is no GAAL setting, or a dataset the file lacks.
    """
    if len(set(components)) != len(components):
        raise GaalError(f"a component is listed twice: {' '.join(components)}", source="gaal ablate")
    axes = {"methods.gaal": ablation_rows(components)}
    runs, names, files = [], [], []
    tables = [d for d in datasets if d.lower().endswith(TABLE_SUFFIXES)]
    for dataset in tables:
        flags = {**(table or {}), "data.name": dataset}
        name = experiment or OWN_ABLATION_FILE["synthetic"]
        sweep = load_sweep(resolve_experiment(name), overrides, seeds=seeds, results=results, axes=axes, dataset=flags)
        runs += sweep.runs
        names.append(f"{sweep.name} on {Path(dataset).name}")
        files.append(name)
    by_file: dict[str, list[str]] = {}
    for dataset in datasets:
        if dataset not in tables:
            by_file.setdefault(experiment or OWN_ABLATION_FILE.get(dataset, "table2_ablation"), []).append(dataset)
    for name, wanted in by_file.items():
        sweep = load_sweep(resolve_experiment(name), overrides, seeds=seeds, results=results, axes=axes)
        covered = {r.config.data.name for r in sweep.runs}
        if set(wanted) - covered:
            missing = ", ".join(sorted(set(wanted) - covered))
            raise GaalError(
                f"has no runs on {missing}; it covers {', '.join(sorted(covered))} (a table, .csv or .parquet, "
                "takes any ablation file: its runs are put on the table)",
                source=sweep.source,
            )
        runs += [r for r in sweep.runs if r.config.data.name in wanted]
        names.append(sweep.name)
        files.append(name)
    return Sweep(" + ".join(names), ", ".join(files), runs)
