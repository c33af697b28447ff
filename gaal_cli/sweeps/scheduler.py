"""Run commands, `workers` at a time, each once the jobs it needs have finished, each under its
folder's lock: the process side of a sweep, and nothing else.

A job is anything with a `folder` (where its lock and its log live, and the name its dependants
give it in `needs`), the folders it `needs` finished first, and a `label`. What the command
is, what "finished" means and what to write before starting are the caller's (`Plan`);
what is shown is the caller's too (`Display`). gaal_cli.sweeps.runner runs a sweep's training runs
through it.

Each job is its own process with its output in `<folder>/<Plan.log_name>`, so a crash or kill
of one cannot touch another. The scheduler takes the folder's lock (gaal_cli.foundation.locks) before
launching and hands it to the process (which adopts it through `FD_ENV`), so a second
scheduler over the same folders leaves jobs in progress alone. A job whose dependency failed,
or is unfinished and neither here nor locked elsewhere, is not started; one whose dependency is
still running (here or in another process) waits. When `SAME_ERROR_LIMIT` jobs fail with the
same input error (exit code 2), no more are launched. This module imports no torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import Terminated, open_appending
from gaal_cli.foundation.locks import FD_ENV, is_locked, try_lock, write_holder

POLL_SECONDS = 0.5
# jobs failing with the same input error (exit code 2) before no more are launched
SAME_ERROR_LIMIT = 2
# how long a job may ignore the interrupt of a stopped scheduler before it is killed
STOP_SECONDS = 30


class Job(Protocol):
    folder: Path
    needs: tuple[Path, ...]

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class Plan:
    """What the scheduler asks of its caller about the jobs.

    Args:
        command: the command line of a job.
        finished: whether a folder holds a finished job (a dependency met; a job that exited 0
            but is not finished failed).
        prepare: run under the job's lock just before its process starts (write its inputs);
            an OSError or GaalError from it fails the job as unwritable.
        env: the processes' environment.
        log_name: the file in a job's folder its output is appended to.
        taker: who takes a folder's lock before launching (named to a process refused by it).
        holder: the lock holder written for a running job (`gaal_cli.foundation.locks.read_holder`).
    """

    command: Callable[[Any], list[str]]
    finished: Callable[[Path], bool]
    prepare: Callable[[Any], None] = lambda job: None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    log_name: str = "job.log"
    taker: str = "gaal sweep"
    holder: str = "a job launched by gaal sweep"


class Display(Protocol):
    """What the scheduler reports, as it happens."""

    def started(self, job: Any) -> None: ...

    def done(self, job: Any, seconds: float) -> None: ...

    def failed(self, job: Any, why: str) -> None: ...

    def not_started(self, job: Any, why: str) -> None: ...

    def busy(self, job: Any) -> None: ...

    def skipped(self, job: Any) -> None: ...

    def update(self, active: Sequence[Active], left: int, eta: float | None) -> None: ...


@dataclass
class Outcome:
    """What a schedule did: jobs run now, already done, failed (with why) and locked elsewhere."""

    trained: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list[tuple[Any, str]] = field(default_factory=list)
    busy: list = field(default_factory=list)
    not_started: list = field(default_factory=list)
    stopped_because: str | None = None


@dataclass
class Active:
    """A job whose process is running (`run`: the job)."""

    run: Any
    process: subprocess.Popen
    lock: int
    log: IO[str]
    log_path: Path
    started: float


class Unwritable(str):
    """Why a job's folder could not be written (launch's answer instead of a process)."""


def run_jobs(
    todo: list, workers: int, plan: Plan, display: Display, outcome: Outcome, durations: list[float]
) -> Outcome:
    """Run the jobs of `todo` in order, `workers` at a time, each once its dependencies are finished.

    Args:
        todo: the jobs to run, dependencies first; emptied as they start.
        outcome: what was decided before (jobs already done, in `skipped`); filled in.
        durations: seconds of jobs already finished, for the ETA; the jobs run now are added.

    A failed job is recorded and the others go on, until SAME_ERROR_LIMIT have failed with the
    same input error: then no more are launched (`Outcome.not_started`). Ctrl-C (or SIGTERM)
    interrupts the jobs in progress and is raised again.
    """
    errors: dict[str, int] = {}
    active: list[Active] = []
    try:
        while todo or active:
            _start_what_can(todo, active, workers, plan, display, outcome)
            time.sleep(POLL_SECONDS)
            for a in [a for a in active if a.process.poll() is not None]:
                active.remove(a)
                _settle(a, plan, display, outcome, durations)
                _stop_on_repeated_error(a, errors, outcome)
            if outcome.stopped_because is not None and not active:
                outcome.not_started, todo[:] = list(todo), []
            now = time.monotonic()
            elapsed = [now - a.started for a in active]
            display.update(active, len(todo), eta_seconds(durations, len(todo), elapsed, workers))
    except (KeyboardInterrupt, Terminated):  # Ctrl-C or SIGTERM: the jobs stop with the scheduler
        _stop(active)
        raise
    return outcome


def _start_what_can(
    todo: list, active: list[Active], workers: int, plan: Plan, display: Display, outcome: Outcome
) -> None:
    """Launch jobs while a worker is free and a job need not wait."""
    while (
        len(active) < workers
        and outcome.stopped_because is None
        and (picked := next_startable(todo, active, outcome, plan.finished))
    ):
        job, blocked = picked
        if blocked:
            outcome.failed.append((job, blocked))
            display.not_started(job, blocked)
            continue
        started = launch(job, plan)
        if isinstance(started, Unwritable):
            outcome.failed.append((job, str(started)))
            display.failed(job, str(started))
        elif started == "running":
            outcome.busy.append(job)
            display.busy(job)
        elif started == "done":
            outcome.skipped.append(job)
            display.skipped(job)
        else:
            active.append(started)
            display.started(job)


def next_startable(
    todo: list, active: Sequence[Any], outcome: Outcome, finished: Callable[[Path], bool]
) -> tuple[Any, str] | None:
    """Take from `todo` the first job that need not wait for a dependency.

    Args:
        active: the jobs running (anything with `.run`, the job).

    Returns:
        (job, '') for a job whose dependencies are all finished; (job, why) for one that cannot
        start because a dependency failed or is unfinished and not being run; None when every
        job left waits for a dependency still running (here or in another process).
    """
    pending = {job.folder.resolve() for job in todo} | {a.run.folder.resolve() for a in active}
    failed = {job.folder.resolve() for job, _ in outcome.failed}
    for job in todo:
        why = ""
        for need in job.needs:
            if finished(need):
                continue
            if need.resolve() in failed:
                why = f"its dependency {need} failed"
            elif need.resolve() in pending or is_locked(need):
                why = "wait"
            else:
                why = f"its dependency {need} is unfinished and not part of this sweep: train it first"
            break
        if why != "wait":
            todo.remove(job)
            return job, why
    return None


def launch(job: Any, plan: Plan) -> Active | str:
    """Lock the job's folder and start its process.

    Returns:
        The process, or 'running' if another process holds the folder, or 'done' if another
        process finished the job since this schedule started, or an `Unwritable` reason when
        the folder cannot be written (gone read-only, a file in the way, the disk full).
    """
    lock = log = None
    path = job.folder / plan.log_name
    try:
        lock = try_lock(job.folder, plan.taker)
        if lock is None:
            return "running"
        if plan.finished(job.folder):
            os.close(lock)
            return "done"
        plan.prepare(job)
        command = plan.command(job)
        log = open_appending(path, "a")  # never through a link planted at train.log
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        # the child inherits the locked descriptor and adopts it (gaal_cli.foundation.locks): the lock
        # lives as long as the job does, and the job's own command is not refused by it
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**plan.env, FD_ENV: str(lock)}, pass_fds=(lock,)
        )
    except (OSError, GaalError) as err:
        if log is not None:
            log.close()
        if lock is not None:
            os.close(lock)
        why = err.render() if isinstance(err, GaalError) else err.strerror or type(err).__name__
        return Unwritable(f"cannot write the run folder {job.folder} ({why})")
    write_holder(lock, plan.holder, pid=process.pid)
    return Active(job, process, lock, log, path, time.monotonic())


def release(active: Active) -> None:
    active.log.close()
    os.close(active.lock)


def failure_reason(active: Active) -> str:
    code = active.process.returncode
    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    last = last_log_line(active.log_path)
    return f"{why}{': ' + last if last else ''} (log: {active.log_path})"


def last_log_line(path: Path) -> str:
    """The last line a job's process wrote (its error, when it failed); '' when there is none."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines and not lines[-1].startswith("# ") else ""


