"""ReconBoost: boosting can achieve modality reconcilement (Hua et al., ICML 2024, arXiv 2405.09321).

Modality-alternating learning in the manner of gradient boosting. Training runs in stages;
stage s picks one modality m (image, tabular, image, ... from `first`) and has two phases:

1. Boosting (`stage_epochs` epochs): only encoder m and the shared head learn. With the
   KL-based reconcilement regulariser the paper shows the objective becomes a per-sample
   re-weighted cross-entropy,
       L = mean_i (w1 - w2 * q_i) * CE(f_m(x_i), y_i),
   q_i = softmax(F_{-m}(x_i))[y_i], the probability the ensemble of the OTHER modalities
   gives the true class (computed without gradient). Samples the others already fit get a
   lower weight; w1 = 5, w2 = 1 (official code, CREMA-D). Before the other modality has
   completed a stage the ensemble is the constant initial learner F_0, equal logits for all
   classes, so q = 1 / C. (The official code's F_0 is one scalar per sample, whose softmax
   over its single column is 1, so there the stage-0 weight is w1 - w2: a constant either
   way, i.e. only a different step size in the first stage.)
2. Global rectification (`rectify_epochs` epochs): every member of the ensemble learns with
   CE(beta * sum_m f_m(x), y), beta the learnable boost rate (initial value 1).

The ensemble keeps only the newest learner per modality (the paper's departure from classic
gradient boosting); with one encoder per modality that is the encoder itself. As in the
official code (`common_space: True`) both modalities share one head, Linear(d, 256) - ReLU -
Linear(256, C) (`head_hidden: 0` for a single Linear). Stage lengths default to the official
code's `epochs_per_stage = correct_epoch = 4`.

Stages (gaal_cli/methods/stages.py). Each boosting phase and each rectification phase is an engine
stage with a fresh optimiser, as the official code builds a new SGD for each: by default the
official one, SGD lr 0.01, momentum 0.9, weight decay 5e-4, constant within the phase
(`stage_optimizer`; null: the run's train.*), its learning rate multiplied by `lr_decay` every
`lr_decay_every` boosting stages (official CREMA-D: x0.1 every 30). A boosting phase's optimiser
holds encoder m and the head; a rectification phase's the members' encoders, the head and beta.
`stages` boosting stages are trained (official: up to 1001, i.e. until stopped; None here: as
many as fit train.epochs, at least 2 so that both modalities boost, shrunk to fit; only a run
shorter than two stages' phases gets a single stage, and then the tabular encoder never
trains). The best checkpoint is chosen among rectification epochs (the official code evaluates
the ensemble after each rectification), or among boosting epochs when `rectify_epochs: 0`.

Read-out: fused = beta * sum of the logits of the modalities already in the ensemble;
image-only / tabular-only = the shared head on that modality's features (its learner in the
ensemble). The paper's own unimodal numbers come from linear probes trained on frozen
encoders afterwards, a separate training run outside this method's interface.

Departures from the official code: its boosting loss averages over classes as well
(a constant 1/C factor, i.e. a learning-rate rescaling, not reproduced); it keeps only
checkpoints from its fourth stage on and selects them on the test split (here: validation,
rectification epochs of any stage); its recommended start from pre-trained unimodal models
(`--use_pretrain`) is not part of this method (initial weights come from `model.weights`, as
for every method).
Departure from the paper: its memory consolidation scheme is not implemented. Its official
form (`ga_loss`, the MSE between the softmax of the current and of the previous learner,
both detached) contributes no gradient, and the paper's own formula was not available here.

Logs the mean sample weight (`weight_mean`), the phase (`rectify` 0/1), beta, and with
`grad_cosine: true` the cosine between encoder m's gradients under its unimodal loss and
under the ensemble's CE.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import (
    MODALITIES,
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    register_method,
)
from gaal_cli.methods.diagnostics import encoder_cosines, encoder_grad_norms, encoder_params, grad_cosine
from gaal_cli.methods.stages import PlannedStage, Stage, StagedSettings, StageOptimizer

#: the official optimiser of every phase (train.py: a new SGD for each boosting and rectification phase)
OFFICIAL_OPTIMIZER = StageOptimizer(kind="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)


class ReconBoostSettings(StagedSettings, MethodSettings):
    w1: float = Field(5.0, description="constant part of the sample weight")
    w2: float = Field(1.0, description="how much the other modalities' true-class probability lowers it")
    stage_epochs: int = Field(4, ge=1, description="boosting epochs per stage")
    rectify_epochs: int = Field(4, ge=0, description="global rectification epochs after each stage")
    stages: int | None = Field(
        None, ge=2, description="boosting stages (official: until stopped); None: as many as fit train.epochs"
    )
    stage_optimizer: StageOptimizer | None = Field(
        OFFICIAL_OPTIMIZER, description="each phase's fresh optimiser (official: SGD 0.01); null: train.*"
    )
    lr_decay: float = Field(0.1, gt=0, le=1, description="learning-rate factor every lr_decay_every stages")
    lr_decay_every: int | None = Field(30, ge=1, description="boosting stages per decay (official CREMA-D: 30)")
    first: Literal["image", "tabular"] = "image"
    head_hidden: int = Field(256, ge=0, description="hidden width of the shared head (0: one Linear)")


def modality_order(first: str) -> tuple[str, ...]:
    return MODALITIES if first == "image" else MODALITIES[::-1]


def boost_weights(other_logits: torch.Tensor | None, labels: torch.Tensor, num_classes: int, w1: float, w2: float):
    """Per-sample weights w1 - w2 * q_y, q from the other modalities' ensemble logits (None: uniform)."""
    if other_logits is None:
        q = torch.full(labels.shape, 1.0 / num_classes, device=labels.device)
    else:
        q = F.softmax(other_logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    return w1 - w2 * q


@register_method("reconboost", settings=ReconBoostSettings)
class ReconBoost(Method):
    settings: ReconBoostSettings

    def __init__(self, encoders, num_classes, settings: ReconBoostSettings):
        super().__init__(encoders, num_classes, settings)
        d, h = encoders.feature_dim, settings.head_hidden
        self.head = (
            nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, num_classes)) if h else nn.Linear(d, num_classes)
        )
        self.boost_rate = nn.Parameter(torch.ones(()))
        # which modalities have begun a boosting phase, i.e. are in the ensemble; a buffer, so
        # that a saved model is read out with the same members
        self.register_buffer("ensemble", torch.zeros(len(MODALITIES), dtype=torch.bool))

    @classmethod
    def stages(cls, s: ReconBoostSettings, epochs: int) -> list[Stage]:
        """Boosting phase, then rectification phase, for each boosting stage (modalities alternate)."""
        phases = 2 if s.rectify_epochs else 1
        # None: as many as fit, and both modalities once the run has an epoch for every phase
        count = s.stages or max(1, min(2, epochs // phases), epochs // (s.stage_epochs + s.rectify_epochs))
        plan = []
        for k in range(count):
            m = modality_order(s.first)[k % 2]
            scale = s.lr_decay ** (k // s.lr_decay_every) if s.lr_decay_every else 1.0
            boosted = "encoders." if k >= 1 else f"encoders.{m}."
            plan.append(
                Stage(
                    f"boost {m}",
                    s.stage_epochs,
                    (f"encoders.{m}.", "head."),
                    s.stage_optimizer,
                    scale,
                    selects=not s.rectify_epochs,
                )
            )
            if s.rectify_epochs:
                plan.append(
                    Stage("rectify", s.rectify_epochs, (boosted, "head.", "boost_rate"), s.stage_optimizer, scale)
                )
        return plan

    def on_stage_start(self, stage: PlannedStage) -> None:
        _, modality, rectify = self.schedule()
        if not rectify:
            self.ensemble[MODALITIES.index(modality)] = True

    def schedule(self) -> tuple[int, str, bool]:
        """(boosting stage index, its modality, whether this is its rectification phase)."""
        index = self.stage.index if self.stage is not None else 0
        k, phase = divmod(index, 2 if self.settings.rectify_epochs else 1)
        return k, modality_order(self.settings.first)[k % 2], phase == 1

    def members(self) -> list[str]:
        """Modalities in the ensemble: those that have begun a boosting phase."""
        members = [m for i, m in enumerate(MODALITIES) if self.ensemble[i]]
        return members or [self.schedule()[1]]

    def idle_parameters(self) -> set[str]:
        """Boosting trains one encoder and the head; rectification the members' encoders,
        the head and the boost rate."""
        _, modality, rectify = self.schedule()
        learning = set(self.members()) if rectify else {modality}
        idle = {f"encoders.{m}." for m in MODALITIES if m not in learning}
        names = {n for n, _ in self.named_parameters() if n.startswith(tuple(idle))}
        return names if rectify else names | {"boost_rate"}

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.head(getattr(self.encoders, modality)(x))

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        inputs = {"image": batch.image, "tabular": batch.tabular}
        _, modality, rectify = self.schedule()
        if rectify:
            stats, loss = self.rectify_loss(inputs, batch.label)
        else:
            stats, loss = self.boost_loss(modality, inputs, batch.label)
        loss.backward()
        stats.update(encoder_grad_norms(self.encoders))
        stats["boost_rate"] = self.boost_rate.detach().clone()
        stats["rectify"] = torch.tensor(float(rectify))
        optimizer.step()
        return stats

    def boost_loss(self, modality: str, inputs: dict, labels: torch.Tensor):
        """Phase 1: weighted CE of modality `modality`; the other modalities only weight samples."""
        other = [m for m in self.members() if m != modality]
        with torch.no_grad():
            other_logits = self.boost_rate * sum(self.encode(m, inputs[m]) for m in other) if other else None
        logits = self.encode(modality, inputs[modality])
        weights = boost_weights(other_logits, labels, self.num_classes, self.settings.w1, self.settings.w2)
        loss = (weights * F.cross_entropy(logits.float(), labels, reduction="none")).mean()
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), labels), "weight_mean": weights.mean()}
        if self.settings.grad_cosine:
            ensemble = self.boost_rate.detach() * logits + (0 if other_logits is None else other_logits)
            stats[f"cos_{modality}"] = grad_cosine(
                loss, cross_entropy(ensemble, labels), encoder_params(self.encoders, modality)
            )
        return stats, loss

    def rectify_loss(self, inputs: dict, labels: torch.Tensor):
        """Phase 2: CE of the boosted sum over every member of the ensemble."""
        logits = {m: self.encode(m, inputs[m]) for m in self.members()}
        fused = self.boost_rate * sum(logits.values())
        loss = cross_entropy(fused, labels)
        stats = {"loss": loss.detach(), "acc": accuracy(fused.detach(), labels)}
        if self.settings.grad_cosine:
            unimodal = {m: cross_entropy(member, labels) for m, member in logits.items()}
            stats.update(encoder_cosines(unimodal, loss, self.encoders))
        return stats, loss

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        given = {"image": image, "tabular": tabular}
        logits = {m: self.encode(m, x) for m, x in given.items() if x is not None}
        used = [logits[m] for m in self.members() if m in logits] or list(logits.values())
        return Predictions(self.boost_rate * sum(used), logits.get("image"), logits.get("tabular"))
