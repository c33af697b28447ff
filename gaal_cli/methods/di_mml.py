"""DI-MML: Detached and Interactive Multimodal Learning (Fan et al., ACM MM 2024).

Facts below are from the paper's description in REFERENCE §3 and the official code
(github fanyunfeng-bit/DI-MML, main_CFT.py, main_CFT_stage2.py, loss/contrast_loss.py); the
paper text itself was not available offline, so where they could differ the code is followed.

Stage 1 (`stage1_epochs`), "detached" training: each encoder m has its own linear
head h_m and its own objective, so the modalities do not compete for one fused loss;
interaction comes from a shared classifier ψ on both features and, from epoch
`contrast_start_epoch` on, the dimension-decoupled unidirectional contrastive (DUC) term:

    L = CE(h_I(u_I)) + CE(h_T(u_T)) + λ_ψ [CE(ψ(u_I)) + CE(ψ(u_T))] + L_DUC

L_DUC: each feature dimension j gets, per modality, its nearest-class-centroid accuracy (the
class whose mean of dimension j is nearest to the sample's value, compared with its label);
the dimensions above that modality's mean accuracy are its effective ones. On the dimensions
effective for the tabular encoder only (S_T), the image features learn from the detached
tabular ones, InfoNCE over the batch: −log softmax_j(u_I,i[S_T] · sg(u_T,j[S_T]) / τ)[i]; and
symmetrically the tabular features learn on S_I. The official code computes the dimension
sets once, at epoch 20, with a pass over the training set in eval mode. A method here sees
only training batches, so the sets are computed at `contrast_start_epoch` from the batches of
the previous two epochs: class centroids from the one before last, accuracies of the last
epoch's features against them (features of the training steps, train mode, a model that moves
meanwhile). It needs `contrast_start_epoch` ≥ 3; until the sets exist L_DUC is 0.

Stage 2 (`stage2_epochs`): encoders and unimodal heads frozen (no gradient, encoders in eval
mode); a concatenation fusion head f is trained with CE(f([u_I, u_T])). Inference gates
the three logits per sample by certainty (official stage-2 validation):

    w = softmax([max p_I, max p_T, max p_F] / T₂),   multi = Σ_k w_k · logits_k

Before any stage-2 step the gate covers h_I and h_T only (the official stage 1 reports no
fused prediction; this is the natural one). Image and Tabular columns: h_I and h_T.

Stages (gaal_cli/methods/stages.py). The official code runs stage 2 as a separate run
(main_CFT_stage2.py) with a fresh optimiser; here the engine runs both stages in one run and
gives each its own fresh optimiser: by default the official one, SGD lr 1e-3, momentum 0.9,
weight decay 1e-4, StepLR(70, 0.1) inside the stage (`stage_optimizer`; null: the run's train.*).
Stage 1's optimiser holds the encoders and the three stage-1 heads, stage 2's only the fusion
head. Only stage-2 epochs are candidates for the best checkpoint (stage 1 has no fusion head
yet; the official stage 2 likewise keeps its own best). When the stages do not fit
train.epochs the engine shrinks both in proportion (e.g. the default 8 epochs: 7 + 1), and the
contrast start shrinks with stage 1 (never before epoch 3 of the stage; a stage 1 of fewer than
3 epochs trains without L_DUC).

Defaults are the official code's: λ_ψ = 1, τ = 1, T₂ = 1, contrast from epoch 21 of stage 1
(epoch 20 counted from 0), 150 stage-1 epochs, 20 stage-2 epochs (its default --epochs).
"""

from __future__ import annotations

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
    fuse_missing,
    register_method,
)
from gaal_cli.methods.diagnostics import encoder_grad_norms
from gaal_cli.methods.stages import PlannedStage, Stage, StagedSettings, StageOptimizer

