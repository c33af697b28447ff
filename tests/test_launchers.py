"""Launchers: local subprocesses, and Slurm job arrays through submitit (run with its local executor)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gaal_cli.foundation.errors import GaalError
from gaal_cli.sweeps.launchers import SlurmOptions, run_local, submit_slurm

ROOT = Path(__file__).resolve().parents[1]


def append(path: Path, text: str, code: int = 0) -> list[str]:
    """A command that appends `text` to `path`, then exits with `code`."""
    script = f"open({str(path)!r}, 'a').write({text!r}); raise SystemExit({code})"
    return [sys.executable, "-c", script]


def test_run_local_runs_in_order_and_keeps_going_after_a_failure(tmp_path):
    log = tmp_path / "log"
    codes = run_local([append(log, "a"), append(log, "b", code=3), append(log, "c")])
    assert codes == [0, 3, 0]
    assert log.read_text() == "abc"


def test_slurm_options_map_to_submitit_parameters():
    params = SlurmOptions(partition="gpu", timeout_min=30, extra={"slurm_account": "lab"}).parameters()
    assert params["slurm_partition"] == "gpu"
    assert params["timeout_min"] == 30
    assert params["slurm_account"] == "lab"
    assert params["nodes"] == params["tasks_per_node"] == 1
    assert "slurm_partition" not in SlurmOptions().parameters()  # the cluster's default partition


def test_without_submitit_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    with pytest.raises(GaalError, match=r"pip install 'gaal\[slurm\]'"):
        submit_slurm([["true"]], tmp_path)


def test_an_unknown_slurm_parameter_is_a_user_error(tmp_path):
    pytest.importorskip("submitit", reason="submitit is the optional 'slurm' extra")
    with pytest.raises(GaalError, match="slurm_acount"):
        submit_slurm([["true"]], tmp_path, SlurmOptions(extra={"slurm_acount": "lab"}), cluster="local")


def test_each_command_becomes_one_job_and_a_failed_run_fails_its_job(tmp_path):
    submitit = pytest.importorskip("submitit", reason="submitit is the optional 'slurm' extra")
    commands = [append(tmp_path / "first", "1"), append(tmp_path / "second", "2", code=4)]
    jobs = submit_slurm(commands, tmp_path / "jobs", SlurmOptions(timeout_min=5, gpus_per_node=0), cluster="local")
    assert len(jobs) == 2
    assert jobs[0].result() == 0
    with pytest.raises(submitit.core.utils.FailedJobError):
        jobs[1].result()
    assert (tmp_path / "first").read_text() == "1" and (tmp_path / "second").read_text() == "2"


@pytest.mark.slow
def test_a_gaal_run_submitted_as_a_job_finishes_its_run_folder(tmp_path, monkeypatch, tiny):
    pytest.importorskip("submitit", reason="submitit is the optional 'slurm' extra")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the job's interpreter imports this checkout
    out = tmp_path / "run"
    command = [sys.executable, "-m", "gaal_cli", "train", "--quiet", "--out", str(out), "--epochs", "1"]
    command += [f"--set={o}" for o in tiny]
    (job,) = submit_slurm([command], tmp_path / "jobs", SlurmOptions(timeout_min=5, gpus_per_node=0), cluster="local")
    assert job.result() == 0
    assert (out / "DONE").exists() and (out / "report.json").exists()


def test_slurm_sweep_submits_only_unfinished_runs(tmp_path, tiny):
    """`gaal sweep --launcher slurm` path, through submitit's in-process debug executor."""
    pytest.importorskip("submitit")
    from gaal_cli.sweeps.runner import load_sweep, status, submit_sweep

    spec = tmp_path / "tiny.yaml"
    body = "\n".join(f"  {o.split('=')[0].split('.', 1)[1]}: {o.split('=')[1]}" for o in tiny if o.startswith("train."))
    spec.write_text(f"name: tiny\ntrain:\n{body}\nsweep:\n  seeds: [1, 2]\n  grid:\n    method: [concat]\n")
    sweep = load_sweep(spec, [o for o in tiny if not o.startswith("train.")], seeds=None, results=tmp_path / "res")
    first, second = sweep.runs
    runs, jobs = submit_sweep(sweep, tmp_path / "jobs", cluster="debug")
    assert [r.folder for r in runs] == [first.folder, second.folder]
    jobs[0].result()
    assert status(first) == "done" and status(second) != "done"
    runs, jobs = submit_sweep(sweep, tmp_path / "jobs", cluster="debug")
    assert [r.folder for r in runs] == [second.folder]
