"""The training engine: epochs, evaluation, early stopping, checkpoints and the run folder.

It knows no method: a `Method` trains itself one batch at a time and predicts three heads,
and declares the stages it trains in (gaal_cli/methods/stages.py: each stage gets a fresh optimiser
and schedule; early stopping acts only in the last stage). Validation picks the best epoch and
drives early stopping; the test split is evaluated once, at the end, on the best checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.text import Text

from gaal_cli.config import Config, TrainConfig
from gaal_cli.data import build_data, images_on_device, make_loader
from gaal_cli.data.base import Batch, DataBundle
from gaal_cli.foundation.display import CountProgress, EpochProgress, console, report_data_notes, styled
from gaal_cli.foundation.distributed import (
    Comm,
    attach,
    attach_optimizer,
    check_batch,
    init_from_environment,
    is_main_process,
)
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import remove_tree
from gaal_cli.foundation.locks import folder_lock
from gaal_cli.foundation.version import __version__
from gaal_cli.methods.base import Method, weighted_classes
from gaal_cli.methods.build import create_method
from gaal_cli.methods.registry import method_spec
from gaal_cli.methods.stages import WHOLE_RUN, PlannedStage, build_stage_optimizer, describe, plan_stages, stage_at
from gaal_cli.models.encoders import ImageEncoder
from gaal_cli.runs import provenance
from gaal_cli.runs.dependencies import Dependency, changed_dependencies
from gaal_cli.runs.folder import RESTART_HINT, RunFolder, load_state, to_json
from gaal_cli.training.behaviour import behaviour_record
from gaal_cli.training.contributions import run_shapley
from gaal_cli.training.evaluation import (
    autocast,
    evaluate,
    predict_test,
    predictions_meta,
    resolve_device,
    save_predictions,
    score_heads,
)
from gaal_cli.training.health import (
    GradientFlow,
    Health,
    assess,
    class_counts,
    dependency_reports,
    feature_spread,
    trained_encoders,
)
from gaal_cli.training.health import warning_text as health_warning
from gaal_cli.training.outputs import TRAINING_ADVICE, check_step_stats
from gaal_cli.training.rng import rng_states, seed_everything, set_rng_states
from gaal_cli.training.tensorboard_log import TensorBoardLog
from gaal_cli.training.tensorboard_log import require as require_tensorboard
from gaal_cli.training.trained_run import load_dependencies

LOG_EVERY = 10


def build_optimizer(method: Method, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """The run's optimiser and schedule over every trainable parameter: the one stage of a
    method that declares none (gaal_cli/methods/stages.py builds every stage's optimiser)."""
    whole = PlannedStage(0, WHOLE_RUN[0], 1, cfg.epochs, None, True)
    return build_stage_optimizer(method, whole, cfg)


@dataclass
class Session:
    """Everything a run trains with, built before anything is written to the run folder.

    `optimizer` and `scheduler` are the current stage's; `stages_run` describes each stage begun.
    """

    config: Config
    device: torch.device
    data: DataBundle
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: Any
    comm: Comm
    plan: list[PlannedStage]
    stages_run: list[dict[str, Any]]
    # turns the training batches' uint8 images into floats on the device (data.augment_on), if deferred
    finish_images: Callable[[torch.Tensor], torch.Tensor] | None = None
    dependencies: dict[str, Dependency] = field(default_factory=dict)
    # the gradient each encoder receives per step, for run health (gaal_cli/training/health.py)
    flow: GradientFlow | None = None
    # the code, libraries, host and determinism this run trains with (gaal_cli.runs.provenance)
    provenance: dict[str, Any] = field(default_factory=dict)


def setup(config: Config) -> Session:
    """Device, seeds, data, method and optimiser for `config` (joins torchrun's group if any).

    Raises:
        GaalError: bad input (unknown dataset, bad data, bad backbone, unavailable device, stages
            that cannot fit train.epochs).
    """
    plan = plan_method_stages(config)  # a schedule that cannot fit is refused before any work
    comm, device_spec = init_from_environment(config.train.device)
    check_batch(config.data.batch_size, comm)
    device = resolve_device(device_spec)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    data = build_data(config.data, config.seed, progress=CountProgress)
    report_data_notes(data.info)
    dependencies = load_dependencies(config, data, device)
    # seeded after the data is built, so that nothing the data build does (a cache build,
    # a new dataset's preprocessing) can move the global streams the model and training draw from
    seed_everything(config.seed, config.train.deterministic)
    method = create_method(config, data, dependencies).to(device)
    if device.type == "cuda" and config.train.channels_last:
        method.encoders.image.to(memory_format=torch.channels_last)
    attach(method, comm, device)
    if config.train.compile:
        method.encoders.image = torch.compile(method.encoders.image)
        method.encoders.tabular = torch.compile(method.encoders.tabular)
    finish_images = images_on_device(data.train, config.data.augment_on, device)
    s = Session(config, device, data, method, None, None, comm, plan, [], finish_images, dependencies)  # type: ignore[arg-type]
    s.flow = GradientFlow(method, method.modalities)
    s.provenance = provenance.record(device)
    start_optimizer(s, plan[0])
    return s


def plan_method_stages(config: Config) -> list[PlannedStage]:
    """The stages of `config`'s method placed in its run (raises GaalError when they cannot fit)."""
    declared = method_spec(config.method).cls.stages(config.method_settings(), config.train.epochs)
    return plan_stages(declared, config.train.epochs, config.train.stage_fit, config.method)


def start_optimizer(s: Session, planned: PlannedStage) -> None:
    """A fresh optimiser and scheduler for the stage `planned` (data-parallel when the run is)."""
    # a stage's optimiser clears only its own gradients: drop what earlier stages left behind
    s.method.zero_grad(set_to_none=True)
    s.optimizer, s.scheduler = build_stage_optimizer(s.method, planned, s.config.train)
    attach_optimizer(s.optimizer, s.comm)
    s.method.stage = planned


def start_stage(s: Session, planned: PlannedStage) -> None:
    """Begin a stage: its own optimiser and schedule, and the method's stage hook."""
    start_optimizer(s, planned)
    s.method.on_stage_start(planned)
    # the encoders the stage trains: run health checks that each receives a gradient
    encoders = trained_encoders(s.method, s.optimizer, s.method.modalities) if planned.stage.steps else []
    s.stages_run.append({**describe(planned, s.optimizer), "encoders": encoders})
    if len(s.plan) > 1 and s.comm.is_main:
        lr = s.optimizer.param_groups[0]["lr"]
        console.print(
            f"stage {planned.index + 1}/{len(s.plan)} {planned.name}: epochs {planned.start}-{planned.end}, lr {lr:.3g}"
        )
        if planned.scale != 1.0:
            console.print(f"  (declared {planned.declared} epochs, shrunk to fit train.epochs)")


def train(
    config: Config,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    restart: bool = False,
    interrupt_after: int | None = None,
) -> dict[str, Any]:
    """Train `config` into the run folder `out_dir` and return its report.

    A finished run is final: one of the same config is returned as it is, without touching a
    byte of its folder; one of another config, or trained from a dependency that has changed
    since, is refused. A folder holding an interrupted run of the same config resumes from its
    last epoch. `restart` trains from epoch 1 whatever the folder holds (an unreadable last.pt,
    another config's run); over a finished run it trains aside and swaps the new run in only
    once it has finished (RunFolder.aside, RunFolder.replace_with), so a kill keeps the old one.
    The writing process holds the folder's lock (gaal_cli.foundation.locks) from start to end; under
    torchrun only rank 0 writes and locks. `interrupt_after` (an epoch) raises KeyboardInterrupt
    once that epoch's files are written, as Ctrl-C between epochs would: the folder is left to
    resume from (tests and `gaal check-method` compare such a resume with an uninterrupted run).

    Raises:
        GaalError: bad input found while setting up (nothing is written in that case), another
            process writing the folder, or a non-finite training loss (the folder keeps the last
            finished epoch).
    """
    t_start = time.perf_counter()
    run = RunFolder(out_dir)
    resolved = config.resolved()
    if run.done and not restart:  # only read: a finished run on a read-only disk is shown too
        return finished_report(run, resolved)
    run.check_writable()
    writer = is_main_process()
    with folder_lock(run.path, "gaal train") if writer else nullcontext():
        if writer:
            run.recover()
        if run.done and not restart:  # another process finished it while this one started
            return finished_report(run, resolved)
        target = run.aside() if run.done else run
        if target is not run and writer:
            remove_tree(target.path)  # what a killed --restart left
        report = train_in(
            config,
            target,
            resolved,
            t_start,
            show_progress=show_progress,
            restart=restart,
            interrupt_after=interrupt_after,
        )
        if target is not run and writer:
            run.replace_with(target)
    return report


def finished_report(run: RunFolder, resolved: dict[str, Any]) -> dict[str, Any]:
    """The report of the finished run in `run` when it is a run of the config `resolved` and
    its dependencies are those it was trained from; the folder is only read.

    Raises:
        GaalError: a run of another config, one trained from a dependency that has changed
            since, or a report.json that cannot be read; each names --restart.
    """
    run.refuse_overwrite(resolved)
    changed = changed_dependencies(run)
    if changed:
        raise GaalError(
            f"holds a finished run trained from a dependency that has changed since ({', '.join(changed)}); "
            "pass --restart to train it again from the current one",
            source=str(run.path),
        )
    report = run.read_report()
    if not isinstance(report.get("metrics"), dict):
        raise GaalError(
            "has no 'metrics' object; pass --restart to train the run again", source=str(run.file(run.REPORT))
        )
    console.print(
        f"{run.path} holds a finished run of this config: nothing trained (--restart trains it again)", markup=False
    )
    return report


def train_in(
    config: Config,
    run: RunFolder,
    resolved: dict[str, Any],
    t_start: float,
    *,
    show_progress: bool,
    restart: bool,
    interrupt_after: int | None = None,
) -> dict[str, Any]:
    """Train `config` in `run` (resuming an interrupted attempt unless `restart`); see `train`."""
    if config.train.tensorboard:
        require_tensorboard("train.tensorboard")  # refused before anything is built or written
    s = setup(config)
    inputs_at_test(config, s.method.modalities)  # refused before anything is written
    state = None if restart else run.resumable(resolved)
    if state is not None and dependency_hashes(state.get("dependencies")) != dependency_hashes(
        checkpoint_inputs(s)["dependencies"]
    ):
        changed = f"{run.path}: a dependency changed since the interrupted attempt; starting over"
        console.print(styled(changed, "yellow"))
        state = None
    first_epoch = restore(s, state, run.file(RunFolder.LAST)) if state is not None else 1
    s.comm.barrier()
    if s.comm.is_main:
        run.start(resolved, resume_epoch=state["epoch"] if state is not None else None)
        if s.data.preprocessing is not None:
            run.write(RunFolder.PREPROCESSING, to_json(s.data.preprocessing, indent=1))
        else:
            run.file(RunFolder.PREPROCESSING).unlink(missing_ok=True)
    start_epoch, best = first_epoch, {"score": -1.0, "epoch": 0, "stale": 0}
    if state is not None:
        best = state["best"]
        console.print(styled(f"resuming {run.path} after epoch {state['epoch']}", "yellow"))

    # the same scalars as metrics.jsonl, as TensorBoard events beside it (the writing process only)
    board = TensorBoardLog(run.path, first_step=first_epoch) if config.train.tensorboard and s.comm.is_main else None
    try:
        epoch_seconds = fit(s, run, start_epoch, best, show_progress and s.comm.is_main, board, interrupt_after)
    finally:
        if board is not None:
            board.close()
    s.comm.barrier()
    best_state = load_state(run.file(RunFolder.CHECKPOINT), map_location=s.device)
    s.method.load_state_dict(best_state["model"])
    t_test = time.perf_counter()
    test_logits, test_labels = predict_test(s.method, s.data.test, s.device, s.config, TRAINING_ADVICE)
    metrics = {"val": evaluate_session(s, "val", "(best checkpoint)"), "test": score_heads(test_logits, test_labels)}
    report = {
        "experiment": config.name,
        "method": config.method,
        "dataset": config.data.name,
        "seed": config.seed,
        "metrics": metrics,
        "shapley": run_shapley(metrics, s.data.num_classes),
        "best_epoch": best_state["epoch"],
        "epochs_run": len(run.read_metrics()),
        "stages": s.stages_run,
        "timings": {
            "total_seconds": round(time.perf_counter() - t_start, 3),
            "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else None,
            "eval_seconds": round(time.perf_counter() - t_test, 3),
        },
        "data": {"classes": s.data.num_classes, **s.data.info},
        "inputs_at_test": inputs_at_test(config, s.method.modalities),
        "dependencies": {**{key: dep.summary() for key, dep in s.dependencies.items()}, **weights_records(s.method)},
        "device": str(s.device),
        "world_size": s.comm.world_size,
        "threads": torch.get_num_threads(),
        "provenance": {
            **s.provenance,
            "behaviour": behaviour_record(config.method, config.method_settings()),
        },
    }
    health = add_health(s, run, report)
    if s.comm.is_main:
        report["predictions"] = keep_predictions(s, run, test_logits, test_labels, report["provenance"])
        run.finish(report)
        if health.findings or health.notes:
            text = health_warning(health, str(run.file(RunFolder.REPORT)))
            console.print(text, style="yellow", markup=False, highlight=False, soft_wrap=True)
    return report


def add_health(s: Session, run: RunFolder, report: dict[str, Any]) -> Health:
    """Run health (gaal_cli/training/health.py) into `report`: the class counts per split, the spread of each
    encoder's features over one validation batch (best checkpoint) and of a randomly initialised copy, the
    findings (`health`, empty when healthy), the milder notes (`health_notes`) and the checks the records did
    not allow (`health_unchecked`)."""
    if s.flow is not None:
        s.flow.close()
    n = s.data.num_classes
    report["data"]["class_counts"] = {
        split: class_counts(s.data.split(split).labels, n) for split in ("train", "val", "test")
    }
    batch = next(iter(make_loader(s.data.val, s.config.data.eval_batch_size, shuffle=False)), None)
    if batch is not None:
        with autocast(s.device, s.config.train.bf16):
            spreads = feature_spread(s.method, batch.to(s.device), s.method.modalities)
            report["features"], report["features_random_init"] = spreads
    health = assess(
        report,
        run.read_metrics(),
        run.read_steps(),
        dependency_reports(report["dependencies"]),
        batch_size=s.config.data.batch_size // s.comm.world_size,
    )
    report["health"], report["health_unchecked"] = health.findings, health.unchecked
    report["health_notes"] = health.notes
    return health


def restore(s: Session, state: dict[str, Any], file: Path) -> int:
    """Load an interrupted run's state, before anything is written: one that does not fit this
    config's model and optimiser is refused with the way to restart.

    Raises:
        GaalError: names the file.

    Returns:
        The first epoch still to train.
    """
    try:
        return resume(s, state)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise GaalError(
            f"does not fit this config's model and optimiser ({reason}); {RESTART_HINT}", source=str(file)
        ) from None


def resume(s: Session, state: dict[str, Any]) -> int:
    """Restore an interrupted run's model, stage, optimiser, method state and RNG streams.

    Returns:
        The first epoch still to train.
    """
    s.method.load_state_dict(state["model"])
    s.method.load_resume_state(state.get("method", {}))
    start_epoch = state["epoch"] + 1
    s.stages_run[:] = state.get("stages_run", [])
    if start_epoch <= s.plan[-1].end:
        planned = stage_at(s.plan, start_epoch)
        start_optimizer(s, planned)
        if start_epoch > planned.start:  # inside a stage: its optimiser continues
            s.optimizer.load_state_dict(state["optimizer"])
            s.scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
    return start_epoch


def fit(
    s: Session,
    run: RunFolder,
    start_epoch: int,
    best: dict[str, Any],
    show_progress: bool,
    board: TensorBoardLog | None = None,
    interrupt_after: int | None = None,
) -> list[float]:
    """The epoch loop: train, validate, keep the best checkpoint, stop early. Returns epoch times.

    Each stage starts with a fresh optimiser and its own patience; early stopping ends the run
    only in its last stage, and only epochs of stages that select are best-checkpoint candidates.
    """
    cfg = s.config
    epoch_seconds = []
    with EpochProgress(show_progress) as bar:
        for epoch in range(start_epoch, s.plan[-1].end + 1):
            planned = stage_at(s.plan, epoch)
            if epoch == planned.start:
                start_stage(s, planned)
                best["stale"] = 0
            elif planned.last and best["stale"] >= (planned.stage.patience or cfg.train.patience):
                break
            t0 = time.perf_counter()
            lr = s.optimizer.param_groups[0]["lr"]
            loader = make_loader(
                s.data.train,
                cfg.data.batch_size,
                shuffle=True,
                seed=cfg.seed * 1000 + epoch,
                num_workers=cfg.data.num_workers,
                pin_memory=s.device.type == "cuda",
                shard=(s.comm.rank, s.comm.world_size),
            )
            train_stats, per_step = train_epoch(s, loader, bar, epoch)
            s.scheduler.step()
            val = evaluate_session(s, "val", f"after epoch {epoch}")
            score = monitored(val, cfg.train.monitor)
            improved = track_best(best, score, epoch, cfg.train.min_delta, selects=planned.stage.selects)
            epoch_seconds.append(time.perf_counter() - t0)
            record = {
                "epoch": epoch,
                "lr": lr,
                "stage": planned.name,
                "seconds": round(epoch_seconds[-1], 3),
                "train": train_stats,
                "val": val,
                "best": improved,
            }
            if s.comm.is_main:
                save_epoch(s, run, record, per_step, score, best)
            if board is not None:
                board.log(record, step=epoch)
            line = f"epoch {epoch:>3}  loss {train_stats['loss']:.4f}  val {cfg.train.monitor} acc {score:.4f}"
            bar.log(Text.assemble(line, ("  best", "green") if improved else ""))
            if epoch == interrupt_after:
                raise KeyboardInterrupt  # as Ctrl-C here would: the epoch's files are written
    return epoch_seconds


def track_best(best: dict[str, Any], score: float, epoch: int, min_delta: float, *, selects: bool = True) -> bool:
    """Update `best` with this epoch's validation score; True when it is a new best epoch.

    An epoch of a stage that does not select (see gaal_cli/methods/stages.py) only counts towards patience.

    Lightning's semantics, as the official GAAL code runs them: the best checkpoint follows any
    improvement, while the early-stopping counter (`stale`) restarts only when the score beats
    the last such reference by more than `min_delta`. The reference (`stop_score`) moves only
    then, so a slow creep of small gains still ends the run.
    """
    if not selects:
        best["stale"] += 1
        return False
    improved = score > best["score"]
    if improved:
        best.update(score=score, epoch=epoch)
    if score - min_delta > best.get("stop_score", -math.inf):
        best.update(stop_score=score, stale=0)
    else:
        best["stale"] += 1
    return improved


def save_epoch(s: Session, run: RunFolder, record: dict, per_step: list[dict], score: float, best: dict) -> None:
    """Write the epoch's log lines and checkpoints (the best one, and the last for resuming)."""
    epoch = record["epoch"]
    # each head's validation accuracy: `gaal predict` uses the best head unless told (training/scores.py)
    heads = {"val_heads": {head: m["acc"] for head, m in record.get("val", {}).items()}}
    if record["best"]:
        run.save(
            RunFolder.CHECKPOINT,
            {**checkpoint(s.method, s.config, epoch, score, s.data.preprocessing), **checkpoint_inputs(s), **heads},
        )
    run.log_epoch(record)
    run.log_steps(epoch, per_step)
    resume = {
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "rng": rng_states(),
        "method": s.method.resume_state(),
        "stages_run": list(s.stages_run),
        "best": dict(best),
    }
    run.save(
        RunFolder.LAST,
        {**checkpoint(s.method, s.config, epoch, score, s.data.preprocessing), **checkpoint_inputs(s), **resume},
    )


def keep_predictions(
    s: Session, run: RunFolder, logits: dict[str, torch.Tensor], labels: torch.Tensor, made_by: dict[str, Any]
) -> str | None:
    """Write the run's predictions file (before DONE), its header naming the code, host and
    behaviour that made it (`made_by`); returns its name, or None, with a warning, when the logits
    cannot be kept (non-finite or beyond float16: a diverged model)."""
    meta = predictions_meta(s.config, made_by)
    try:
        save_predictions(run.file(RunFolder.PREDICTIONS), s.data.test, logits, labels, meta)
    except GaalError as err:
        console.print(styled(f"{run.path}: no predictions file kept: {err}", "yellow"), markup=False)
        return None
    return RunFolder.PREDICTIONS


def evaluate_session(s: Session, split: str, when: str) -> dict[str, dict[str, float]]:
    """A split's metrics; the test split without the modality `data.test_missing` names. Logits
    that are not finite stop the run, naming the split and `when` (gaal_cli.training.outputs).
    """
    absent = s.config.data.test_missing
    missing = absent if split == "test" and absent != "none" else None
    where = f"on the {split} split {when}"
    return evaluate(
        s.method,
        s.data.split(split),
        s.device,
        s.config.data.eval_batch_size,
        missing=missing,
        bf16=s.config.train.bf16,
        where=where,
        advice=TRAINING_ADVICE,
    )


def inputs_at_test(config: Config, modalities: tuple[str, ...]) -> list[str]:
    """The modalities the method's test predictions read: its own, less `data.test_missing`.

    Raises:
        GaalError: the method reads only the modality that is absent at test.
    """
    inputs = [m for m in modalities if m != config.data.test_missing]
    if not inputs:
        raise GaalError(
            f"{config.method} reads only the {config.data.test_missing} at test, which data.test_missing removes",
            field="data.test_missing",
        )
    return inputs


def train_epoch(s: Session, loader, bar: EpochProgress, epoch: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Run one epoch.

    Returns:
        The epoch mean of every statistic the method reports, and the per-step values.
    """
    method = s.method
    method.train()
    method.on_epoch_start(epoch)
    bar.start_epoch(epoch, s.config.train.epochs, len(loader))
    history: dict[str, list[torch.Tensor]] = {}
    steps = 0
    weights = class_weights(s.data, s.config.train.class_weights, s.device)
    label_free = method.stage is not None and not method.stage.stage.labels
    for step, batch in enumerate(loader, start=1):
        batch = device_batch(s, batch)
        if label_free:  # self-supervised pretraining: the labels are withheld (gaal_cli/methods/stages.py)
            batch = batch._replace(label=None)
        with autocast(s.device, s.config.train.bf16), weighted_classes(weights):
            stats = method.train_step(batch, s.optimizer)
        check_step_stats(stats, method)
        if s.flow is not None:
            stats.update(s.flow.take())
        for key, value in stats.items():
            history.setdefault(key, []).append(value.detach().float().reshape(()))
        steps += 1
        checked = step % LOG_EVERY == 0 or step == len(loader)
        if checked:
            check_finite_loss(history["loss"], step, epoch)
        bar.step(lambda: running_means(history), force=checked)
    # one host transfer per epoch: per-step values as lists, ready for steps.jsonl
    columns = {k: torch.stack(v).cpu().tolist() for k, v in history.items()}
    per_step = [{"step": i + 1, **{k: round(v[i], 6) for k, v in columns.items()}} for i in range(steps)]
    means = {k: round(sum(v) / len(v), 6) for k, v in columns.items()}
    return means, per_step


def running_means(history: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """The epoch's loss and accuracy so far, read from the device (it waits for the last step)."""
    return {k: float(torch.stack(history[k]).mean()) for k in ("loss", "acc") if k in history}


def device_batch(s: Session, batch: Batch) -> Batch:
    """A loader batch as the method trains on it: on the device (copied from pinned memory without
    waiting), its images finished there if the loader deferred them (data.augment_on), and in
    channels_last on CUDA when asked for."""
    batch = batch.to(s.device, non_blocking=True)
    if s.finish_images is not None:
        batch = batch._replace(image=s.finish_images(batch.image))
    if s.device.type == "cuda" and s.config.train.channels_last:
        batch = batch._replace(image=batch.image.contiguous(memory_format=torch.channels_last))
    return batch


def class_weights(data: DataBundle, mode: str, device: torch.device) -> torch.Tensor | None:
    """Loss weight per class for `train.class_weights`.

    'balanced' is n / (C * n_c) over the training labels (scikit-learn's rule): every class
    carries the same total weight, so a rare diagnosis is not drowned by the common one.
    """
    if mode == "none":
        return None
    counts = torch.bincount(data.train.labels.cpu(), minlength=data.num_classes).float()
    return (counts.sum() / (len(counts) * counts.clamp_min(1))).to(device)


def check_finite_loss(losses: list[torch.Tensor], step: int, epoch: int) -> None:
    """Stop the run at a NaN or infinite training loss: every later step would train on NaN.

    Checked where the progress bar already reads the losses back (every LOG_EVERY steps), so
    it adds no device synchronisation; the message names the first bad step of the window.

    Raises:
        GaalError: names the epoch, the step and the value.
    """
    window = torch.stack(losses[-((step - 1) % LOG_EVERY + 1) :])
    finite = torch.isfinite(window)
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0, 0])
    raise GaalError(
        f"the training loss is {float(window[first])} at epoch {epoch}, step {step - len(window) + 1 + first}: "
        "the run stopped there, without saving that epoch. Lower train.lr, or look for extreme values in the "
        "data, then rerun (the run folder keeps the epochs before it; the same config resumes after them)"
    )


