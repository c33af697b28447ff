"""DI-MML: Detached and Interactive Multimodal Learning (Fan et al., ACM MM 2024).

Stage 1 (epochs before `stage2_epoch`), "detached" training: each encoder m has its own linear
head h_m and its own objective, so neither modality competes with the other for a fused loss;
interaction comes from a shared classifier ψ applied to both features and a dimension-level
contrastive term:

    L = CE(h_I(u_I)) + CE(h_T(u_T)) + λ_ψ [CE(ψ(u_I)) + CE(ψ(u_T))] + λ_c · L_dim

Stage 2 (from `stage2_epoch` on): the encoders and unimodal heads are frozen (no gradient,
encoders in eval mode) and a concatenation fusion head f is trained with CE(f([u_I, u_T])).
Inference gates the three predictions per sample by their certainty:

    w = softmax([max p_I, max p_T, max p_F] / T₂),   p = Σ_k w_k p_k,   multi = log p

(before any stage-2 step the fusion head is untrained and the gate covers p_I and p_T only).
The Image and Tabular columns are the unimodal heads h_I and h_T.

What differs from the paper, stated plainly: the paper's dimension-decoupled unidirectional
contrastive (DUC) loss could not be checked against the paper text offline, so L_dim is a
reconstruction of its stated idea. Each feature dimension j is a "sample": its column over the
batch, centred and normalised, is contrasted with the same dimension of the other modality
(positive) against the other dimensions (negatives), InfoNCE with temperature τ. It is
unidirectional per dimension: the modality whose dimension j contributes more to the true-class
logit of ψ (mean of W_ψ[y, j] u_m[:, j]) is the teacher and is detached; only the other
modality learns from it. `contrastive_weight: 0` removes the term. The stage switch is an
epoch setting (the engine has no stages); the defaults of λ_ψ, λ_c, τ, T₂ and `stage2_epoch`
are not the paper's (chosen here for the embedded dataset's short runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import (
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    fuse_missing,
    register_method,
)
from gaal_cli.methods.diagnostics import encoder_grad_norms

MODALITIES = ("image", "tabular")


class DiMmlSettings(MethodSettings):
    stage2_epoch: int = Field(6, ge=1, description="first epoch of stage 2 (fusion head on frozen encoders)")
    shared_weight: float = Field(1.0, ge=0, description="λ_ψ: weight of the shared-classifier losses")
    contrastive_weight: float = Field(1.0, ge=0, description="λ_c: weight of the dimension-level contrastive term")
    contrastive_temperature: float = Field(0.5, gt=0, description="τ of the dimension-level InfoNCE")
    gate_temperature: float = Field(1.0, gt=0, description="T₂ of the certainty gate")


def certainty_gate(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Per-sample gate weights softmax(max_prob / T₂) over the predictions (B x K)."""
    confidence = torch.stack([torch.softmax(x.float(), -1).amax(-1) for x in logits], dim=1)
    return torch.softmax(confidence / temperature, dim=1)


def gated_log_probs(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """log Σ_k w_k softmax(logits_k): the gated mixture as logits."""
    w = certainty_gate(logits, temperature)
    probs = torch.stack([torch.softmax(x.float(), -1) for x in logits], dim=1)
    return torch.log((w[..., None] * probs).sum(1).clamp_min(1e-12))


def dimension_infonce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-dimension InfoNCE: dimension j of `student` against all dimensions of `teacher`."""
    a = F.normalize((student - student.mean(0)).float(), dim=0).T
    b = F.normalize((teacher - teacher.mean(0)).float(), dim=0).T.detach()
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device), reduction="none")


def dimension_contrastive(
    u_i: torch.Tensor, u_t: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_dim and the fraction of dimensions on which the tabular side is the teacher."""
    w_y = weight.detach()[labels]
    tabular_teaches = (w_y * u_t.detach()).mean(0) > (w_y * u_i.detach()).mean(0)
    image_learns = dimension_infonce(u_i, u_t, temperature)
    tabular_learns = dimension_infonce(u_t, u_i, temperature)
    loss = torch.where(tabular_teaches, image_learns, tabular_learns).mean()
    return loss, tabular_teaches.float().mean()


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
        self.stage = 1

    def on_epoch_start(self, epoch: int) -> None:
        self.stage = 2 if epoch >= self.settings.stage2_epoch else 1
        if self.stage == 2:
            self.encoders.eval()

    def idle_parameters(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        fusion = {n for n in names if n.startswith("fusion.")}
        return fusion if self.stage == 1 else names - fusion

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        stats = self.stage1_loss(batch) if self.stage == 1 else self.stage2_loss(batch)
        stats["loss"].backward()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        stats["loss"] = stats["loss"].detach()
        return stats

    def stage1_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        u = {"image": self.encoders.image(batch.image), "tabular": self.encoders.tabular(batch.tabular)}
        y = batch.label
        own = {m: self.heads[m](u[m]) for m in MODALITIES}
        loss_own = {m: cross_entropy(own[m], y) for m in MODALITIES}
        loss_shared = sum(cross_entropy(self.shared(u[m]), y) for m in MODALITIES)
        loss_dim, tabular_teaches = dimension_contrastive(
            u["image"], u["tabular"], self.shared.weight, y, self.settings.contrastive_temperature
        )
        s = self.settings
        loss = loss_own["image"] + loss_own["tabular"] + s.shared_weight * loss_shared + s.contrastive_weight * loss_dim
        fused = gated_log_probs([own["image"].detach(), own["tabular"].detach()], s.gate_temperature)
        return {
            "loss": loss,
            "acc": accuracy(fused, y),
            "loss_image": loss_own["image"].detach(),
            "loss_tabular": loss_own["tabular"].detach(),
            "loss_shared": loss_shared.detach(),
            "loss_dim": loss_dim.detach(),
            "tabular_teaches": tabular_teaches,
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
        return gated_log_probs(preds, self.settings.gate_temperature)
