"""Training stages: a run made of parts, each with its own optimiser and learning-rate schedule.

Several methods train in stages, and their official codes start every stage with a fresh
optimiser: DI-MML trains the encoders, then runs stage 2 (a fusion head on frozen encoders) as
a separate run with a new SGD; ReconBoost builds a new SGD for each boosting and each
rectification phase; IGM rebuilds its SGD and StepLR for each modality stage (25-50 epochs).
Under one optimiser and one StepLR over the whole run, the later stages of those methods train
at a vanishing learning rate. So a stage is an engine idea (STYLE habit 13): a method declares
its stages (`Method.stages`), the engine plans them against the run's epochs and builds each
stage's optimiser and scheduler when the stage starts. A method that declares nothing trains in
one stage over the whole run with the run's optimiser (train.*), as before stages existed.

The rules the engine keeps:

- A stage's optimiser holds only the parameters the stage trains (`Stage.trains`, parameter-name
  prefixes; empty: every trainable parameter) and starts at its base learning rate. It is either
  the method's own (`Stage.optimizer`, the official code's, with its own schedule inside the
  stage: constant, StepLR, MultiStepLR, or a linear warm-up followed by a cosine anneal) or the
  run's train.* settings (`scheduler: step` counts from the stage's start, `cosine` anneals over
  the stage).
- Warm-up and cosine (`StageOptimizer.warmup_epochs`, `cosine: true`; MMCL's and TIP's
  pretraining, pl_bolts' LinearWarmupCosineAnnealingLR as their official codes build it, stepped
  once per epoch): stage epoch e (0-based) of E trains at lr * factor(e), factor =
  start + (1 - start) e / (W - 1) for e < W (W warm-up epochs, `warmup_start` the first
  epoch's share, 0 in pl_bolts, so the first epoch does not move the weights), then
  (1 + cos(pi (e - W) / (E - W))) / 2 for e >= W. A shrunk stage shrinks W with it.
- The declared stage lengths must fit train.epochs. When they add up to more, `train.stage_fit:
  scale` (the default) shrinks every stage in proportion, each to at least one epoch (a StepLR
  inside a stage shrinks with it), and prints what it did; `stage_fit: refuse` stops instead.
  A run with fewer epochs than stages is always refused. When the stages add up to less than
  train.epochs, the run ends with its last stage (train.epochs is an upper bound).
- Early stopping can end a run only during its last stage, and its patience (train.patience,
  or the stage's own `Stage.patience` where the method's official code has one) counts from the
  start of each stage, so every stage runs and the last one gets at least `patience` epochs.
- The best checkpoint is chosen on validation among the epochs of the stages that produce the
  method's final predictor (`Stage.selects`). DI-MML's stage 1 has no fusion head yet, so only
  its stage-2 epochs are candidates; ReconBoost is read out after its rectification phases (as
  its official code evaluates); IGM's every epoch is a candidate (as its official code). The last
  stage always selects.
- A label-free stage (`Stage.labels = False`: the self-supervised pretraining of MMCL and TIP)
  never sees a label: the engine hands the method's train_step each batch with `label=None`, so
  a method that reads one fails loudly rather than leaking supervision into pretraining. Such a
  stage never selects and cannot be the last.

report.json lists the stages a run went through (`stages`: name, start epoch, epochs, learning
rate at the start, optimiser).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gaal_cli.foundation.errors import GaalError


class StageOptimizer(BaseModel):
    """An optimiser a method's official code builds afresh at each stage (a settings block).

    Given in a method's settings as `stage_optimizer`; keys left out keep the method's defaults
    (see `StagedSettings`), `stage_optimizer: null` uses the run's train.* settings instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(1e-4, ge=0)
    step_size: int | None = Field(None, ge=1, description="StepLR inside the stage, in epochs; None: constant")
    gamma: float = Field(0.1, gt=0, le=1)
    milestones: tuple[int, ...] | None = Field(
        None, description="MultiStepLR inside the stage: epochs after which the rate is multiplied by gamma"
    )
    cosine: bool = Field(False, description="anneal by cosine over the stage (after any warm-up)")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs at the stage's start (cosine only)")
    warmup_start: float = Field(0.0, ge=0, le=1, description="the first warm-up epoch's share of lr (pl_bolts: 0)")

    @model_validator(mode="after")
    def _one_schedule(self) -> StageOptimizer:
        chosen = [n for n, on in (("step_size", self.step_size), ("milestones", self.milestones)) if on]
        if self.cosine:
            chosen.append("cosine")
        if len(chosen) > 1:
            raise ValueError(f"a stage optimiser has one schedule; {' and '.join(chosen)} are both set")
        if self.warmup_epochs and not self.cosine:
            raise ValueError("warmup_epochs needs cosine: true (a linear warm-up followed by a cosine anneal)")
        if self.milestones is not None and (
            any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones))
        ):
            raise ValueError("milestones must be increasing epochs of 1 or more")
        return self


