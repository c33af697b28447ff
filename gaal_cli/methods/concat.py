"""CF, concatenation fusion: the joint-training baseline GAAL argues against (Table I, CF).

Features of both encoders are concatenated and one linear head is trained with the fused
cross-entropy. Image-only and tabular-only logits are the head's slices,
W[:, image] u_I + b/2 and W[:, tabular] u_T + b/2 (REFERENCE §3), which is how the paper
reads the collapsed image branch of joint training (DVM image accuracy 0.0058).

With `grad_cosine: true` each step logs, per encoder, the cosine between the gradient of its
unimodal slice loss and that of the fused loss (`cos_image`, `cos_tabular`): Fig. 1a.
"""

from __future__ import annotations

import torch

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import (
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    register_method,
)
from gaal_cli.methods.concat_head import ConcatHead
from gaal_cli.methods.diagnostics import encoder_cosines, encoder_grad_norms


class ConcatSettings(MethodSettings):
    pass


@register_method("concat", settings=ConcatSettings)
class Concat(Method):
    def __init__(self, encoders, num_classes, settings: ConcatSettings):
        super().__init__(encoders, num_classes, settings)
        self.head = ConcatHead(encoders.feature_dim, num_classes, split_bias=True)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        u_i = self.encoders.image(batch.image)
        u_t = self.encoders.tabular(batch.tabular)
        logits = self.head.fused(u_i, u_t)
        loss = cross_entropy(logits, batch.label)
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        if self.settings.grad_cosine:
            unimodal = {
                m: cross_entropy(self.slice_logits(u, m), batch.label) for m, u in (("image", u_i), ("tabular", u_t))
            }
            stats.update(encoder_cosines(unimodal, loss, self.encoders))
        loss.backward()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def slice_logits(self, u: torch.Tensor, modality: str) -> torch.Tensor:
        return self.head.unimodal(u, modality)

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        return self.head.predictions(*self.encode(image, tabular))
