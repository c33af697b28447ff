"""Unimodal baselines: Table I's ResNet50 (`image`) and MLP (`tabular`) rows.

One encoder and its own linear head, trained with cross-entropy on its modality alone. The
other encoder is frozen (it is not part of the model: no optimiser state, no gradient). The
prediction is that head, reported both as `multi` and under its own modality, so the table
shows it in the column of the modality it uses; the other column stays empty (None).
"""

from __future__ import annotations

import torch
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms


class UnimodalSettings(MethodSettings):
    pass


class Unimodal(Method):
    """Base of the two unimodal methods; `modality` names the encoder it trains."""

    modality: str

    def __init__(self, encoders, num_classes, settings: UnimodalSettings):
        super().__init__(encoders, num_classes, settings)
        other = "tabular" if self.modality == "image" else "image"
        getattr(encoders, other).requires_grad_(False)
        self.head = nn.Linear(encoders.feature_dim, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(getattr(self.encoders, self.modality)(x))

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        logits = self.logits(getattr(batch, self.modality))
        loss = cross_entropy(logits, batch.label)
        loss.backward()
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        stats.update(encoder_grad_norms(self.encoders, self.modalities))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        x = image if self.modality == "image" else tabular
        logits = self.logits(x) if x is not None else None
        own = {"image": None, "tabular": None, self.modality: logits}
        return Predictions(logits, own["image"], own["tabular"])


@register_method("image", settings=UnimodalSettings)
class ImageOnly(Unimodal):
    modality = "image"
    modalities = ("image",)


@register_method("tabular", settings=UnimodalSettings)
class TabularOnly(Unimodal):
    modality = "tabular"
    modalities = ("tabular",)
