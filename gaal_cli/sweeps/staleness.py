"""What state each run of a sweep is in, before anything runs: done, stale, running, partial,
new, or new with an input missing on disk.

A finished run (DONE + report.json) is stale when its config differs from the sweep's, when a
dependency's checkpoint changed since it was trained (a retrained teacher), or when its method
computes differently today: the behaviour hash it recorded (report.json
`provenance.behaviour`) is not today's trace of its method at its settings
(gaal_cli.training.behaviour), or its method could not be traced. A run that recorded no
behaviour (trained before gaal 0.2.0) cannot be checked: it counts as done and a dry run names it
"unverified". A refactor leaves the trace, and so the run, as it was; another host
does not make a run stale (its host is named in report.json and in the report's tables).
`check_not_stale` refuses to mix a stale run with new results. A run folder locked by a live process is running
(gaal_cli.foundation.locks). `check_inputs` refuses a sweep whose runs miss a prepared data folder, a table
or a weights file.
"""

from __future__ import annotations

from pathlib import Path

from gaal_cli.config import Config
from gaal_cli.data.recipes import TABLE_SUFFIXES
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.locks import is_locked
from gaal_cli.runs.dependencies import changed_dependencies
from gaal_cli.runs.folder import RunFolder
from gaal_cli.sweeps.experiment_files import Run, Sweep


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


def check_data(sweep: Sweep, deep: bool = False) -> list[str]:
    """Each distinct dataset of the sweep's runs checked as its runs would check it, before any
    starts: a table's named columns and target, a recipe's prepared folder, a dependency's or
    weights file's presence (gaal_cli.training.preflight); with `deep` (a dry run) a table also
    goes through `gaal data inspect`'s path (roles, leakage, split, images' headers, dropping).

    Returns:
        A line per table checked deeply (rows, classes, what training would drop, leakage).

    Raises:
        GaalError: the first problem, naming how many runs it concerns.
    """
    from gaal_cli.training.preflight import check_run_inputs

    by_data: dict[str, list[Run]] = {}
    for run in sweep.runs:
        by_data.setdefault(run.config.data.model_dump_json(), []).append(run)
    lines = []
    for runs in by_data.values():
        config = runs[0].config
        try:
            check_run_inputs(config, dependencies=False)
            if deep and config.data.name.lower().endswith(TABLE_SUFFIXES):
                lines.append(_inspected(config))
        except GaalError as err:
            many = f" ({len(runs)} runs, e.g. {runs[0].label})" if len(runs) > 1 else f" (run {runs[0].label})"
            raise GaalError(err.message + many, source=err.source or sweep.source, field=err.field) from None
    return lines


def _inspected(config: Config) -> str:
    """One line on a table as `gaal data inspect` sees it; raises what training would raise."""
    from gaal_cli.data.user_table import inspect_table

    found, error = inspect_table(config.data)
    if error is not None:
        raise error
    dropped = {k: v for k, v in found["dropped"].items() if v}
    line = (
        f"{found['table']}: {found['rows']} rows, {len(found['classes'])} classes, split {found['split']}; "
        + (f"training would drop {dropped}" if dropped else "training would drop no rows")
    )
    return line + (f"; warning: {found['leakage_warning']}" if found["leakage_warning"] else "")


def status(run: Run) -> str:
    """'done', 'stale' (done with another config, or from a dependency that changed since),
    'running' (locked by a live process), 'partial' (started, unfinished), 'new', or
    'new, missing input' (see `missing_inputs`)."""
    folder = RunFolder(run.folder)
    if folder.done:
        return "stale" if stale_reasons(run) else "done"
    if not run.folder.is_dir():
        return "new, missing input" if missing_inputs(run.config) else "new"
    if locked(run.folder):
        return "running"
    return "partial" if any(run.folder.iterdir()) else "new"


def stale_reasons(run: Run) -> list[str]:
    """Why the finished run in `run.folder` is stale (none when it is current)."""
    folder = RunFolder(run.folder)
    keys = folder.stale_keys(run.config.resolved())
    reasons = [f"config differs in {', '.join(keys[:5])}"] if keys else []
    changed = changed_dependencies(folder)
    reasons += [f"a dependency changed since ({', '.join(changed)})"] if changed else []
    behaviour = behaviour_change(folder, run.config)
    return reasons + ([behaviour] if behaviour else [])


