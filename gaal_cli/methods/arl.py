"""ARL, Asymmetric Representation Learning (Wei et al., ICCV 2025; seeds/002, arXiv 2507.10203).

The paper's bias-variance analysis says the multimodal model is best when its dependence on
each modality is inversely proportional to that modality's prediction variance. ARL:

- adds each modality's prediction bias as an auxiliary loss through the shared head:
  L = L_fused + gamma * (L_I + L_T), L_m = CE(W[:, m] u_m + b, y) (no extra parameters);
- re-weights the optimisation of each encoder: the gradient reaching encoder m's output is
  scaled by (1 + w_m), with w_m proportional to 1 / variance_m and w_I + w_T = 1.

Variance estimate, as in the official code: the batch-mean entropy H_m of softmax(L_m's
logits), normalised over the two modalities (H_m / (H_I + H_T)) and floored at
`entropy_floor` (0.3 in the code) so one near-certain modality cannot take all the weight;
then w_m = (1 / H_m) / (1 / H_I + 1 / H_T). The weights are computed from the current batch,
detached, before the backward pass.

Warm-up, as in the official code: no scaling at all (w = 0, gradients x1) for the first
`warmup_epochs` = 6 epochs; the scaling starts at 1-based epoch 7, the official code's 0-based
epoch 6 (its `--start 5`: scaled once the epoch exceeds 5). Before this was read from the
official code, the warm-up here applied the symmetric x1.5 and lasted 5 epochs.

Known deviation of the public code, as an option: it computes the weights (further mixed
with the normalised mean |logit| of the other modality and sharpened by softmax(T = 8)) but
never applies them, so every encoder gradient is scaled by the symmetric 1 + 0.5 = 1.5
(`weights: code`). Default: the paper's rule (`weights: paper`).

Read-out: the fusion head's zero-padded slices (official `ConcatFusion_AUXI`). gamma = 1 and
the warm-up are the official code's defaults (the paper's values were not available here).
Logs w_image, w_tabular; with `grad_cosine: true`, per encoder, the cosine between the
gradients of its unimodal loss and of the fused loss.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from gaal_cli.data.base import Batch
from gaal_cli.methods import surgery
from gaal_cli.methods.base import (
    MODALITIES,
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    register_method,
)
from gaal_cli.methods.concat_head import ConcatHead
from gaal_cli.methods.diagnostics import encoder_cosines, encoder_grad_norms


class ArlSettings(MethodSettings):
    trace_settings: ClassVar[dict[str, Any]] = {"warmup_epochs": 1}

    gamma: float = Field(1.0, ge=0, description="weight of the unimodal (bias) losses")
    weights: Literal["paper", "code"] = Field(
        "paper", description="paper: w from 1/variance; code: the official code's fixed 0.5 (x1.5)"
    )
    entropy_floor: float = Field(0.3, ge=0, lt=0.5, description="floor of the normalised entropies")
    warmup_epochs: int = Field(6, ge=0, description="first epochs without any scaling (official: 0-based 0-5)")


class ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by `scale` (a 0-d tensor) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def arl_weights(logits_image: torch.Tensor, logits_tabular: torch.Tensor, floor: float) -> torch.Tensor:
    """(w_I, w_T) proportional to 1 / variance, the variance read as normalised mean entropy."""
    h = torch.stack([surgery.entropy(logits_image).mean(), surgery.entropy(logits_tabular).mean()])
    h = (h / h.sum().clamp_min(torch.finfo(h.dtype).tiny)).clamp_min(floor)
    inverse = 1 / h
    return inverse / inverse.sum()


@register_method("arl", settings=ArlSettings)
class Arl(Method):
    settings: ArlSettings

    def __init__(self, encoders, num_classes, settings: ArlSettings):
        super().__init__(encoders, num_classes, settings)
        self.head = ConcatHead(encoders.feature_dim, num_classes)
        self.epoch = 1

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def weights(self, u_image: torch.Tensor, u_tabular: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.epoch <= s.warmup_epochs:
            return torch.zeros(2, device=u_image.device)
        if s.weights == "code":
            return torch.full((2,), 0.5, device=u_image.device)
        with torch.no_grad():
            logits = (self.head.unimodal(u_image, "image"), self.head.unimodal(u_tabular, "tabular"))
            return arl_weights(*logits, s.entropy_floor)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        raw = {"image": self.encoders.image(batch.image), "tabular": self.encoders.tabular(batch.tabular)}
        w = self.weights(raw["image"], raw["tabular"])
        u = {m: ScaleGrad.apply(raw[m], 1 + w[i]) for i, m in enumerate(MODALITIES)}
        fused = self.head.fused(u["image"], u["tabular"])
        loss_fused = cross_entropy(fused, batch.label)
        unimodal = {m: cross_entropy(self.head.unimodal(u[m], m), batch.label) for m in MODALITIES}
        loss = loss_fused + self.settings.gamma * (unimodal["image"] + unimodal["tabular"])
        stats = {
            "loss": loss.detach(),
            "acc": accuracy(fused.detach(), batch.label),
            "loss_fused": loss_fused.detach(),
            "w_image": w[0],
            "w_tabular": w[1],
        }
        if self.settings.grad_cosine:
            stats.update(encoder_cosines(unimodal, loss_fused, self.encoders))
        loss.backward()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        return self.head.predictions(*self.encode(image, tabular))
