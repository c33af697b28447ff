"""DGL, Disentangled Gradient Learning (Wei et al., ICCV 2025; seeds/002, arXiv 2507.10213).

The paper shows that fusion shrinks the gradient each encoder receives, and decouples the
two optimisation problems:

- encoders receive ONLY alpha * grad(L_I + L_T), from each modality's unimodal logits of the
  shared fusion head (L_m = CE(W[:, m] u_m + b, y)); the fused loss is cut off from them;
- the fusion head receives ONLY grad L_fused, computed on detached features; the unimodal
  losses do not reach it.

Both routes come from one backward pass of L_fused(head, sg(u)) + alpha * sum_m L_m(sg(head), u)
(sg = stop-gradient), which gives exactly the two gradients above. The official code gets the
same result with two backward passes and by setting the head's gradient to None in between.

Head and read-out follow the official concatenation variant (`ConcatFusion_DGL`): one
Linear(2d, C); image-only and tabular-only accuracy are the head's zero-padded slices, which
is also what the paper reports as unimodal accuracy. alpha = 4 is the official code's default
(REFERENCE §3). Known deviation of the public code, as an option: it clips the global
gradient norm at 40 (`clip_norm: 40`); the paper does not, so the default is no clipping.

With `grad_cosine: true` each step logs, per encoder, the cosine between the gradient of its
unimodal loss and the gradient the fused loss WOULD send it without the stop-gradient (the
conflict DGL removes; Fig. 1a's quantity).
"""

from __future__ import annotations

import torch
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
from gaal_cli.methods.concat_head import ConcatHead
from gaal_cli.methods.diagnostics import encoder_cosines, encoder_grad_norms, grad_norm


class DglSettings(MethodSettings):
    alpha: float = Field(4.0, gt=0, description="scale of the unimodal gradient sent to the encoders")
    clip_norm: float | None = Field(
        None, gt=0, description="clip the global gradient norm (official code: 40; paper: none)"
    )


def dgl_loss(
    head: ConcatHead, u_image: torch.Tensor, u_tabular: torch.Tensor, labels: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss whose gradient routes as DGL prescribes, and its parts (fused logits included).

    grad w.r.t. the head = grad L_fused; grad w.r.t. u_m = alpha * grad L_m.
    """
    fused = head.fused(u_image.detach(), u_tabular.detach())
    parts = {"fused": cross_entropy(fused, labels)}
    for modality, u in zip(MODALITIES, (u_image, u_tabular)):
        parts[modality] = cross_entropy(head.unimodal(u, modality, detach_head=True), labels)
    total = parts["fused"] + alpha * (parts["image"] + parts["tabular"])
    return total, {**parts, "logits": fused}


@register_method("dgl", settings=DglSettings)
class Dgl(Method):
    settings: DglSettings

    def __init__(self, encoders, num_classes, settings: DglSettings):
        super().__init__(encoders, num_classes, settings)
        self.head = ConcatHead(encoders.feature_dim, num_classes)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        u = {"image": self.encoders.image(batch.image), "tabular": self.encoders.tabular(batch.tabular)}
        total, parts = dgl_loss(self.head, u["image"], u["tabular"], batch.label, self.settings.alpha)
        stats = {
            "loss": parts["fused"].detach(),
            "acc": accuracy(parts["logits"].detach(), batch.label),
            "loss_image": parts["image"].detach(),
            "loss_tabular": parts["tabular"].detach(),
        }
        if self.settings.grad_cosine:
            coupled = cross_entropy(self.head.fused(u["image"], u["tabular"]), batch.label)
            unimodal = {m: parts[m] for m in MODALITIES}
            stats.update(encoder_cosines(unimodal, coupled, self.encoders))
        total.backward()
        if self.settings.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), self.settings.clip_norm)
        stats.update(encoder_grad_norms(self.encoders))
        stats["gnorm_head"] = grad_norm(list(self.head.parameters()))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        return self.head.predictions(*self.encode(image, tabular))