@dataclass(frozen=True)
class Stage:
    """One stage as a method declares it.

    Attributes:
        name: shown in the log and report.json.
        epochs: declared length; None for a last stage that takes the rest of the run.
        trains: parameter-name prefixes the stage's optimiser holds (empty: every trainable one).
        optimizer: the stage's own optimiser; None: the run's train.* settings.
        lr_scale: multiplies the optimiser's base learning rate (a decay across stages).
        selects: whether the stage's epochs are candidates for the best checkpoint.
        labels: False for a label-free stage: train_step gets batches with `label=None`.
        patience: the stage's own early-stopping patience (the official code's); None: train.patience.
        steps: False for a stage that only measures and steps no optimiser (MFH's overlap tag): run
            health then expects no encoder to receive a gradient there.
    """

    name: str
    epochs: int | None = None
    trains: tuple[str, ...] = ()
    optimizer: StageOptimizer | None = None
    lr_scale: float = 1.0
    selects: bool = True
    labels: bool = True
    patience: int | None = None
    steps: bool = True

    def __post_init__(self) -> None:
        if not self.labels and self.selects:
            raise ValueError(f"stage {self.name!r} is label-free, so it cannot select the best checkpoint")


#: what a method that declares nothing trains in: one stage over the whole run, train.* optimiser
WHOLE_RUN = (Stage("train"),)


@dataclass(frozen=True)
class PlannedStage:
    """A stage placed in the run: its index, first epoch (1-based) and length after fitting."""

    index: int
    stage: Stage
    start: int
    epochs: int
    declared: int | None
    last: bool

    @property
    def end(self) -> int:
        return self.start + self.epochs - 1

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def scale(self) -> float:
        """Planned over declared length (1.0 when the stage was not shrunk)."""
        return self.epochs / self.declared if self.declared else 1.0

    def epoch_in_stage(self, epoch: int) -> int:
        """1-based position of run epoch `epoch` within this stage."""
        return epoch - self.start + 1


def plan_stages(
    stages: Sequence[Stage], epochs: int, fit: Literal["scale", "refuse"] = "scale", method: str = "the method"
) -> list[PlannedStage]:
    """Place `stages` in a run of at most `epochs` epochs (see the module docstring for the rules).

    Raises:
        GaalError: the stages cannot fit (fewer epochs than stages, or `fit` is 'refuse').
    """
    stages = list(stages)
    if any(s.epochs is None for s in stages[:-1]):
        raise ValueError("only the last stage may take the rest of the run")
    if not stages[-1].selects:
        raise ValueError("the last stage must be a candidate for the best checkpoint")
    declared = [s.epochs for s in stages]
    needed = sum(d or 1 for d in declared)
    if needed <= epochs:
        lengths = [d if d is not None else epochs - sum(declared[:-1]) for d in declared]
    else:
        lengths = _fit(declared, epochs, fit, method)
    plan, start = [], 1
    for i, (stage, length) in enumerate(zip(stages, lengths)):
        plan.append(PlannedStage(i, stage, start, length, declared[i], i == len(stages) - 1))
        start += length
    return plan


def _fit(declared: list[int | None], epochs: int, fit: str, method: str) -> list[int]:
    shown = " + ".join(str(d) if d is not None else "(rest)" for d in declared)
    if fit == "refuse" or epochs < len(declared):
        why = f"{method} trains in {len(declared)} stages of {shown} epochs, which do not fit train.epochs={epochs}" + (
            f"; at least {len(declared)} epochs are needed (one per stage)"
            if epochs < len(declared)
            else "; raise train.epochs, shorten the method's stages, or set train.stage_fit=scale"
        )
        raise GaalError(why, field="train.epochs")
    return scale_lengths([d or 1 for d in declared], epochs)


def scale_lengths(declared: list[int], epochs: int) -> list[int]:
    """Shrink `declared` in proportion to add up to `epochs`, each at least 1 (largest remainders)."""
    total = sum(declared)
    exact = [d * epochs / total for d in declared]
    lengths = [max(1, math.floor(x)) for x in exact]
    while sum(lengths) > epochs:
        i = max((i for i in range(len(lengths)) if lengths[i] > 1), key=lambda i: lengths[i] - exact[i])
        lengths[i] -= 1
    while sum(lengths) < epochs:
        i = max(range(len(lengths)), key=lambda i: exact[i] - lengths[i])
        lengths[i] += 1
    return lengths