def monitored(metrics: dict[str, dict[str, float]], head: str) -> float:
    """The validation accuracy that selects the best epoch (a unimodal method has one head)."""
    if head in metrics:
        return metrics[head]["acc"]
    return next(iter(metrics.values()))["acc"]


def checkpoint(
    method: Method, config: Config, epoch: int, score: float, preprocessing: dict | None = None
) -> dict[str, Any]:
    """Plain data and tensors only; `preprocessing` (the data's fitted encoding) lets a checkpoint
    encode new rows without the run folder or the training table."""
    return {
        "model": method.state_dict(),
        "config": config.resolved(),
        "epoch": epoch,
        "score": score,
        "gaal_version": __version__,
        "preprocessing": preprocessing,
    }


def checkpoint_inputs(s: Session) -> dict[str, Any]:
    """What a checkpoint says about its inputs, so another run can depend on it safely: the
    data's classes and field lengths, the dependencies it was trained from, and the code and host
    that trained it (gaal_cli.runs.provenance)."""
    return {
        "data": {"classes": s.data.num_classes, "field_lengths": list(s.data.schema.field_lengths)},
        "dependencies": {key: dep.record() for key, dep in s.dependencies.items()},
        "provenance": s.provenance,
    }


def weights_records(method: Method) -> dict[str, Any]:
    """The `model.weights` file the image backbone started from (path, sha256 of the bytes loaded,
    what matched), recorded beside the dependencies: a sweep finds the run stale when it changes."""
    records = [m.weights_record for m in method.modules() if isinstance(m, ImageEncoder) and m.weights_record]
    return {"model.weights": records[0]} if records else {}


def dependency_hashes(records: dict[str, Any] | None) -> dict[str, str]:
    """{config key: sha256} of a checkpoint's dependency records."""
    return {key: record["sha256"] for key, record in (records or {}).items()}
