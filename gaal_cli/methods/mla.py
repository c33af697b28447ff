"""MLA: Multimodal Representation Learning by Alternating Unimodal Adaptation (Zhang et al., CVPR 2024).

Two encoders and ONE shared linear head ψ (like GAAL). Per batch the modalities take turns
(image, then tabular): L_m = CE(ψ(u_m), y), backward through encoder m and the head, then the
head's weight gradient is projected so that learning modality m interferes less with what the
head learned before (an orthogonal-weight-modification projection):

    r = mean over the batch of u_m (1 x d),   k = P rᵀ,
    P ← P − k kᵀ / (α + r k),                 α = 0.1^(1 + step / steps_per_epoch),
    ∇W ← ∇W Pᵀ

with P initialised to the identity and carried across modalities and batches; the head bias
keeps its plain gradient. As in the official loop the projection starts from the second
modality turn of training (the first turn has nothing to protect), and P is updated with the
current turn's features before projecting.

`steps_per_epoch` is the number of batches per epoch (len_loader in the official code), which
the engine does not pass to a method: set it in the settings, or leave it None to take it from
the length of the previous epoch (during the first epoch α is then 0.1, the step-0 value).

Official-code deviations: its parameter-name check (`"module.weight"`, against the head's own
parameter names `weight` and `bias`) never matches, so the projection never runs there; here
it runs, and `projection: false` gives the official code's effective behaviour (plain
alternating training). Two more differences of the
official plug-in (its GSPlugin.before_update), each an option: `normalize_projection: true`
divides P by its Frobenius norm after each update; `outer_denominator: true` divides k kᵀ
element-wise by α + k r, the d x d outer product its `torch.mm(k, r)` computes, instead of
the scalar α + r k of the paper.

Inference: the average of the two logits (default), or `inference: entropy`, weights
∝ exp(−H(softmax(ψ(u_m)))) per sample (the paper's test-time uncertainty-based fusion).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods import surgery
from gaal_cli.methods.base import (
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    fuse_missing,
    register_method,
)
from gaal_cli.methods.diagnostics import grad_norm


class MlaSettings(MethodSettings):
    projection: bool = Field(True, description="project the head gradient (the official code never does)")
    steps_per_epoch: int | None = Field(None, ge=1, description="batches per epoch for α; None: previous epoch's")
    normalize_projection: bool = Field(False, description="official plug-in: divide P by its Frobenius norm")
    outer_denominator: bool = Field(False, description="official plug-in: divide by α + k r (outer product)")
    inference: Literal["average", "entropy"] = "average"
    order: Literal["image_first", "tabular_first"] = "image_first"


def projection_update(P: torch.Tensor, r: torch.Tensor, alpha: float, outer: bool = False) -> torch.Tensor:
    """P − k kᵀ / (α + r k) with k = P rᵀ, for P (d x d) and r (1 x d).

    With `outer`, the denominator is the d x d matrix α + k r (element-wise), as the official code.
    """
    k = P @ r.T
    return P - (k @ k.T) / (alpha + (k @ r if outer else r @ k))


def mla_alpha(step: int, steps_per_epoch: int | None) -> float:
    """α = 0.1^(1 + step / steps_per_epoch), step counted from 0 within the epoch."""
    fraction = step / steps_per_epoch if steps_per_epoch else 0.0
    return 0.1 ** (1 + fraction)


def entropy_weights(logits: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample weights ∝ exp(−entropy) of each modality's prediction (B x M)."""
    return torch.softmax(-torch.stack([surgery.entropy(x) for x in logits], dim=1), dim=1)


@register_method("mla", settings=MlaSettings)
class Mla(Method):
    settings: MlaSettings

    def __init__(self, encoders, num_classes, settings: MlaSettings):
        super().__init__(encoders, num_classes, settings)
        d = encoders.feature_dim
        self.head = nn.Linear(d, num_classes)
        self.register_buffer("P", torch.eye(d))
        self.register_buffer("turns", torch.zeros((), dtype=torch.long))
        self.step = 0
        self.last_epoch_steps: int | None = None

    def on_epoch_start(self, epoch: int) -> None:
        if self.step:
            self.last_epoch_steps = self.step
        self.step = 0

    def resume_state(self) -> dict:
        # alpha's schedule needs the length of the previous epoch
        return {"step": self.step, "last_epoch_steps": self.last_epoch_steps}

    def load_resume_state(self, state: dict) -> None:
        self.step = state.get("step", 0)
        self.last_epoch_steps = state.get("last_epoch_steps")

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        order = ("image", "tabular") if self.settings.order == "image_first" else ("tabular", "image")
        alpha = mla_alpha(self.step, self.settings.steps_per_epoch or self.last_epoch_steps)
        stats: dict[str, torch.Tensor] = {}
        logits = {}
        for m in order:
            logits[m], loss, gnorm = self.turn(m, getattr(batch, m), batch.label, alpha, optimizer)
            stats[f"loss_{m}"], stats[f"gnorm_{m}"] = loss, gnorm
        self.step += 1
        stats["loss"] = (stats["loss_image"] + stats["loss_tabular"]) / 2
        stats["acc"] = accuracy((logits["image"] + logits["tabular"]) / 2, batch.label)
        stats["alpha"] = torch.tensor(alpha)
        return stats

    def turn(self, modality: str, x: torch.Tensor, labels: torch.Tensor, alpha: float, optimizer):
        """One modality's step: CE through encoder and head, head-gradient projection, step."""
        optimizer.zero_grad(set_to_none=True)
        u = getattr(self.encoders, modality)(x)
        logits = self.head(u)
        loss = cross_entropy(logits, labels)
        loss.backward()
        if self.settings.projection and self.turns > 0:
            self.project(u.detach(), alpha)
        self.turns += 1
        gnorm = grad_norm(list(getattr(self.encoders, modality).parameters()))
        optimizer.step()
        return logits.detach(), loss.detach(), gnorm

    @torch.no_grad()
    def project(self, u: torch.Tensor, alpha: float) -> None:
        P = projection_update(self.P, u.float().mean(0, keepdim=True), alpha, self.settings.outer_denominator)
        if self.settings.normalize_projection:
            P = P / torch.linalg.matrix_norm(P)
        self.P.copy_(P)
        self.head.weight.grad.copy_(self.head.weight.grad @ self.P.T)

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        li = self.head(self.encoders.image(image)) if image is not None else None
        lt = self.head(self.encoders.tabular(tabular)) if tabular is not None else None
        return Predictions(fuse_missing(li, lt, lambda: self.fuse(li, lt)), li, lt)

    def fuse(self, li: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
        if self.settings.inference == "average":
            return (li + lt) / 2
        w = entropy_weights([li, lt]).to(li.dtype)
        return w[:, :1] * li + w[:, 1:] * lt
