"""Every built-in passes `gaal check-method` (gaal_cli/training/method_checks.py) at its quick size: it
trains, resumes an interrupted run to exactly the numbers of an uninterrupted one, repeats bit
for bit, reaches every stage, predicts from its checkpoint with either modality missing, and its
run is healthy. A method from a plugin package gets the same checks (tests/test_plugin_example.py),
and a broken one fails them (tests/test_method_checks.py).

The run is interrupted right after epoch k's files are written (as a kill between epochs would
leave it) and trained again in a fresh method object, as a new process would: whatever a method
keeps across batches and epochs (DI-MML's dimension statistics, MLA's projection and epoch
length, IGM's transforms, ReconBoost's ensemble, the stage, the RNG streams) must come back from
the resume file.
"""

import pytest
from fake_runs import dependency_overrides

from gaal_cli.methods import METHODS
from gaal_cli.training.method_checks import check_method

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

CHECKS = ["trains", "resumes", "repeats", "stages", "missing modality", "healthy"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_builtin_passes_check_method(tmp_path, teacher_checkpoint, name):
    extra, stop_after = CASES.get(name, ([], 1))
    needs = dependency_overrides(name, teacher_checkpoint)  # KD's teacher, FMR's fixed model
    checks = check_method(name, tmp_path, quick=True, overrides=[*extra, *needs], interrupt_after=stop_after)
    assert [c.name for c in checks] == CHECKS
    failed = [f"{c.name}: {c.reason}" for c in checks if not c.passed]
    assert not failed, f"{name}: " + "; ".join(failed)
