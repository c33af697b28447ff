"""The committed reproduction is in step with today's config.

For every experiment file whose results are committed under results/, every run the file
defines is finished and was trained with the config the file resolves to today, so
`gaal sweep <name> --dry-run` finds nothing stale or missing and the README's commands run
on a fresh clone.
"""

from pathlib import Path

import pytest

from gaal_cli.sweeps.runner import experiment_name, load_sweep, statuses

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
RESULTS = REPO / "results"
COMMITTED = sorted(
    path for path in EXPERIMENTS.rglob("*.yaml") if (RESULTS / experiment_name(path, EXPERIMENTS)).is_dir()
)


def test_some_results_are_committed():
    assert COMMITTED, "results/ should hold the embedded-dataset reproduction"


@pytest.mark.parametrize("path", COMMITTED, ids=[experiment_name(p, EXPERIMENTS) for p in COMMITTED])
def test_every_run_of_a_committed_sweep_is_done_with_todays_config(path, monkeypatch):
    monkeypatch.chdir(REPO)  # as the README runs it: `results/` relative (a teacher's path is part of a config)
    sweep = load_sweep(path, results=Path("results"))
    wrong = [f"{run.label}: {status}" for run, status in statuses(sweep) if status != "done"]
    assert not wrong, f"{experiment_name(path, EXPERIMENTS)}: re-run the sweep; not current: {wrong[:5]}"
