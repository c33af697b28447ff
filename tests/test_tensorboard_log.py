"""TensorBoard event files carry the scalars of metrics.jsonl records under the same names.

The round trip through tensorboard's own reader is skipped where the optional `tensorboard`
package is not installed (`pip install 'gaal[tensorboard]'`); the rest runs everywhere.
"""

from __future__ import annotations

import math

import pytest

from gaal_cli.foundation.errors import GaalError
from gaal_cli.training import tensorboard_log
from gaal_cli.training.tensorboard_log import TensorBoardLog, scalars

# two epoch records as the engine writes them to metrics.jsonl (values from a real run's first
# epochs, with the bookkeeping keys it always has)
RECORDS = [
    {
        "epoch": 1, "lr": 0.001, "stage": "train", "seconds": 0.543,
        "train": {"loss": 0.977728, "acc": 0.680637, "grad_tabular": 0.697843},
        "val": {"multi": {"acc": 0.6868372, "bal_acc": 0.2049727, "f1": 0.2017653},
                "tabular": {"acc": 0.6868372, "bal_acc": 0.2049727, "f1": 0.2017653}},
        "best": True,
    },
    {
        "epoch": 2, "lr": 0.0005, "stage": "train", "seconds": 0.459,
        "train": {"loss": 0.902556, "acc": 0.698499, "grad_tabular": 0.536218},
        "val": {"multi": {"acc": 0.6899563, "bal_acc": 0.2076335, "f1": 0.2040715},
                "tabular": {"acc": 0.6899563, "bal_acc": 0.2076335, "f1": 0.2040715}},
        "best": False,
    },
]  # fmt: skip


def test_scalars_are_the_numeric_leaves_tagged_by_their_path():
    tags = dict(scalars(RECORDS[0]))
    assert tags["train/loss"] == 0.977728
    assert tags["val/tabular/f1"] == 0.2017653
    assert tags["lr"] == 0.001 and tags["seconds"] == 0.543
    # the step, the stage name and the best flag are bookkeeping, not curves
    assert not {"epoch", "stage", "best"} & set(tags)
    assert len(tags) == 2 + 3 + 6


def test_a_null_or_nan_value_is_no_scalar():
    record = {"epoch": 3, "train": {"loss": None, "acc": math.nan, "grad_image": 0.5}, "note": "x", "flag": True}
    assert dict(scalars(record)) == {"train/grad_image": 0.5}


def test_asking_for_tensorboard_without_the_package_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    with pytest.raises(GaalError) as err:
        TensorBoardLog(tmp_path, source="experiment.yaml")
    message = err.value.render()
    assert message.startswith("experiment.yaml: ") and "gaal[tensorboard]" in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_event_files_read_back_with_the_same_scalars_as_the_records(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLog(tmp_path) as log:
        for record in RECORDS:
            log.log(record, step=record["epoch"])
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    expected = {}
    for record in RECORDS:
        for tag, value in scalars(record):
            expected.setdefault(tag, []).append((record["epoch"], value))
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [s for s, _ in points], tag
        # the event files store float32
        assert [v for _, v in read] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_a_resumed_run_shows_each_epoch_once_with_the_values_of_the_attempt_that_kept_it(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLog(tmp_path) as first_attempt:  # killed after epoch 2, resumed from epoch 1's checkpoint
        for epoch, loss in ((1, 0.9), (2, 0.8)):
            first_attempt.log({"epoch": epoch, "train": {"loss": loss}}, step=epoch)
    with TensorBoardLog(tmp_path, first_step=2) as resumed:
        for epoch, loss in ((2, 0.7), (3, 0.6)):
            resumed.log({"epoch": epoch, "train": {"loss": loss}}, step=epoch)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    read = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in read] == [1, 2, 3]
    assert [v for _, v in read] == pytest.approx([0.9, 0.7, 0.6], rel=1e-6)


# ---------------------------------------------------------------- the engine's hook


def test_train_tensorboard_writes_the_runs_metrics_jsonl_as_events_resumed_included(tmp_path, tiny):
    pytest.importorskip("tensorboard")
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gaal_cli.config import load_config
    from gaal_cli.training.engine import train

    config = load_config(overrides=[*tiny, "method=concat", "train.epochs=3", "train.tensorboard=true"])
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, folder, show_progress=False, interrupt_after=2)
    train(config, folder, show_progress=False)  # resumes after epoch 2
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(folder))
    events.Reload()
    expected = {}
    for record in records:
        for tag, value in scalars(record):
            expected.setdefault(tag, []).append((record["epoch"], value))
    assert set(events.Tags()["scalars"]) == set(expected) and "val/multi/acc" in expected
    for tag, points in expected.items():
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [1, 2, 3], tag
        assert [v for _, v in read] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_train_tensorboard_without_the_package_is_refused_before_anything_is_written(tmp_path, tiny, monkeypatch):
    from typer.testing import CliRunner

    from gaal_cli.cli import app

    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    out = tmp_path / "run"
    sets = [a for o in [*tiny, "method=concat", "train.tensorboard=true"] for a in ("--set", o)]
    result = CliRunner().invoke(app, ["train", "--out", str(out), "-q", *sets])
    assert result.exit_code == 2 and "gaal[tensorboard]" in result.output and "train.tensorboard" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_train_writes_no_event_file_by_default(tmp_path, tiny):
    from gaal_cli.config import load_config
    from gaal_cli.training.engine import train

    train(load_config(overrides=[*tiny, "method=concat", "train.epochs=1"]), tmp_path / "run", show_progress=False)
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