#: the official optimiser of both stages (main_CFT.py, main_CFT_stage2.py)
OFFICIAL_OPTIMIZER = StageOptimizer(kind="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4, step_size=70, gamma=0.1)


class DiMmlSettings(StagedSettings, MethodSettings):
    stage1_epochs: int = Field(150, ge=1, description="epochs of stage 1, detached training (official: 150)")
    stage2_epochs: int = Field(20, ge=1, description="epochs of stage 2, the fusion head (official: 20)")
    stage_optimizer: StageOptimizer | None = Field(
        OFFICIAL_OPTIMIZER, description="each stage's fresh optimiser (official: SGD 1e-3); null: train.*"
    )
    contrast_start_epoch: int = Field(
        21, ge=3, description="epoch of stage 1 that starts the DUC term (official: 20 from 0)"
    )
    shared_weight: float = Field(1.0, ge=0, description="λ_ψ: weight of the shared-classifier losses")
    contrastive_temperature: float = Field(1.0, gt=0, description="τ of the DUC InfoNCE")
    gate_temperature: float = Field(1.0, gt=0, description="T₂ of the certainty gate")


def certainty_gate(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Per-sample gate weights softmax(max_prob / T₂) over the predictions (B x K)."""
    confidence = torch.stack([torch.softmax(x.float(), -1).amax(-1) for x in logits], dim=1)
    return torch.softmax(confidence / temperature, dim=1)


def gated_logits(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Σ_k w_k logits_k with the certainty gate's weights."""
    w = certainty_gate(logits, temperature)
    return (w[..., None] * torch.stack([x.float() for x in logits], dim=1)).sum(1)


def nearest_centroid_hits(u: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per dimension j, how many samples have their label's centroid nearest in dimension j.

    Args:
        u: features (B x d); labels: (B,); centroids: class means (C x d), +inf for absent classes.
    """
    values, order = centroids.T.sort(dim=1)  # d x C
    x = u.T.contiguous()  # d x B
    pos = torch.searchsorted(values.contiguous(), x)
    last = values.shape[1] - 1
    lo, hi = (pos - 1).clamp(0, last), pos.clamp(0, last)
    nearer_hi = (values.gather(1, hi) - x).abs() < (x - values.gather(1, lo)).abs()
    cls = order.gather(1, torch.where(nearer_hi, hi, lo))
    return (cls == labels[None]).sum(1)


def effective_only(hits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks of the dimensions effective for one modality only (accuracy above its own mean)."""
    top = {m: h.float() > h.float().mean() for m, h in hits.items()}
    return {"image": top["image"] & ~top["tabular"], "tabular": top["tabular"] & ~top["image"]}


def unidirectional_contrastive(
    student: torch.Tensor, teacher: torch.Tensor, dims: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE over the batch on the dimensions `dims`; only `student` receives a gradient."""
    if not bool(dims.any()):
        return student.new_zeros(())
    logits = student[:, dims].float() @ teacher[:, dims].detach().float().T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class DimensionStatistics:
    """Class centroids of one epoch and nearest-centroid hits of the next, per modality."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: torch.Tensor | None = None
        self.centroids: dict[str, torch.Tensor] = {}
        self.hits: dict[str, torch.Tensor] = {}

    def update(self, u: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int) -> None:
        for m, x in u.items():
            x = x.detach().float()
            if m not in self.sums:
                self.sums[m] = x.new_zeros(num_classes, x.shape[1])
            self.sums[m].index_add_(0, labels, x)
            if m in self.centroids:
                hits = nearest_centroid_hits(x, labels, self.centroids[m])
                self.hits[m] = self.hits.get(m, 0) + hits
        counts = torch.bincount(labels, minlength=num_classes).float()
        self.counts = counts if self.counts is None else self.counts + counts

    def state(self) -> dict:
        """Plain data for a resume file: the running sums and the last epoch's centroids and hits."""
        return {"sums": self.sums, "counts": self.counts, "centroids": self.centroids, "hits": self.hits}

    def load(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), state["counts"]
        self.centroids, self.hits = dict(state["centroids"]), dict(state["hits"])

    def roll(self) -> None:
        """Start an epoch: the last epoch's class means become the centroids to score against."""
        if self.counts is not None:
            present = self.counts[:, None] > 0
            mean = {m: x / self.counts[:, None].clamp_min(1) for m, x in self.sums.items()}
            self.centroids = {m: torch.where(present, x, torch.full_like(x, float("inf"))) for m, x in mean.items()}
        self.sums, self.counts, self.hits = {}, None, {}


@register_method("di_mml", settings=DiMmlSettings)
class DiMml(Method):
    settings: DiMmlSettings

    def __init__(self, encoders, num_classes, settings: DiMmlSettings):
        super().__init__(encoders, num_classes, settings)
        d = encoders.feature_dim
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m in MODALITIES})
        self.shared = nn.Linear(d, num_classes)
        self.fusion = nn.Linear(2 * d, num_classes)
        self.register_buffer("fusion_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("dims_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("image_only", torch.zeros(d, dtype=torch.bool))
        self.register_buffer("tabular_only", torch.zeros(d, dtype=torch.bool))
        self.stats = DimensionStatistics()
        self.collecting = False

    @classmethod
    def stages(cls, s: DiMmlSettings, epochs: int) -> list[Stage]:
        return [
            Stage("detached", s.stage1_epochs, ("encoders.", "heads.", "shared."), s.stage_optimizer, selects=False),
            Stage("fusion", s.stage2_epochs, ("fusion.",), s.stage_optimizer),
        ]

    @property
    def fusion_stage(self) -> bool:
        return self.stage is not None and self.stage.index == 1

    def contrast_start(self, stage: PlannedStage | None) -> int:
        """Run epoch of the first DUC epoch: the setting, shrunk with stage 1, never before its 3rd epoch."""
        scale = stage.scale if stage is not None else 1.0
        start = stage.start if stage is not None else 1
        return start - 1 + max(3, round(self.settings.contrast_start_epoch * scale))

    def on_epoch_start(self, epoch: int) -> None:
        self.collecting = False
        if self.fusion_stage:
            self.encoders.eval()
            return
        if self.dims_ready:
            return
        contrast_start = self.contrast_start(self.stage)
        if epoch >= contrast_start and len(self.stats.hits) == 2:
            only = effective_only(self.stats.hits)
            self.image_only.copy_(only["image"])
            self.tabular_only.copy_(only["tabular"])
            self.dims_ready.fill_(True)
            return
        self.stats.roll()
        self.collecting = epoch >= contrast_start - 2

    def resume_state(self) -> dict:
        # the dimension statistics gathered over the epochs before the contrast starts
        return {"stats": self.stats.state()}

    def load_resume_state(self, state: dict) -> None:
        if "stats" in state:
            self.stats.load(state["stats"])

    def idle_parameters(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        fusion = {n for n in names if n.startswith("fusion.")}
        return names - fusion if self.fusion_stage else fusion

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        stats = self.stage2_loss(batch) if self.fusion_stage else self.stage1_loss(batch)
        stats["loss"].backward()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        stats["loss"] = stats["loss"].detach()
        return stats

    def stage1_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        s, y = self.settings, batch.label
        u = {"image": self.encoders.image(batch.image), "tabular": self.encoders.tabular(batch.tabular)}
        if self.collecting:
            self.stats.update(u, y, self.num_classes)
        own = {m: self.heads[m](u[m]) for m in MODALITIES}
        loss_own = {m: cross_entropy(own[m], y) for m in MODALITIES}
        loss_shared = sum(cross_entropy(self.shared(u[m]), y) for m in MODALITIES)
        loss_duc = unidirectional_contrastive(
            u["image"], u["tabular"], self.tabular_only, s.contrastive_temperature
        ) + unidirectional_contrastive(u["tabular"], u["image"], self.image_only, s.contrastive_temperature)
        loss = loss_own["image"] + loss_own["tabular"] + s.shared_weight * loss_shared + loss_duc
        fused = gated_logits([own["image"].detach(), own["tabular"].detach()], s.gate_temperature)
        return {
            "loss": loss,
            "acc": accuracy(fused, y),
            "loss_image": loss_own["image"].detach(),
            "loss_tabular": loss_own["tabular"].detach(),
            "loss_shared": loss_shared.detach(),
            "loss_duc": loss_duc.detach(),
            "dims_image_only": self.image_only.float().sum(),
            "dims_tabular_only": self.tabular_only.float().sum(),
        }

    def stage2_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            u = torch.cat([self.encoders.image(batch.image), self.encoders.tabular(batch.tabular)], dim=1)
        logits = self.fusion(u)
        self.fusion_trained.fill_(True)
        return {"loss": cross_entropy(logits, batch.label), "acc": accuracy(logits.detach(), batch.label)}

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        ui = self.encoders.image(image) if image is not None else None
        ut = self.encoders.tabular(tabular) if tabular is not None else None
        li = self.heads["image"](ui) if ui is not None else None
        lt = self.heads["tabular"](ut) if ut is not None else None
        return Predictions(fuse_missing(li, lt, lambda: self.gate(li, lt, ui, ut)), li, lt)

    def gate(self, li, lt, ui, ut) -> torch.Tensor:
        preds = [li, lt]
        if self.fusion_trained:
            preds.append(self.fusion(torch.cat([ui, ut], dim=1)))
        return gated_logits(preds, self.settings.gate_temperature)
