"""Where the runs of a sweep execute: one after another on this machine, or as Slurm jobs.

Both launchers take the same input, one command line per run (e.g. `["gaal", "train", "x.yaml",
"--seed", "3"]`), so the sweep decides what to run and a launcher only decides where. The resume
rules therefore stay in one place, the sweep and the engine: the sweep leaves out the runs whose
folder is DONE, and a run that a launcher starts again resumes from its own `last.pt`.

Slurm goes through submitit (an optional dependency: `pip install 'gaal[slurm]'`). The runs are
submitted as one job array; each array task runs its command in a subprocess, so a job needs
nothing from this Python session but the command line.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaal_cli.foundation.errors import GaalError


def run_local(commands: Sequence[Sequence[str]]) -> list[int]:
    """Run each command to completion, one after another, and return their exit codes.

    A failed run does not stop the others: its code is in the result and its folder stays
    without DONE, so the next sweep starts it again.
    """
    return [subprocess.run(list(command)).returncode for command in commands]


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each run's job; the names are submitit's (generic ones, or `slurm_*`).

    Attributes:
        partition: Slurm partition (None: the cluster's default).
        timeout_min: wall-clock limit of one run, in minutes.
        gpus_per_node, cpus_per_task, mem_gb: resources of one run (one task on one node).
        array_parallelism: how many runs of the array Slurm may start at once.
        extra: any other submitit parameter, e.g. {"slurm_account": "x", "slurm_qos": "y"}.
    """

    partition: str | None = None
    timeout_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    array_parallelism: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """Keyword arguments for `submitit.AutoExecutor.update_parameters`."""
        params: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "gpus_per_node": self.gpus_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "nodes": 1,
            "tasks_per_node": 1,
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.partition:
            params["slurm_partition"] = self.partition
        return {**params, **self.extra}


def run_command(command: list[str]) -> int:
    """What each Slurm job executes: the run's own command line, its output in the job's log.

    Raises:
        subprocess.CalledProcessError: the run failed, so submitit marks the job as failed.
    """
    return subprocess.run(command, check=True).returncode


def submit_slurm(
    commands: Sequence[Sequence[str]],
    folder: str | Path,
    options: SlurmOptions | None = None,
    *,
    cluster: str = "slurm",
) -> list[Any]:
    """Submit every command as one task of a Slurm job array and return the submitit jobs.

    Args:
        commands: one command line per run.
        folder: where submitit keeps the job scripts, pickles and logs (`%j` is the job id).
        options: the resources of each run.
        cluster: "slurm"; tests pass submitit's "local" or "debug" executor instead.

    Returns:
        submitit `Job`s in the order of `commands` (`job.job_id`, `job.state`, `job.result()`).

    Raises:
        GaalError: submitit is not installed, or `options.extra` names an unknown parameter.
    """
    submitit = _import_submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    try:
        executor.update_parameters(name="gaal", **(options or SlurmOptions()).parameters())
    except NameError as err:  # submitit's way of rejecting an unknown parameter
        raise GaalError(str(err).splitlines()[0], field="slurm options") from None
    if not commands:
        return []
    return executor.map_array(run_command, [list(c) for c in commands])


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise GaalError(
            "the slurm launcher needs submitit, which is not installed: pip install 'gaal[slurm]'",
            field="--launcher",
        ) from None
    return submitit