def input_error(active: Active) -> str | None:
    """The error of a job that failed on bad input (exit code 2), with its own folder left out,
    so that the same error in two jobs compares equal; None for any other outcome."""
    if active.process.returncode != 2:
        return None
    return last_log_line(active.log_path).removeprefix("error: ").replace(str(active.run.folder), "<run>") or None


def eta_seconds(durations: list[float], left: int, running_elapsed: list[float], workers: int) -> float | None:
    """Time to finish: the mean job duration so far spread over the workers; None before any."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = left * mean + sum(max(mean - elapsed, 0.0) for elapsed in running_elapsed)
    return work / max(1, min(workers, left + len(running_elapsed)))


def _stop_on_repeated_error(active: Active, errors: dict[str, int], outcome: Outcome) -> None:
    """Count a job's input error; at SAME_ERROR_LIMIT of the same one, no more jobs are launched."""
    error = input_error(active)
    if error is None:
        return
    errors[error] = errors.get(error, 0) + 1
    if errors[error] >= SAME_ERROR_LIMIT and outcome.stopped_because is None:
        outcome.stopped_because = f"{errors[error]} runs failed with the same input error: {error}"


def _settle(active: Active, plan: Plan, display: Display, outcome: Outcome, durations: list[float]) -> None:
    release(active)
    seconds = time.monotonic() - active.started
    if active.process.returncode == 0 and plan.finished(active.run.folder):
        outcome.trained.append(active.run)
        durations.append(seconds)
        display.done(active.run, seconds)
    else:
        reason = failure_reason(active)
        outcome.failed.append((active.run, reason))
        display.failed(active.run, reason)


def _stop(active: list[Active]) -> None:
    """Interrupt jobs in progress; one that ignores the interrupt for STOP_SECONDS is killed."""
    for a in active:
        if a.process.poll() is None:
            a.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    for a in active:
        try:
            a.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            a.process.kill()
            a.process.wait()
        release(a)
