"""Every experiment file validates, at every grid point and seed, without training.

One test per file. Until the baselines are merged, files that name a method this branch does
not register fail with "unknown method"; `gaal methods` lists the registered ones.
"""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from gaal_cli.methods.stages import build_stage_optimizer
from gaal_cli.sweeps.runner import experiment_name, load_sweep, resolve_experiment
from gaal_cli.training.engine import plan_method_stages

ROOT = Path(__file__).resolve().parents[1] / "experiments"
FILES = sorted(ROOT.rglob("*.yaml"))


def test_the_paper_set_exists_at_both_scales():
    names = {experiment_name(path, ROOT) for path in FILES}
    paper = {"table1_dvm", "table1_sun", "table1_celeba", "table2_ablation", "lambda", "epsilon", "conflict"}
    assert paper <= names
    assert {"synthetic/table1", "synthetic/table2_ablation", "synthetic/lambda", "synthetic/epsilon"} <= names


@pytest.mark.parametrize("path", FILES, ids=[experiment_name(p, ROOT) for p in FILES])
def test_experiment_file_validates_at_every_grid_point(path, tmp_path):
    name = experiment_name(path, ROOT)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# gaal sweep ") or first.startswith("# gaal ablate "), "first line: the command"
    assert resolve_experiment(str(ROOT / f"{name}.yaml")) == ROOT / f"{name}.yaml"

    sweep = load_sweep(path, results=tmp_path)  # validates each point x seed with the config loader
    spec = yaml.safe_load(path.read_text())["sweep"]
    points = math.prod(len(values) for values in spec.get("grid", {}).values())
    assert len(sweep.runs) == points * len(spec["seeds"])
    assert sweep.name == name, "the experiment's name mirrors its path, so results/ mirrors experiments/"
    assert len({run.folder for run in sweep.runs}) == len(sweep.runs)
    assert not any(tmp_path.iterdir()), "validation writes nothing"


@pytest.mark.parametrize("path", FILES, ids=[experiment_name(p, ROOT) for p in FILES])
def test_every_stage_of_every_run_starts_before_the_run_can_end_at_a_live_learning_rate(path, tmp_path):
    """STYLE habit 15: what each experiment implies at the scale users run it, without training.

    Every stage starts within train.epochs (early stopping cannot end a run before its last
    stage: engine.fit), at >= 1 % of its base learning rate, and no stage has to be shrunk.
    """
    probe = torch.nn.Linear(1, 1)
    for run in load_sweep(path, results=tmp_path).runs:
        config = run.config
        plan = plan_method_stages(config)
        assert plan[-1].end <= config.train.epochs, run.label
        for planned in plan:
            where = f"{run.label}: stage {planned.name!r}"
            assert planned.start <= config.train.epochs, where
            assert planned.epochs == (planned.declared or planned.epochs), f"{where} is shrunk to fit"
            spec = planned.stage.optimizer
            base = spec.lr if spec is not None else config.train.lr
            everything = dataclasses.replace(planned, stage=dataclasses.replace(planned.stage, trains=()))
            optimizer, scheduler = build_stage_optimizer(probe, everything, config.train)
            peak = 0.0  # a warm-up starts low by design: the stage must reach a live rate
            for _ in range(planned.epochs):
                peak = max(peak, optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            assert peak >= 0.01 * base, where


def test_every_dependency_is_a_run_of_some_experiment_on_the_same_data(tmp_path):
    """A teacher or fixed model named by an experiment file is a run that some experiment file
    trains (same seed, same data), so `gaal sweep` of that file produces what the other needs."""
    runs = {run.folder: run for path in FILES for run in load_sweep(path, results=tmp_path).runs}
    needing = [run for run in runs.values() if run.needs]
    assert needing, "the test-time missing rows (KD, FMR) name their dependencies"
    for run in needing:
        for need in run.needs:
            assert need in runs, f"{run.folder} needs {need}, which no experiment file trains"
            dep, own = runs[need].config, run.config
            assert (dep.seed, dep.data.name, dep.data.dir) == (own.seed, own.data.name, own.data.dir)
            assert dep.data.synthetic == own.data.synthetic