def stage_at(plan: Sequence[PlannedStage], epoch: int) -> PlannedStage:
    """The stage that run epoch `epoch` belongs to."""
    for planned in plan:
        if planned.start <= epoch <= planned.end:
            return planned
    raise ValueError(f"epoch {epoch} is outside the planned stages (1..{plan[-1].end})")


def stage_parameters(model: torch.nn.Module, stage: Stage) -> list[torch.nn.Parameter]:
    """The trainable parameters the stage's optimiser holds."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and (not stage.trains or name.startswith(stage.trains))
    ]


def build_stage_optimizer(
    model: torch.nn.Module, planned: PlannedStage, train: Any
) -> tuple[torch.optim.Optimizer, Any]:
    """A fresh optimiser and scheduler for `planned`, from its own spec or the run's `train` settings."""
    spec = planned.stage.optimizer
    params = stage_parameters(model, planned.stage)
    if spec is None:
        kind, lr, momentum, decay = train.optimizer, train.lr, train.momentum, train.weight_decay
    else:
        kind, lr, momentum, decay = spec.kind, spec.lr, spec.momentum, spec.weight_decay
    lr = lr * planned.stage.lr_scale
    if kind == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    else:
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=lr, weight_decay=decay)
    return optimizer, _scheduler(optimizer, planned, train)


def _scheduler(optimizer: torch.optim.Optimizer, planned: PlannedStage, train: Any):
    spec = planned.stage.optimizer
    lr_sched = torch.optim.lr_scheduler
    if spec is not None:
        if spec.cosine:
            warmup = round(spec.warmup_epochs * planned.scale)
            factor = functools.partial(
                warmup_cosine_factor, warmup=warmup, total=planned.epochs, start=spec.warmup_start
            )
            return lr_sched.LambdaLR(optimizer, factor)
        if spec.milestones is not None:
            steps = sorted({max(1, round(m * planned.scale)) for m in spec.milestones})
            return lr_sched.MultiStepLR(optimizer, milestones=steps, gamma=spec.gamma)
        if spec.step_size is None:
            return lr_sched.LambdaLR(optimizer, lambda _: 1.0)
        step = max(1, round(spec.step_size * planned.scale))
        return lr_sched.StepLR(optimizer, step_size=step, gamma=spec.gamma)
    if train.scheduler == "step":
        return lr_sched.StepLR(optimizer, step_size=train.step_size, gamma=train.gamma)
    if train.scheduler == "cosine":
        return lr_sched.CosineAnnealingLR(optimizer, T_max=planned.epochs)
    return lr_sched.LambdaLR(optimizer, lambda _: 1.0)


def warmup_cosine_factor(epoch: int, warmup: int, total: int, start: float = 0.0) -> float:
    """The share of the base rate at stage epoch `epoch` (0-based) of `total`: a linear warm-up
    over `warmup` epochs from `start` to 1 (reached at epoch warmup - 1), then a cosine anneal
    from 1 to 0 over the remaining epochs (pl_bolts' LinearWarmupCosineAnnealingLR, eta_min 0)."""
    if epoch < warmup:
        return start + (1 - start) * epoch / (warmup - 1) if warmup > 1 else start
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(epoch - warmup, span) / span))


def describe(planned: PlannedStage, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """One entry of report.json's `stages`."""
    spec = planned.stage.optimizer
    return {
        "name": planned.name,
        "start_epoch": planned.start,
        "epochs": planned.epochs,
        "declared_epochs": planned.declared,
        "lr": optimizer.param_groups[0]["lr"],
        "optimizer": spec.kind if spec is not None else "train",
        "selects": planned.stage.selects,
        "labels": planned.stage.labels,
    }


class StagedSettings(BaseModel):
    """Mixin for the settings of a staged method: every optimiser block merges over its default.

    A method's default is the official code's optimiser (each field whose default is a
    `StageOptimizer`: `stage_optimizer`, or one per stage such as MMCL's `pretrain_optimizer`);
    a partial block in the YAML (`stage_optimizer: {lr: 0.01}`) changes only the keys it gives.
    """

    @model_validator(mode="before")
    @classmethod
    def _merge_over_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        merged = dict(values)
        for name, field in cls.model_fields.items():
            if isinstance(merged.get(name), dict) and isinstance(field.default, StageOptimizer):
                merged[name] = {**field.default.model_dump(), **merged[name]}
        return merged