def behaviour_change(folder: RunFolder, config: Config) -> str | None:
    """Why the finished run's method does not compute today what it computed then, or None (also
    when the run recorded no behaviour: it cannot be checked, see `_recorded_behaviour`)."""
    from gaal_cli.training.behaviour import FORMAT, method_trace

    recorded = _recorded_behaviour(_provenance(folder))
    if recorded is None:
        return None  # unverified, not stale
    if recorded.get("format") != FORMAT or recorded.get("method") != config.method:
        return "its behaviour record is of another trace format or method"
    if recorded["hash"] is None:
        return f"its method could not be traced when it trained ({recorded.get('error', 'no reason recorded')})"
    try:
        today = method_trace(config.method, config.method_settings()).digest
    except Exception as err:  # noqa: BLE001 - a method's own code failing here leaves it unproven, not current
        return f"its method cannot be traced today ({type(err).__name__}: {err})"
    if today != recorded["hash"]:
        return f"its method computes differently today (behaviour {recorded['hash']}, today {today})"
    return None


def _recorded_behaviour(provenance: dict | None) -> dict | None:
    """report.json's `provenance.behaviour` when it holds a hash (or a null one with its error).
    None for a run trained before gaal 0.2.0: today's code cannot be checked against it, so it
    counts as done, "unverified" in a dry run, rebuilt by the campaign (`gaal reproduce`)."""
    recorded = (provenance or {}).get("behaviour")
    return recorded if isinstance(recorded, dict) and "hash" in recorded else None


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
        if not folder.done:
            continue
        keys = ", ".join(folder.stale_keys(run.config.resolved())[:5])
        other = folder.other_dataset(run.config.resolved()) if keys else None
        if other:
            raise GaalError(
                f"holds a finished run on another dataset ({other}); give the experiment another name "
                "or the sweep another --results folder (deleting the folder would lose that run)",
                source=str(run.folder),
            )
        if keys:
            raise GaalError(
                f"holds a finished run of another config (differs in: {keys}); "
                "delete the folder to retrain it, or give the experiment another name",
                source=str(run.folder),
            )
        changed = ", ".join(changed_dependencies(folder))
        if changed:
            raise GaalError(
                f"holds a finished run trained from a dependency that has changed since ({changed}); "
                "delete the folder to retrain it from the current one",
                source=str(run.folder),
            )
        behaviour = behaviour_change(folder, run.config)
        if behaviour:
            raise GaalError(
                f"holds a finished run whose results today's code would not reproduce: {behaviour}; "
                "delete the folder to retrain it with today's code",
                source=str(run.folder),
            )


def statuses(sweep: Sweep) -> list[tuple[Run, str]]:
    """Each run with its status."""
    return [(run, status(run)) for run in sweep.runs]


def described_statuses(sweep: Sweep) -> list[tuple[Run, str]]:
    """Each run with its status, a stale one with why, and a done one with the host it ran on
    when that is not this one (named, not stale), for a dry run."""
    from gaal_cli.runs.provenance import determinism, host, host_key

    here = host_key({"host": host(), "determinism": determinism()})
    return [(run, described_status(run, here)) for run in sweep.runs]


def described_status(run: Run, here: str) -> str:
    """`status` with its reasons: each check made once, the run's report read twice at most."""
    from gaal_cli.runs.provenance import host_key

    folder = RunFolder(run.folder)
    if not folder.done:
        return status(run)
    reasons = stale_reasons(run)
    if reasons:
        return "stale: " + "; ".join(reasons)
    provenance = _provenance(folder)
    if _recorded_behaviour(provenance) is None:
        return "done (unverified: no behaviour record, trained before gaal 0.2.0)"
    there = host_key(provenance)
    return "done" if there in (here, "unrecorded") else f"done (on {there})"


def _provenance(folder: RunFolder) -> dict | None:
    try:
        found = folder.read_report().get("provenance")
    except (GaalError, AttributeError):
        return None
    return found if isinstance(found, dict) else None
