"""gaal_cli.sweeps.scheduler alone: fake jobs (`python -c` that sleep, write timestamps, exit), no training."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import gaal_cli
from gaal_cli.foundation.locks import try_lock
from gaal_cli.sweeps import scheduler
from gaal_cli.sweeps.scheduler import Outcome, Plan, run_jobs

# writes <folder>/start and <folder>/end (time.time()), sleeps between them, then exits with
# the code given; DONE is written only on success, after `end`
JOB = """
import pathlib, sys, time
folder, seconds, code = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
(folder / "start").write_text(repr(time.time()))
time.sleep(seconds)
(folder / "end").write_text(repr(time.time()))
if code == 0:
    (folder / "DONE").touch()
elif code == 2:
    print(f"error: {folder}/table.csv: no such column 'label'")
sys.exit(code)
"""

# waits until the other job's folder has a `start` file (at most 60 s), then finishes
RENDEZVOUS = """
import pathlib, sys, time
folder, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(folder / "start").write_text(repr(time.time()))
deadline = time.time() + 60
while not (other / "start").exists():
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.02)
(folder / "DONE").touch()
"""


@dataclass
class FakeJob:
    folder: Path
    needs: tuple[Path, ...] = ()
    seconds: float = 0.2
    code: int = 0
    script: str = JOB
    args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.folder.name


class Recorder:
    """A Display that keeps what it was told."""

    def __init__(self):
        self.events = []

    def started(self, job):
        self.events.append(("started", job.label))

    def done(self, job, seconds):
        self.events.append(("done", job.label))

    def failed(self, job, why):
        self.events.append(("failed", job.label))

    def not_started(self, job, why):
        self.events.append(("not started", job.label))

    def busy(self, job):
        self.events.append(("busy", job.label))

    def skipped(self, job):
        self.events.append(("skipped", job.label))

    def update(self, active, left, eta):
        pass


def command(job: FakeJob) -> list[str]:
    args = job.args or (str(job.seconds), str(job.code))
    return [sys.executable, "-c", job.script, str(job.folder), *args]


def plan() -> Plan:
    return Plan(command=command, finished=lambda folder: (folder / "DONE").exists(), log_name="job.log")


def jobs(tmp_path: Path, *names: str, **kwargs) -> list[FakeJob]:
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(FakeJob(tmp_path / name, **kwargs))
    return out


def times(job: FakeJob, what: str) -> float:
    return float((job.folder / what).read_text())


def run(todo, workers, display=None):
    return run_jobs(list(todo), workers, plan(), display or Recorder(), Outcome(), [])


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(scheduler, "POLL_SECONDS", 0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_no_more_jobs_run_at_once_than_workers(tmp_path, workers):
    todo = jobs(tmp_path, "a", "b", "c", "d", seconds=0.3)
    outcome = run(todo, workers)
    assert sorted(j.label for j in outcome.trained) == ["a", "b", "c", "d"]
    spans = [(times(j, "start"), times(j, "end")) for j in todo]
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= workers
    assert (tmp_path / "a" / "job.log").read_text().startswith("# ")  # the command line heads the log


def test_two_workers_run_two_jobs_at_once(tmp_path):
    a, b = jobs(tmp_path, "a", "b", script=RENDEZVOUS)
    a.args, b.args = (str(b.folder),), (str(a.folder),)  # each finishes only once the other has started
    outcome = run([a, b], 2)
    assert outcome.trained == [a, b] or outcome.trained == [b, a]
    assert not outcome.failed


def test_a_job_waits_for_its_dependency(tmp_path):
    teacher, student = jobs(tmp_path, "teacher", "student", seconds=0.3)
    student.needs = (teacher.folder,)
    outcome = run([teacher, student], 2)  # a free worker is not enough: the student waits
    assert outcome.trained == [teacher, student]
    assert times(student, "start") >= times(teacher, "end")


def test_a_failed_dependency_skips_its_dependants_and_not_the_others(tmp_path):
    teacher, student, other = jobs(tmp_path, "teacher", "student", "other")
    teacher.code = 1
    student.needs = (teacher.folder,)
    display = Recorder()
    outcome = run([teacher, student, other], 1, display)
    failed = dict((job.label, why) for job, why in outcome.failed)
    assert failed["teacher"].startswith("exit code 1")
    assert failed["student"] == f"its dependency {teacher.folder} failed"
    assert not (student.folder / "start").exists()  # never launched
    assert outcome.trained == [other]
    assert ("not started", "student") in display.events


def test_a_dependency_outside_the_schedule_and_unfinished_is_not_waited_for(tmp_path):
    (student,) = jobs(tmp_path, "student")
    student.needs = (tmp_path / "elsewhere",)
    outcome = run([student], 1)
    ((job, why),) = outcome.failed
    assert job is student and "not part of this sweep" in why


def test_a_job_locked_by_another_process_is_left_alone(tmp_path):
    a, b = jobs(tmp_path, "a", "b")
    lock = try_lock(a.folder, "another sweep")
    assert lock is not None
    outcome = run([a, b], 2)
    assert outcome.busy == [a] and outcome.trained == [b]
    assert not (a.folder / "start").exists()


def test_exit_zero_without_finishing_is_a_failure(tmp_path):
    (job,) = jobs(tmp_path, "a")
    lying = Plan(command=command, finished=lambda folder: False, log_name="job.log")
    outcome = run_jobs([job], 1, lying, Recorder(), Outcome(), [])
    ((failed, why),) = outcome.failed
    assert failed is job and why.startswith("exit code 0")


def test_the_same_input_error_twice_stops_launching(tmp_path):
    todo = jobs(tmp_path, "a", "b", "c", "d", code=2)
    outcome = run(todo, 1)
    assert len(outcome.failed) == scheduler.SAME_ERROR_LIMIT
    assert outcome.not_started == todo[scheduler.SAME_ERROR_LIMIT :]
    assert outcome.stopped_because and "same input error" in outcome.stopped_because


def test_the_eta_spreads_the_mean_duration_over_the_workers():
    assert scheduler.eta_seconds([], 3, [], 2) is None
    assert scheduler.eta_seconds([10.0, 30.0], 2, [5.0], 2) == pytest.approx((2 * 20 + 15) / 2)


def test_the_scheduler_imports_no_torch():
    probe = "import sys, gaal_cli.sweeps.scheduler; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(gaal_cli.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
