"""Every method resumes an interrupted run to exactly the numbers of an uninterrupted one.

The run is interrupted right after epoch k's files are written (as a kill between epochs
would leave it) and trained again in a fresh method object, as a new process would: whatever a
method keeps across batches and epochs (DI-MML's dimension statistics, MLA's projection and
epoch length, IGM's transforms, ReconBoost's ensemble, the stage, the RNG streams) must come
back from the resume file.
"""

import json

import pytest
import torch
from fake_runs import dependency_overrides

from gaal_cli import engine
from gaal_cli.config import load_config
from gaal_cli.methods import METHODS

SMALL = ["data.synthetic.n_train=64", "train.epochs=3"]

#: method -> (extra overrides, epoch after which the run is interrupted)
CASES = {
    # stage 1 of 3 epochs: centroids from epoch 1, hits from epoch 2, contrast from epoch 3
    "di_mml": (
        [
            "train.epochs=4",
            "methods.di_mml.stage1_epochs=3",
            "methods.di_mml.stage2_epochs=1",
            "methods.di_mml.contrast_start_epoch=3",
        ],
        2,
    ),
    # interrupted inside the tabular stage, after the image stage's transform was computed
    "igm": (["methods.igm.stages=2", "methods.igm.stage_epochs=[1, 2]"], 2),
    "reconboost": (["train.epochs=4", "methods.reconboost.stage_epochs=1", "methods.reconboost.rectify_epochs=1"], 3),
}


def run(config, folder, stop_after=None, monkeypatch=None):
    if stop_after is not None:
        original = engine.save_epoch

        def save_then_die(s, run_folder, record, *args):
            original(s, run_folder, record, *args)
            if record["epoch"] == stop_after:
                raise KeyboardInterrupt

        monkeypatch.setattr(engine, "save_epoch", save_then_die)
    try:
        return engine.train(config, folder, show_progress=False)
    finally:
        monkeypatch and monkeypatch.undo()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny, monkeypatch, teacher_checkpoint, name):
    extra, stop_after = CASES.get(name, ([], 1))
    needs = dependency_overrides(name, teacher_checkpoint)  # KD's teacher, FMR's fixed model
    config = load_config(overrides=[*tiny, *SMALL, f"method={name}", *extra, *needs])
    whole = run(config, tmp_path / "whole")

    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(config, folder, stop_after, monkeypatch)
    state = torch.load(folder / "last.pt", weights_only=True)  # plain data and tensors only
    assert state["epoch"] == stop_after
    resumed = run(config, folder)

    assert resumed["metrics"] == whole["metrics"]
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["stages"] == whole["stages"]
    steps = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (tmp_path / "whole" / "steps.jsonl").read_text().splitlines()]
    assert steps == want  # every logged step statistic, e.g. DI-MML's loss_duc after the resume
