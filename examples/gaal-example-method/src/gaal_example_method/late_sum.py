"""`late_sum`: late fusion by a weighted sum of two unimodal heads' logits.

Each encoder gets its own linear head, trained with the cross-entropy of its modality alone
(loss = CE(z_I) + CE(z_T)), so neither modality's gradient reaches the other encoder and the
stronger modality cannot starve the weaker one as it does in joint training. The fused
prediction is the weighted sum z = w z_I + (1 - w) z_T with w = `image_weight`; with one
modality missing at test time it is the present modality's head alone.

This is the whole of a method: a settings model (the `methods.late_sum` block of an experiment
file, checked strictly when the file is loaded), a `Method` subclass with `train_step` and
`predict`, and `register_method`, which runs when gaal imports this module through the
package's `gaal.methods` entry point. The engine does the rest (optimiser, epochs, evaluation,
checkpoints, resuming, run health); a method that keeps state outside its parameters would also
implement `resume_state` / `load_resume_state`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

# gaal's public interface for methods: everything a method module needs (cross_entropy honours
# train.class_weights; fuse_missing falls back to the present modality's head)
from gaal_cli.methods import (
    Batch,
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    fuse_missing,
    register_method,
)


class LateSumSettings(MethodSettings):
    image_weight: float = Field(0.5, ge=0.0, le=1.0, description="w: fused logits = w z_image + (1 - w) z_tabular")


@register_method("late_sum", settings=LateSumSettings)
class LateSum(Method):
    def __init__(self, encoders, num_classes: int, settings: LateSumSettings):
        super().__init__(encoders, num_classes, settings)
        self.image_head = nn.Linear(encoders.feature_dim, num_classes)
        self.tabular_head = nn.Linear(encoders.feature_dim, num_classes)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        z_i = self.image_head(self.encoders.image(batch.image))
        z_t = self.tabular_head(self.encoders.tabular(batch.tabular))
        loss_image = cross_entropy(z_i, batch.label)
        loss_tabular = cross_entropy(z_t, batch.label)
        loss = loss_image + loss_tabular
        loss.backward()
        optimizer.step()
        fused = self.fuse(z_i.detach(), z_t.detach())
        return {
            "loss": loss.detach(),
            "loss_image": loss_image.detach(),
            "loss_tabular": loss_tabular.detach(),
            "acc": accuracy(fused, batch.label),
        }

    def fuse(self, z_image: torch.Tensor, z_tabular: torch.Tensor) -> torch.Tensor:
        w = self.settings.image_weight
        return w * z_image + (1 - w) * z_tabular

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        u_i, u_t = self.encode(image, tabular)
        z_i = self.image_head(u_i) if u_i is not None else None
        z_t = self.tabular_head(u_t) if u_t is not None else None
        return Predictions(fuse_missing(z_i, z_t, lambda: self.fuse(z_i, z_t)), z_i, z_t)
