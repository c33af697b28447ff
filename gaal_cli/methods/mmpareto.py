"""MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance (Wei & Hu, ICML 2024).

Model: a fused concatenation head plus one linear head per modality; losses L_mm (fused),
L_I, L_T (own heads). Heads get the plain gradient of L_mm + L_I + L_T. For each encoder m,
with g_mm = ∇_θm L_mm and g_u = ∇_θm L_m flattened over the whole encoder:

    if cos(g_mm, g_u) > 0:  (w_mm, w_u) = (1/2, 1/2)
    else:                   w_mm = clip((g_u·g_u − g_mm·g_u) / ||g_mm − g_u||², 0.001, 0.999),
                            w_u = 1 − w_mm          (two-task min-norm / MGDA weights)

then per parameter tensor, with g_mm, g_u now that tensor's parts,

    new = 2 w_mm g_mm + 2 w_u g_u,    g̃ = γ · s · new,   γ = `magnitude` (1.5),

where s rescales new towards the norm of the summed gradient ||g_mm + g_u||. `rescale`:
`up_only` (s = max(1, ||g_mm + g_u|| / ||new||): only enlarge, the official code), `always`
(s = ||g_mm + g_u|| / ||new||) or `none` (s = 1). The paper motivates the rescaling as keeping
the magnitude of the summed gradient so as not to lose its generalisation benefit; the
defaults (`up_only`, γ = 1.5) are the official code's, because the exact equation in the
paper could not be checked here (no copy of the paper offline): treat them as such.
When the gradients agree (weights 1/2), new equals the summed gradient and s = 1.

Optimiser: the official code uses SGD (momentum 0.9); under Adam the magnitude part of the rule
(rescaling, γ) is largely normalised away, so use `train.optimizer=sgd` for the official setting.

Predictions: fused head, and each modality's own head for the Image / Tabular columns.
Logs `cos_image`, `cos_tabular` (the method computes them anyway), `w_mm_image`,
`w_mm_tabular` and the encoder gradient norms after the rule.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods import surgery
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
from gaal_cli.methods.diagnostics import encoder_grad_norms, encoder_params


class MMParetoSettings(MethodSettings):
    magnitude: float = Field(1.5, gt=0, description="γ: final gradient scale (official code: 1.5)")
    rescale: Literal["up_only", "always", "none"] = Field(
        "up_only", description="rescale towards ||g_mm + g_u|| per tensor (official: up_only)"
    )


def min_norm_weight(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Weight γ of g1 in the min-norm point γ g1 + (1 − γ) g2, clipped to [0.001, 0.999]."""
    diff = torch.dot(g1 - g2, g1 - g2)
    gamma = (torch.dot(g2, g2) - torch.dot(g1, g2)) / diff.clamp_min(torch.finfo(g1.dtype).tiny)
    return gamma.clamp(0.001, 0.999)


def pareto_weight(g_mm: torch.Tensor, g_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_mm, cos): 1/2 when the gradients agree, else the min-norm weight of g_mm."""
    cos = surgery.cosine(g_mm, g_u)
    w = torch.where(cos > 0, torch.full_like(cos, 0.5), min_norm_weight(g_mm, g_u))
    return w, cos


def combine(g_mm: torch.Tensor, g_u: torch.Tensor, w_mm: torch.Tensor, rescale: str, magnitude: float):
    """The new gradient of one tensor from its two parts and the encoder's weight w_mm."""
    new = 2 * w_mm * g_mm + 2 * (1 - w_mm) * g_u
    if rescale != "none":
        ratio = torch.linalg.vector_norm(g_mm + g_u) / torch.linalg.vector_norm(new).clamp_min(1e-12)
        new = new * (ratio.clamp_min(1.0) if rescale == "up_only" else ratio)
    return magnitude * new


@register_method("mmpareto", settings=MMParetoSettings)
class MMPareto(Method):
    settings: MMParetoSettings

    def __init__(self, encoders, num_classes, settings: MMParetoSettings):
        super().__init__(encoders, num_classes, settings)
        d = encoders.feature_dim
        self.head = nn.Linear(2 * d, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m in MODALITIES})

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        u = {"image": self.encoders.image(batch.image), "tabular": self.encoders.tabular(batch.tabular)}
        logits = self.head(torch.cat([u["image"], u["tabular"]], dim=1))
        loss_mm = cross_entropy(logits, batch.label)
        losses = {m: cross_entropy(self.heads[m](u[m]), batch.label) for m in MODALITIES}
        enc = {m: encoder_params(self.encoders, m) for m in MODALITIES}
        g_mm = torch.autograd.grad(loss_mm, enc["image"] + enc["tabular"], retain_graph=True, allow_unused=True)
        g_mm = dict(zip(MODALITIES, (g_mm[: len(enc["image"])], g_mm[len(enc["image"]) :])))
        (loss_mm + sum(losses.values())).backward()
        stats = {"loss": loss_mm.detach(), "acc": accuracy(logits.detach(), batch.label)}
        for m in MODALITIES:
            stats.update(self.pareto_step(enc[m], g_mm[m], m))
            stats[f"loss_{m}"] = losses[m].detach()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def pareto_step(self, params, g_mm, modality: str) -> dict[str, torch.Tensor]:
        """Replace one encoder's summed gradient by MMPareto's; g_u = summed − g_mm."""
        pairs = [(p, torch.zeros_like(p) if g is None else g) for p, g in zip(params, g_mm) if p.grad is not None]
        params, g_mm = [p for p, _ in pairs], [g for _, g in pairs]
        g_u = [p.grad - g for p, g in pairs]
        w, cos = pareto_weight(surgery.flatten(g_mm), surgery.flatten(g_u))
        for p, a, b in zip(params, g_mm, g_u):
            p.grad.copy_(combine(a, b, w, self.settings.rescale, self.settings.magnitude))
        return {f"cos_{modality}": cos.detach(), f"w_mm_{modality}": w.detach()}

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        ui = self.encoders.image(image) if image is not None else None
        ut = self.encoders.tabular(tabular) if tabular is not None else None
        li = self.heads["image"](ui) if ui is not None else None
        lt = self.heads["tabular"](ut) if ut is not None else None
        return Predictions(fuse_missing(li, lt, lambda: self.head(torch.cat([ui, ut], dim=1))), li, lt)
