"""A tiny `python -m gaal_cli train -m NAME` run per part-A baseline, through Typer's runner."""

import json

import pytest
from typer.testing import CliRunner

from gaal_cli.cli import app

runner = CliRunner()

# the heads each method reports and a coefficient it must log per step
EXPECTED = {
    "image": ({"multi", "image"}, "gnorm_image"),
    "tabular": ({"multi", "tabular"}, "gnorm_tabular"),
    "max": ({"multi"}, "gnorm_tabular"),
    "daft": ({"multi"}, "gnorm_image"),
    "ogm_ge": ({"multi", "image", "tabular"}, "coef_k_tabular"),
    "mmpareto": ({"multi", "image", "tabular"}, "w_mm_image"),
    "mla": ({"multi", "image", "tabular"}, "alpha"),
    "di_mml": ({"multi", "image", "tabular"}, "loss_duc"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_train_each_method(name, tmp_path, tiny):
    out = tmp_path / name
    args = ["train", "-m", name, "--out", str(out), "-q"]
    extra = ["data.synthetic.n_train=64", "methods.di_mml.stage1_epochs=1", "methods.di_mml.stage2_epochs=1"]
    args += [a for o in [*tiny, *extra] for a in ("--set", o)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    heads, coefficient = EXPECTED[name]
    assert set(report["metrics"]["test"]) == heads
    assert all(0 <= m["acc"] <= 1 for m in report["metrics"]["test"].values())
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert coefficient in steps[0]
