"""A trained run as one object: its checkpoint's config, weights, fitted preprocessing and
recorded dependencies, and the method they rebuild, ready to evaluate or predict.

`gaal eval` (`evaluate_checkpoint`), `gaal predict` (gaal_cli.training.predict) and a run that needs
another's checkpoint (`load_dependencies`: a teacher, a fixed model, `model.init_from`) all
load a run through here, so a model is rebuilt one way. Every file is read as untrusted: the
checkpoint with `weights_only=True` and `untrusted.check_checkpoint` (results.load_checkpoint,
dependencies.read_dependency), its config validated as an experiment file is.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaal_cli.config import Config, apply_override, config_from_mapping
from gaal_cli.data import build_data
from gaal_cli.data.base import DataBundle, SplitDataset
from gaal_cli.data.prediction_rows import PredictionRows, is_embedded, prediction_rows
from gaal_cli.data.recipes import TABLE_SUFFIXES
from gaal_cli.data.table_file import file_sha256
from gaal_cli.foundation.display import CountProgress, report_data_notes
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.locks import folder_lock
from gaal_cli.methods.base import Method
from gaal_cli.methods.build import build_run_method
from gaal_cli.runs.dependencies import (
    Dependency,
    architecture_only,
    check_matches_data,
    read_dependency,
    recorded_dependencies,
)
from gaal_cli.runs.folder import RunFolder, load_checkpoint
from gaal_cli.runs.run_predictions import read_run_predictions
from gaal_cli.training.evaluation import (
    evaluate,
    predict_split,
    predict_test,
    predictions_meta,
    resolve_device,
    save_predictions,
    score_heads,
)
from gaal_cli.training.scores import Scores, best_head, score_rows, trained_on, val_head_scores


@dataclass
class TrainedRun:
    """A finished run's checkpoint, as plain data and tensors.

    Attributes:
        config: the config it was trained with (with any overrides, e.g. data.dir on another host).
        file: its checkpoint file.
        state: the checkpoint: `model` (the weights), `preprocessing` (the table's fitted
            encoding, None for a prepared or embedded dataset), `dependencies` (records of the
            runs it was trained from), `data` (its classes and field lengths).
        key: the config key naming it when it is another run's dependency (in its errors).
    """

    config: Config
    file: Path
    state: dict[str, Any]
    key: str | None = None

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainedRun:
        """A run folder's best checkpoint (or a checkpoint file) and the config it was trained with.

        Args:
            overrides: dotted config keys to change (e.g. data.dir on another host).

        Raises:
            GaalError: no checkpoint, one holding anything but tensors and plain data, or a bad config.
        """
        state, file = load_checkpoint(path)
        tree = state["config"]
        for key, value in (overrides or {}).items():
            if value is not None:
                apply_override(tree, key.split("."), value)
        return cls(config_from_mapping(tree, f"{file} (its config)"), file, state)

    @classmethod
    def of_dependency(cls, dep: Dependency) -> TrainedRun:
        """The run another one depends on, as `read_dependency` read and checked it."""
        state = {"model": dep.state, "dependencies": dep.records, "data": dep.data}
        return cls(dep.config, dep.file, state, key=dep.key)

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        """The table's encoding fitted on its training split (None: nothing fitted)."""
        return self.state.get("preprocessing")

    def dependencies(self) -> dict[str, Dependency]:
        """Its dependencies as its checkpoint recorded them: configs and hashes, no weights (they
        suffice to rebuild the model: a teacher is not needed at test time)."""
        return recorded_dependencies(self.state.get("dependencies"))

    def method(self, field_lengths: tuple[int, ...], num_classes: int) -> Method:
        """Its method with its weights loaded, for a table of `field_lengths` and `num_classes`.

        Raises:
            GaalError: the weights do not fit the model its config builds on this data.
        """
        with torch.random.fork_rng(devices=[]):  # building it must not move the caller's random streams
            method = build_run_method(
                architecture_only(self.config),
                field_lengths,
                num_classes,
                initial_weights=False,
                dependencies=self.dependencies(),
            )
        try:
            method.load_state_dict(self.state["model"])
        except (RuntimeError, TypeError, AttributeError) as err:
            if self.key:
                raise GaalError(
                    f"its weights do not fit the model its config builds on this data ({str(err).splitlines()[0]})",
                    source=str(self.file),
                    field=self.key,
                ) from None
            raise GaalError(
                f"the checkpoint does not match the model its config builds ({err})", source=str(self.file)
            ) from None
        return method

    def data(self) -> DataBundle:
        """Its dataset, encoded with the preprocessing it saved (not refitted): a user table moved
        elsewhere or reread later gives exactly the inputs the run was scored on.

        Raises:
            GaalError: its table is not there, or the data does not load.
        """
        table = Path(self.config.data.name)
        if self.config.data.name.lower().endswith(TABLE_SUFFIXES) and not table.is_file():
            raise GaalError(
                "the run's table is not there (a relative path is read from the current folder); "
                "name it with --data FILE",
                source=str(table),
                field="data.name",
            )
        data = build_data(self.config.data, self.config.seed, preprocessing=self.preprocessing, progress=CountProgress)
        report_data_notes(data.info)
        return data

    def predict(
        self, split: SplitDataset, method: Method, device: torch.device, *, missing: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Logits of each head of `method` (this run's, from `method`) on `split`, in row order."""
        logits, _ = predict_split(method, split, device, self.config.data.eval_batch_size, missing=missing)
        return logits

    def evaluate(self, split: str = "test", missing: str | None = None) -> dict[str, dict[str, float]]:
        """Metrics of each head on one split of its own data, on `train.device`."""
        device = resolve_device(self.config.train.device)
        data = self.data()
        method = self.method(data.schema.field_lengths, data.num_classes).to(device)
        return evaluate(method, data.split(split), device, self.config.data.eval_batch_size, missing=missing)

    def choose_head(self, head: str | None, available: list[str]) -> tuple[str, str]:
        """The head asked for, else the best on validation (gaal_cli.training.scores.best_head), and why."""
        if head is not None:
            return head, "asked for with --head"
        return best_head(val_head_scores(self.state, self.file.parent), available)

    def recorded_table(self) -> str | None:
        """The sha256 of the table the run trained on, as its report.json recorded it (None before runs did)."""
        folder = RunFolder(self.file.parent)
        try:
            recorded = folder.read_report().get("data", {}).get("table_sha256") if folder.done else None
        except (GaalError, AttributeError):
            return None
        return recorded if isinstance(recorded, str) else None

    def is_own_table(self, table: Path) -> bool:
        """Whether `table` is the run's own table (moved, edited, or copied under another name) rather than
        a separate file: the same file name as the run's table, or the content its report.json recorded."""
        own = Path(self.config.data.name)
        if table.name == own.name:
            return True
        recorded = self.recorded_table()
        return recorded is not None and table.is_file() and file_sha256(table) == recorded

    def score_split(self, split: str, missing: str | None, head: str | None) -> Scores:
        """`gaal eval` on one split of its own data: every head's metrics, one head's class report."""
        device = resolve_device(self.config.train.device)
        data = self.data()
        method = self.method(data.schema.field_lengths, data.num_classes).to(device)
        batch = self.config.data.eval_batch_size
        logits, labels = predict_split(method, data.split(split), device, batch, missing=missing)
        chosen, why = self.choose_head(head, list(logits))
        return score_rows(
            logits, labels.numpy(), data.class_names, chosen, why, f"the {split} split of {self.config.data.name}"
        )

    def score_table(self, table: Path, missing: str | None, head: str | None, skip_bad: bool) -> Scores:
        """`gaal eval --data FILE` on a separate labelled file: every labelled row scored, none re-split;
        rows whose image the run trained on are left out when that can be told, and said to be
        possibly among them when it cannot.

        Raises:
            GaalError: a run on the embedded dataset, a table without the target column, or see
                `prediction_rows`.
        """
        if is_embedded(self.config.data.name):
            raise GaalError(
                f"a run on the embedded {self.config.data.name} dataset has no table; --data FILE evaluates a "
                "run trained on a table (--split picks one of its own splits)",
                source=str(table),
                field="--data",
            )
        device = resolve_device(self.config.train.device)
        with tempfile.TemporaryDirectory(prefix="gaal-eval-") as images:
            rows = self.rows_of(table, missing, skip_bad, Path(images))
            if rows.labels is None:
                target = self.preprocessing.get("target") if isinstance(self.preprocessing, dict) else "label"
                raise GaalError(
                    f"has no target column {target!r}: eval scores labelled rows "
                    "(gaal predict predicts unlabelled ones)",
                    source=str(table),
                )
            method = self.method(rows.field_lengths, len(rows.class_names)).to(device)
            logits = self.predict(rows.split, method, device, missing=missing)
        return self.score_rows_of(table, rows, logits, head)

    def rows_of(self, table: Path, missing: str | None, skip_bad: bool, images: Path) -> PredictionRows:
        """The rows of `table` encoded with the run's preprocessing, images decoded into `images`."""
        return prediction_rows(
            self.preprocessing,
            table,
            split_column=self.config.data.split_column,
            skip_bad=skip_bad,
            missing=missing,
            cache_folder=images,
            num_workers=self.config.data.num_workers,
            source=str(self.file),
            progress=CountProgress,
        )

    def score_rows_of(
        self, table: Path, rows: PredictionRows, logits: dict[str, torch.Tensor], head: str | None
    ) -> Scores:
        """Scores on the labelled rows of `table` the run did not train on (all, when it cannot tell)."""
        labels = rows.labels.copy()
        seen = trained_on(self.config, rows.images, self.recorded_table())
        if rows.splits is not None:  # the table says which rows are training rows (a prepared table.csv)
            seen = rows.splits == "train"
        notes = []
        unknown = int(np.sum(labels < 0))
        if unknown:
            notes.append(f"{unknown} row(s) without a label of the run's classes are not scored")
        if seen is None:
            notes.append("the run's table is not at hand to tell: rows it trained on may be among these")
        elif seen.any():
            notes.append(f"{int(seen.sum())} row(s) whose image the run trained on (its training split) are not scored")
            labels[seen] = -1
        chosen, why = self.choose_head(head, list(logits))
        n = int(np.sum(labels >= 0))
        where = f"{n} labelled rows of {table} (as they are: not re-split)"
        scores = score_rows(logits, labels, rows.class_names, chosen, why, where)
        scores.notes = notes
        return scores


def evaluate_run(
    path: str | Path,
    split: str = "test",
    missing: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    table: Path | None = None,
    head: str | None = None,
    skip_bad: bool = False,
) -> tuple[Scores, Config]:
    """`gaal eval`: one split of the run's own data, or with `table` a separate labelled file (the
    run's own table, moved or named otherwise, is split as training split it).

    Args:
        overrides: dotted config keys to change before rebuilding (e.g. data.dir on another host).
        head: the head of the class report (default: the best on validation).
    """
    run = TrainedRun.load(path, overrides)
    if table is not None and not run.is_own_table(table):
        return run.score_table(table, missing, head, skip_bad), run.config
    if table is not None:
        run = TrainedRun.load(path, {**(overrides or {}), "data.name": str(table)})
    return run.score_split(split, missing, head), run.config


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    missing: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, float]], Config]:
    """`gaal eval`: rebuild data and model from a checkpoint and evaluate one split.

    Args:
        overrides: dotted config keys to change before rebuilding (e.g. data.dir on another host).
    """
    run = TrainedRun.load(path, overrides)
    return run.evaluate(split, missing), run.config


