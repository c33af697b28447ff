"""GAAL: Gradient-Aligned Alternating Learning (ICME 2026, seeds/001; Algorithm 1).

Two encoders and ONE shared linear classifier psi. Per batch, modalities take turns (image,
then tabular by default). In the turn of modality m:

1. L_m = CE(psi(u_m), y) over the batch; its backward gives the gradient of encoder m and the
   head gradient g (eq. 1).
2. Uncertainty-based gradient guidance (UGG, eq. 6-8): entropy of softmax(psi(u_m')) for the
   other modality m'; g_p = head gradient of the mean CE over its top-lambda_m' fraction.
3. Cross-modal gradient surgery (CGS, eq. 4-5): g~ = g + v g_p with
   v = max(0, (eps - g_p.g) / ||g_p||^2), so that g_p.g~ >= eps.
4. One optimiser step: encoder m with its own gradient, the head with g~.

Inference (eq. 10) averages the two logits; image-only inference is psi(u_I).

Cost: each encoder runs forward and backward once per batch, as in joint training. The
official code back-propagates the hard-sample loss through the other encoder and throws that
gradient away; here g_p is taken through the head alone on detached features. The features of
the other modality are those of this batch's forward pass: for the tabular turn, u_I comes
from before the image encoder's step in the same batch (one step stale), which saves a second
image forward.

Switches: `cgs: false` gives alternating learning only (Table II row 1); `ugg: false` takes
g_p from the whole batch (row 2). `projection: gem` replaces eq. 5 by the official code's GEM
dual QP with a lower bound `gem_margin` on v (REFERENCE §1).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gaal_cli import surgery
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


class GaalSettings(MethodSettings):
    lambda_image: float = Field(0.5, gt=0, le=1, description="fraction of image samples used as guidance")
    lambda_tabular: float = Field(0.5, gt=0, le=1, description="fraction of tabular samples used as guidance")
    epsilon: float = Field(0.0, description="alignment margin of eq. 3-5")
    cgs: bool = Field(True, description="cross-modal gradient surgery on the shared head")
    ugg: bool = Field(True, description="guidance from the top-lambda most uncertain samples (else all)")
    projection: Literal["closed_form", "gem"] = "closed_form"
    gem_margin: float = Field(0.75, ge=0, description="lower bound of v in the official GEM projection")
    order: Literal["image_first", "tabular_first"] = "image_first"


@register_method("gaal", settings=GaalSettings)
class Gaal(Method):
    settings: GaalSettings

    def __init__(self, encoders, num_classes, settings: GaalSettings):
        super().__init__(encoders, num_classes, settings)
        self.head = nn.Linear(encoders.feature_dim, num_classes)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        features = {
            "image": self.encoders.image(batch.image),
            "tabular": self.encoders.tabular(batch.tabular),
        }
        order = ("image", "tabular") if self.settings.order == "image_first" else ("tabular", "image")
        stats: dict[str, torch.Tensor] = {}
        logits = {}
        for current, other in (order, order[::-1]):
            logits[current], phase = self.phase(
                features[current], features[other].detach(), batch.label, self.fraction(other), optimizer
            )
            stats.update({f"{k}_{current}": v for k, v in phase.items()})
        stats["loss"] = (stats["loss_image"] + stats["loss_tabular"]) / 2
        stats["acc"] = accuracy((logits["image"] + logits["tabular"]) / 2, batch.label)
        return stats

    def fraction(self, modality: str) -> float:
        if not self.settings.ugg:
            return 1.0
        return self.settings.lambda_image if modality == "image" else self.settings.lambda_tabular

    def phase(
        self,
        u: torch.Tensor,
        u_other: torch.Tensor,
        labels: torch.Tensor,
        fraction: float,
        optimizer: torch.optim.Optimizer,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One modality's turn: encoder + head backward, head surgery, one optimiser step."""
        optimizer.zero_grad(set_to_none=True)
        logits = self.head(u)
        loss = cross_entropy(logits, labels)
        loss.backward()
        # data-parallel: the surgery must act on the global gradient (no-op in one process)
        self.comm.average_grads(p for p in self.parameters() if p.grad is not None)
        params = list(self.head.parameters())
        g = surgery.flatten(p.grad for p in params)
        g_p = self.guidance(u_other, labels, fraction)
        v = self.weight(g, g_p)
        if self.settings.cgs:
            for p, new in zip(params, surgery.unflatten(g + v * g_p, params)):
                p.grad.copy_(new)
        optimizer.step()
        stats = {
            "loss": loss.detach(),
            "grad_cos": surgery.cosine(g, g_p).detach(),
            "surgery": (v > 0).float() if self.settings.cgs else torch.zeros((), device=g.device),
        }
        return logits.detach(), stats

    def guidance(self, u_other: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
        """g_p: head gradient of the mean CE over the other modality's most uncertain samples."""
        logits = self.head(u_other)
        params = list(self.head.parameters())
        if self.comm.world_size == 1:
            rows = surgery.top_uncertain(logits.detach(), fraction)
            return surgery.flatten(torch.autograd.grad(cross_entropy(logits[rows], labels[rows]), params))
        # data-parallel: rank the global batch by entropy, sum each rank's share of the
        # selected samples' CE and divide by the global count, so g_p is the same as in one
        # process on the combined batch
        everyone = self.comm.all_gather(surgery.entropy(logits.detach()))
        k = surgery.n_selected(len(everyone), fraction)
        threshold = torch.topk(everyone, k).values[-1]
        rows = surgery.entropy(logits.detach()) >= threshold
        loss = nn.functional.cross_entropy(logits[rows].float(), labels[rows], reduction="sum") / k
        return self.comm.sum(surgery.flatten(torch.autograd.grad(loss, params)))

    def weight(self, g: torch.Tensor, g_p: torch.Tensor) -> torch.Tensor:
        if self.settings.projection == "gem":
            return surgery.gem_weight(g, g_p, self.settings.gem_margin)
        return surgery.projection_weight(g, g_p, self.settings.epsilon)

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        li = self.head(self.encoders.image(image)) if image is not None else None
        lt = self.head(self.encoders.tabular(tabular)) if tabular is not None else None
        return Predictions(fuse_missing(li, lt, lambda: (li + lt) / 2), li, lt)
