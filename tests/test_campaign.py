"""`gaal reproduce`: a campaign file's sweeps in order, then its reports, resumable (issue 31)."""

from pathlib import Path

import pytest
import yaml
from conftest import TINY
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.foundation.errors import GaalError
from gaal_cli.sweeps.campaign import load_campaign
from gaal_cli.sweeps.experiment_files import experiment_name

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "campaign.yaml"
runner = CliRunner()


def test_the_committed_campaign_rebuilds_every_committed_sweep_teachers_first(monkeypatch):
    monkeypatch.chdir(REPO)
    campaign = load_campaign(COMMITTED)
    committed = {
        experiment_name(p, REPO / "experiments")
        for p in (REPO / "experiments").rglob("*.yaml")
        if (REPO / "results" / experiment_name(p, REPO / "experiments")).is_dir()
    }
    assert set(campaign.sweeps) == committed
    plans = campaign.plans(Path("results"))
    made_before: set[Path] = set()
    for plan in plans:
        for run in plan.runs:
            outside = [
                need for need in run.needs if need not in made_before and need not in {r.folder for r in plan.runs}
            ]
            assert not outside, f"{plan.name} needs {outside[0]} from a sweep listed after it"
        made_before |= {run.folder for run in plan.runs}
    assert {spec.out for spec in campaign.reports} == {"synthetic/report", "ham10000/report", "across"}


@pytest.mark.parametrize(
    "text, field",
    [
        ("sweeps: synthetic/table1\n", "sweeps"),
        ("sweeps: [a, a]\n", "sweeps"),
        ("sweeps: [a]\nreports: [{folders: [x], out: ../outside}]\n", "reports[0]"),
        ("sweeps: [a]\nreports: [{folders: x, out: y}]\n", "reports[0].folders"),
        ("sweeps: [a]\nextra: 1\n", None),
    ],
)
def test_a_bad_campaign_file_is_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(GaalError) as err:
        load_campaign(path)
    assert err.value.source == str(path) and err.value.field == field


def test_a_campaign_trains_its_sweeps_then_reports_and_resumes_with_nothing_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = {"name": "tiny", "method": "concat", "sweep": {"seeds": [1]}}
    for key in TINY:
        node, (path, value) = sweep, key.split("=")
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    Path("tiny.yaml").write_text(yaml.safe_dump(sweep))
    Path("c.yaml").write_text("sweeps: [tiny.yaml]\nreports: [{folders: [tiny], out: tiny_report}]\n")
    first = runner.invoke(app, ["reproduce", "c.yaml", "--results", "r"])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "r" / "tiny_report" / "table1.md").is_file() or (
        tmp_path / "r" / "tiny_report" / "report.md"
    ).is_file()
    dry = runner.invoke(app, ["reproduce", "c.yaml", "--results", "r", "--dry-run"])
    assert "tiny: 1 run (1 done)" in dry.output
    again = runner.invoke(app, ["reproduce", "c.yaml", "--results", "r"])
    assert again.exit_code == 0 and "0 trained, 1 already done" in again.output