def write_run_predictions(folder: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Path, str]:
    """`gaal eval RUN --write-predictions`: the predictions file of a finished run that lacks it
    (one trained before runs kept their predictions), or whose file fails its checks against the
    run (gaal_cli.runs.run_predictions: damaged, another run's, non-finite), recomputed from its
    best checkpoint as training computed its test metrics (`data.test_missing` applied, bf16 if it
    trained so). A file that passes them is left untouched.

    Only that file is written, under the run folder's lock, and only when each head's recomputed
    test accuracy is report.json's (the same number of test samples right): otherwise the
    checkpoint is not the run's result (or its data changed), and a comparison from it would
    not be the run's.

    Returns:
        The file, and what was done: "wrote", "untouched" (the run's own file was there), or
        "replaced" followed by why the file there failed its checks.

    Raises:
        GaalError: not a finished run folder, another process holds its lock, or the accuracies differ.
    """
    run = RunFolder(folder)
    if not run.done:
        raise GaalError(
            "is not a finished run folder (no DONE and report.json); --write-predictions needs one",
            source=str(run.path),
        )
    target = run.file(RunFolder.PREDICTIONS)
    outcome = "wrote"
    if os.path.lexists(target):
        try:
            read_run_predictions(run)
            return target, "untouched"
        except GaalError as err:
            outcome = f"replaced ({err.render()})"
    with folder_lock(run.path, "gaal eval --write-predictions"):
        report = run.read_report()
        trained = TrainedRun.load(run.path, overrides)
        config = trained.config
        data = trained.data()
        device = resolve_device(config.train.device)
        method = trained.method(data.schema.field_lengths, data.num_classes).to(device)
        logits, labels = predict_test(method, data.test, device, config)
        check_same_accuracy(score_heads(logits, labels), report, len(labels), run.file(RunFolder.REPORT))
        made_by = report.get("provenance") if isinstance(report.get("provenance"), dict) else None
        save_predictions(target, data.test, logits, labels, predictions_meta(config, made_by))
    return target, outcome


