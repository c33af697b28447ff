"""`gaal train --dry-run`: what a run would read, checked as training checks it, without training
or writing anything.

The data: a user table goes through `gaal data inspect`'s path (training's own reading, roles,
leakage checks, split and dropping, each image's header opened); a prepared dataset's manifest is
read; the embedded set is named. Then the method's stages are placed in `train.epochs` (refused
when they cannot fit, as training refuses) and each dependency's checkpoint is read and checked.
The first thing training would refuse is raised, with its message; the rest is returned as lines
and tables for the console.
"""

from __future__ import annotations

from pathlib import Path

from gaal_cli.config import Config
from gaal_cli.data.recipes import MANIFEST, RECIPES, TABLE_SUFFIXES
from gaal_cli.foundation.display import console, inspection_tables
from gaal_cli.foundation.untrusted import read_json
from gaal_cli.runs.dependencies import read_dependency
from gaal_cli.runs.folder import RunFolder
from gaal_cli.training.engine import plan_method_stages


def dry_run(config: Config, run_dir: Path) -> list:
    """`gaal train --dry-run`: the resolved config, the checks of `check_run`, and what training would
    do with its run folder (train it, resume it, show its finished run, or refuse it).

    Raises:
        GaalError: what training would refuse first.
    """
    import yaml

    parts: list = [yaml.safe_dump(config.resolved(), sort_keys=False).rstrip()]
    parts += check_run(config)
    folder = RunFolder(run_dir)
    if folder.done:
        folder.refuse_overwrite(config.resolved())
        plan = "holds a finished run of this config: gaal train would print it and train nothing"
    else:
        state = folder.state() if folder.holds_run else "new"
        plan = f"would train {config.method} on {config.data.name} here ({state})"
    return [*parts, f"dry run, nothing written: {run_dir} {plan}"]


def check_run(config: Config) -> list:
    """The dry run's findings, in order: data, stages, dependencies.

    Raises:
        GaalError: what training would refuse first.
    """
    parts = data_findings(config)
    stages = plan_method_stages(config)
    plan = ", ".join(f"{p.name} epochs {p.start}-{p.end}" for p in stages)
    parts.append(f"method {config.method}: {len(stages)} stage{'s' * (len(stages) > 1)} ({plan})")
    for key, path in config.dependencies().items():
        dep = read_dependency(path, key)
        parts.append(f"{key}: {dep.file} ({dep.config.method} run, read and checked)")
    return parts


def data_findings(config: Config) -> list:
    data = config.data
    if data.name.lower().endswith(TABLE_SUFFIXES):
        from gaal_cli.data.user_table import inspect_table

        found, error = inspect_table(data)
        parts = inspection_tables(found)
        if error is not None:
            for part in parts:  # shown before the refusal, as `gaal data inspect` shows them
                console.print(part)
            raise error
        return parts
    if data.name in RECIPES:
        manifest = read_json(Path(str(data.dir)) / MANIFEST)
        counts = manifest.get("counts") if isinstance(manifest, dict) else None
        return [f"prepared {data.name} data in {data.dir}: {counts}"]
    return [f"the embedded {data.name} dataset, generated in-process from the config and seed"]
