"""The training engine: epochs, evaluation, early stopping, checkpoints and the run folder.

It knows no method: a `Method` trains itself one batch at a time and predicts three heads.
Validation picks the best epoch and drives early stopping; the test split is evaluated once,
at the end, on the best checkpoint.
"""

from __future__ import annotations

import platform
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaal_cli import __version__
from gaal_cli.config import Config, TrainConfig
from gaal_cli.data import build_data, make_loader
from gaal_cli.data.base import DataBundle, SplitDataset
from gaal_cli.dependencies import Dependency, init_encoders, load_dependencies, recorded_dependencies
from gaal_cli.display import EpochProgress, console
from gaal_cli.distributed import Comm, attach, check_batch, init_from_environment
from gaal_cli.errors import GaalError
from gaal_cli.methods import Method, build_method
from gaal_cli.metrics import classification_metrics
from gaal_cli.models import build_encoders
from gaal_cli.results import RunFolder, load_checkpoint

LOG_EVERY = 10


def resolve_device(spec: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is taken as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise GaalError(
            f"'{spec}' is not a device (expected auto, cpu, cuda or cuda:N)", field="train.device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GaalError("CUDA was asked for but no CUDA device is available", field="train.device")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def create_method(config: Config, data: DataBundle, dependencies: dict[str, Dependency] | None = None) -> Method:
    """The method `config` names, on `data`'s shapes; `dependencies` are its loaded dependencies
    (gaal_cli.dependencies), keyed by config key: `model.init_from` starts the encoders, the
    method's own (`methods.<name>.<field>`) go to the method by field name."""
    m = config.model
    dependencies = dependencies or {}
    encoders = build_encoders(
        data.schema.field_lengths,
        image_backbone=m.image_backbone,
        feature_dim=m.feature_dim,
        tabular_hidden=m.tabular_hidden,
        pretrained=m.pretrained,
        weights=m.weights,
        dropout=m.dropout,
    )
    start = dependencies.get("model.init_from")
    if start is not None and start.state is not None:
        init_encoders(encoders, start, m.init_encoders)
    own = {key.rsplit(".", 1)[-1]: dep for key, dep in dependencies.items() if key.startswith("methods.")}
    return build_method(config.method, config.method_settings(), encoders, data.num_classes, own)


def build_optimizer(method: Method, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    elif cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@dataclass
class Session:
    """Everything a run trains with, built before anything is written to the run folder."""

    config: Config
    device: torch.device
    data: DataBundle
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: Any
    comm: Comm
    dependencies: dict[str, Dependency] = field(default_factory=dict)


def setup(config: Config) -> Session:
    """Device, seeds, data, method and optimiser for `config` (joins torchrun's group if any).

    Raises:
        GaalError: bad input (unknown dataset, bad data, bad backbone, unavailable device).
    """
    comm, device_spec = init_from_environment(config.train.device)
    check_batch(config.data.batch_size, comm)
    device = resolve_device(device_spec)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    data = build_data(config.data, config.seed)
    dependencies = load_dependencies(config, data, device)
    # seeded after the data is built, so that nothing the data build does (a cache build,
    # a new dataset's preprocessing) can move the global streams the model and training draw from
    seed_everything(config.seed, config.train.deterministic)
    method = create_method(config, data, dependencies).to(device)
    if device.type == "cuda" and config.train.channels_last:
        method.encoders.image.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(method, config.train)
    attach(method, optimizer, comm, device)
    if config.train.compile:
        method.encoders.image = torch.compile(method.encoders.image)
        method.encoders.tabular = torch.compile(method.encoders.tabular)
    return Session(config, device, data, method, optimizer, scheduler, comm, dependencies)


def train(config: Config, out_dir: str | Path, *, show_progress: bool = True) -> dict[str, Any]:
    """Train `config` into the run folder `out_dir` and return its report.

    A folder holding an interrupted run of the same config resumes from its last epoch; one
    holding a finished run is trained again from scratch. Under torchrun only rank 0 writes.

    Raises:
        GaalError: bad input found while setting up (nothing is written in that case).
    """
    t_start = time.perf_counter()
    run = RunFolder(out_dir)
    run.check_writable()
    s = setup(config)
    resolved = config.resolved()
    state = run.resumable(resolved)
    if state is not None and dependency_hashes(state.get("dependencies")) != dependency_hashes(
        provenance(s)["dependencies"]
    ):
        console.print(f"[yellow]{run.path}: a dependency changed since the interrupted attempt; starting over")
        state = None
    s.comm.barrier()
    if s.comm.is_main:
        run.start(resolved, resume_epoch=state["epoch"] if state is not None else None)
    start_epoch, best = 1, {"score": -1.0, "epoch": 0, "stale": 0}
    if state is not None:
        s.method.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        console.print(f"[yellow]resuming {run.path} after epoch {state['epoch']}")

    epoch_seconds = fit(s, run, start_epoch, best, show_progress and s.comm.is_main)
    s.comm.barrier()
    best_state = torch.load(run.file(RunFolder.CHECKPOINT), map_location=s.device, weights_only=False)
    s.method.load_state_dict(best_state["model"])
    t_test = time.perf_counter()
    metrics = {split: evaluate_session(s, split) for split in ("val", "test")}
    report = {
        "experiment": config.name,
        "method": config.method,
        "dataset": config.data.name,
        "seed": config.seed,
        "metrics": metrics,
        "best_epoch": best_state["epoch"],
        "epochs_run": len(run.read_metrics()),
        "timings": {
            "total_seconds": round(time.perf_counter() - t_start, 3),
            "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else None,
            "eval_seconds": round(time.perf_counter() - t_test, 3),
        },
        "data": {"classes": s.data.num_classes, **s.data.info},
        "inputs_at_test": list(s.method.modalities),
        "dependencies": {key: dep.summary() for key, dep in s.dependencies.items()},
        "device": str(s.device),
        "world_size": s.comm.world_size,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }
    if s.comm.is_main:
        run.finish(report)
    return report


def fit(s: Session, run: RunFolder, start_epoch: int, best: dict[str, Any], show_progress: bool) -> list[float]:
    """The epoch loop: train, validate, keep the best checkpoint, stop early. Returns epoch times."""
    cfg = s.config
    epoch_seconds = []
    with EpochProgress(show_progress) as bar:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if best["stale"] >= cfg.train.patience:
                break
            t0 = time.perf_counter()
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
            val = evaluate_session(s, "val")
            score = monitored(val, cfg.train.monitor)
            improved = score > best["score"]
            best.update({"score": score, "epoch": epoch, "stale": 0} if improved else {"stale": best["stale"] + 1})
            epoch_seconds.append(time.perf_counter() - t0)
            record = {
                "epoch": epoch,
                "lr": s.optimizer.param_groups[0]["lr"],
                "seconds": round(epoch_seconds[-1], 3),
                "train": train_stats,
                "val": val,
                "best": improved,
            }
            if s.comm.is_main:
                save_epoch(s, run, record, per_step, score, best)
            bar.log(
                f"epoch {epoch:>3}  loss {train_stats['loss']:.4f}  val {cfg.train.monitor} acc {score:.4f}"
                + ("  [green]best" if improved else "")
            )
    return epoch_seconds


def save_epoch(s: Session, run: RunFolder, record: dict, per_step: list[dict], score: float, best: dict) -> None:
    """Write the epoch's log lines and checkpoints (the best one, and the last for resuming)."""
    epoch = record["epoch"]
    if record["best"]:
        run.save(RunFolder.CHECKPOINT, {**checkpoint(s.method, s.config, epoch, score), **provenance(s)})
    run.log_epoch(record)
    run.log_steps(epoch, per_step)
    resume = {
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "best": dict(best),
    }
    run.save(RunFolder.LAST, {**checkpoint(s.method, s.config, epoch, score), **provenance(s), **resume})


def evaluate_session(s: Session, split: str) -> dict[str, dict[str, float]]:
    return evaluate(s.method, s.data.split(split), s.device, s.config.data.eval_batch_size, bf16=s.config.train.bf16)


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
    for step, batch in enumerate(loader, start=1):
        batch = batch.to(s.device, non_blocking=True)
        if s.device.type == "cuda" and s.config.train.channels_last:
            batch = batch._replace(image=batch.image.contiguous(memory_format=torch.channels_last))
        with autocast(s.device, s.config.train.bf16):
            stats = method.train_step(batch, s.optimizer)
        for key, value in stats.items():
            history.setdefault(key, []).append(value.detach().float().reshape(()))
        steps += 1
        if step % LOG_EVERY == 0 or step == len(loader):
            running = {k: float(torch.stack(history[k]).mean()) for k in ("loss", "acc") if k in history}
            bar.update(LOG_EVERY if step % LOG_EVERY == 0 else step % LOG_EVERY, running)
    # one host transfer per epoch: per-step values as lists, ready for steps.jsonl
    columns = {k: torch.stack(v).cpu().tolist() for k, v in history.items()}
    per_step = [{"step": i + 1, **{k: round(v[i], 6) for k, v in columns.items()}} for i in range(steps)]
    means = {k: round(sum(v) / len(v), 6) for k, v in columns.items()}
    return means, per_step


@torch.no_grad()
def evaluate(
    method: Method,
    split: SplitDataset,
    device: torch.device,
    batch_size: int,
    *,
    missing: str | None = None,
    bf16: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics of each head (multi / image / tabular) on a split.

    Args:
        missing: 'tabular' or 'image' to evaluate with that modality absent at test time.
    """
    method.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    labels = []
    for batch in make_loader(split, batch_size, shuffle=False):
        batch = batch.to(device)
        image = None if missing == "image" or "image" not in method.modalities else batch.image
        table = None if missing == "tabular" or "tabular" not in method.modalities else batch.tabular
        with autocast(device, bf16):
            preds = method.predict(image, table)
        for head, logits in preds._asdict().items():
            if logits is not None:
                collected.setdefault(head, []).append(logits.float().cpu())
        labels.append(batch.label.cpu())
    y = torch.cat(labels)
    return {head: classification_metrics(torch.cat(chunks), y) for head, chunks in collected.items()}


def monitored(metrics: dict[str, dict[str, float]], head: str) -> float:
    """The validation accuracy that selects the best epoch (a unimodal method has one head)."""
    if head in metrics:
        return metrics[head]["acc"]
    return next(iter(metrics.values()))["acc"]


def checkpoint(method: Method, config: Config, epoch: int, score: float) -> dict[str, Any]:
    return {
        "model": method.state_dict(),
        "config": config.resolved(),
        "epoch": epoch,
        "score": score,
        "gaal_version": __version__,
    }


def provenance(s: Session) -> dict[str, Any]:
    """What a checkpoint says about its inputs, so another run can depend on it safely: the
    data's classes and field lengths, and the dependencies it was trained from."""
    return {
        "data": {"classes": s.data.num_classes, "field_lengths": list(s.data.schema.field_lengths)},
        "dependencies": {key: dep.record() for key, dep in s.dependencies.items()},
    }


def dependency_hashes(records: dict[str, Any] | None) -> dict[str, str]:
    """{config key: sha256} of a checkpoint's dependency records."""
    return {key: record["sha256"] for key, record in (records or {}).items()}


def versions() -> dict[str, str]:
    import timm

    return {
        "gaal": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    missing: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, float]], Config]:
    """Rebuild data and model from a checkpoint's config and evaluate one split.

    Args:
        overrides: dotted config keys to change before rebuilding (e.g. data.dir on another host).
    """
    from gaal_cli.config import apply_override

    state, file = load_checkpoint(path)
    tree = state["config"]
    for key, value in (overrides or {}).items():
        if value is not None:
            apply_override(tree, key.split("."), value)
    config = Config.model_validate(tree)
    device = resolve_device(config.train.device)
    data = build_data(config.data, config.seed)
    # the dependencies' records suffice to rebuild the model: a teacher is not needed at test time
    method = create_method(config, data, recorded_dependencies(state.get("dependencies")))
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as err:
        raise GaalError(
            f"the checkpoint does not match the model its config builds ({err})", source=str(file)
        ) from None
    method.to(device)
    return evaluate(method, data.split(split), device, config.data.eval_batch_size, missing=missing), config