def check_same_accuracy(metrics: dict[str, dict[str, float]], report: dict[str, Any], n: int, source: Path) -> None:
    """Each head's recomputed test accuracy against report.json's, to the sample.

    Raises:
        GaalError: a head whose count of correct test samples differs (or that the report lacks).
    """
    reported = report.get("metrics", {}).get("test", {}) if isinstance(report.get("metrics"), dict) else {}
    for head, values in metrics.items():
        saved = reported.get(head, {}).get("acc") if isinstance(reported.get(head), dict) else None
        if not isinstance(saved, int | float) or round(saved * n) != round(values["acc"] * n):
            raise GaalError(
                f"the checkpoint's recomputed test accuracy of the {head} head is {values['acc']:.4f}, the run "
                f"reported {saved}: the checkpoint is not this run's result (or its data changed); nothing written",
                source=str(source),
                field=f"metrics.test.{head}.acc",
            )


def load_dependencies(config: Config, data: DataBundle, device: torch.device) -> dict[str, Dependency]:
    """Every dependency of `config`, read, checked against `data` and frozen on `device` (eval
    mode, no parameter requiring a gradient).

    Raises:
        GaalError: see `dependencies.read_dependency`, `check_matches_data`, `TrainedRun.method`.
    """
    loaded = {}
    for key, path in config.dependencies().items():
        dep = read_dependency(path, key)
        check_matches_data(dep, data.num_classes, data.schema.field_lengths)
        dep.model = frozen_model(dep, data.schema.field_lengths, data.num_classes).to(device)
        loaded[key] = dep
    return loaded


def frozen_model(dep: Dependency, field_lengths: tuple[int, ...], num_classes: int) -> Method:
    """The method a dependency's weights rebuild, in eval mode, no parameter requiring a gradient
    (as a run uses a teacher or a fixed model; the behaviour trace freezes its own runs here too).

    Raises:
        GaalError: see `TrainedRun.method`.
    """
    model = TrainedRun.of_dependency(dep).method(field_lengths, num_classes)
    model.requires_grad_(False)
    return model.eval()
