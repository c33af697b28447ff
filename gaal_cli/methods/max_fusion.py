"""MF, max fusion (Table I, MF): element-wise maximum of the two features, one linear head.

Both encoders already end in a projection to the common width `feature_dim`, so
u = max(u_I, u_T) element-wise and logits = W u + b, trained with the fused cross-entropy.
Table I reports no image-only or tabular-only accuracy for MF and the method defines no
unimodal head (the head applied to one feature alone is not how max fusion is trained), so
`image` and `tabular` are None. With one modality missing at test time, the maximum over the
single present feature is that feature, so `multi` is the head applied to it.
"""

from __future__ import annotations

import torch
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms


class MaxSettings(MethodSettings):
    pass


@register_method("max", settings=MaxSettings)
class MaxFusion(Method):
    def __init__(self, encoders, num_classes, settings: MaxSettings):
        super().__init__(encoders, num_classes, settings)
        self.head = nn.Linear(encoders.feature_dim, num_classes)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        u = torch.maximum(self.encoders.image(batch.image), self.encoders.tabular(batch.tabular))
        logits = self.head(u)
        loss = cross_entropy(logits, batch.label)
        loss.backward()
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        features = []
        if image is not None:
            features.append(self.encoders.image(image))
        if tabular is not None:
            features.append(self.encoders.tabular(tabular))
        if not features:
            return Predictions(None, None, None)
        u = features[0] if len(features) == 1 else torch.maximum(*features)
        return Predictions(self.head(u), None, None)
