"""DAFT: Dynamic Affine Feature Map Transform (Pölsterl et al., MICCAI 2021; Table I, DAFT).

The table conditions the image network instead of being encoded separately. For the feature
map F (B x C x H x W) entering the conditioned block:

    z = GAP(F) ⊕ x_tab,   [a, b] = W_2 ReLU(W_1 z),   F' = a ⊙ F + b        (per channel)

with W_1: (C + n_tab) -> bottleneck, bottleneck = int((C + n_tab) / `bottleneck_factor`) (7.0,
the official default; at least 1 here), W_2: bottleneck -> 2C, both without bias, and the
scale taken as is (`scale_activation: linear`, the official default). x_tab is the raw table,
continuous values and one-hot categories, as DAFT feeds its tabular data; the tabular MLP
encoder is not part of the model and is frozen.

Where: DAFT's network is four residual blocks and the DAFT block is the last one, with the
transform applied to that block's input, before both the residual branch and the shortcut
(location 0, the official `--film_location` default). That block is also DAFT's last stage
(stride 2, downsampling shortcut). Here F is the input of the last stage of a timm backbone
(timm's `feature_info[-1]`, e.g. `layer4` of a ResNet), modulated by a forward pre-hook on
that stage: the same place relative to the stage, but in a ResNet50 that stage holds three
bottleneck blocks after the transform rather than DAFT's single block. After the backbone's
pooling and the encoder's projection, one linear head gives the logits (DAFT: GAP -> FC).

Predictions: DAFT fuses inside the network and has no unimodal heads, so `image` and
`tabular` are None (Table I leaves them empty), and `multi` needs both modalities.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms


class DaftSettings(MethodSettings):
    bottleneck_factor: float = Field(7.0, gt=0, description="bottleneck = (channels + table width) / factor")
    scale_activation: Literal["linear", "sigmoid", "tanh"] = Field(
        "linear", description="activation of the scale a (official default: linear)"
    )


class FeatureMapTransform(nn.Module):
    """The DAFT block's auxiliary net: (pooled map, table) -> per-channel scale and shift."""

    def __init__(self, channels: int, table_width: int, bottleneck_factor: float, scale_activation: str):
        super().__init__()
        bottleneck = max(1, int((channels + table_width) / bottleneck_factor))
        self.aux = nn.Sequential(
            nn.Linear(channels + table_width, bottleneck, bias=False),
            nn.ReLU(),
            nn.Linear(bottleneck, 2 * channels, bias=False),
        )
        self.activation = {"linear": nn.Identity(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[scale_activation]
        self.channels = channels
        self.table: torch.Tensor | None = None

    def scale_shift(self, feature_map: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a and b, each B x C x 1 x 1."""
        squeeze = torch.cat([feature_map.mean(dim=(2, 3)), table.to(feature_map.dtype)], dim=1)
        scale, shift = self.aux(squeeze).split(self.channels, dim=1)
        return self.activation(scale)[..., None, None], shift[..., None, None]

    def forward(self, feature_map: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(feature_map, table)
        return scale * feature_map + shift

    @contextmanager
    def conditioned_on(self, table: torch.Tensor):
        """Within this block, the hooked stage sees its input transformed by `table`."""
        self.table = table
        try:
            yield
        finally:
            self.table = None

    def hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.table is None:
            return None
        return (self(args[0], self.table), *args[1:])


def last_stage(backbone: nn.Module) -> tuple[nn.Module, int]:
    """The last stage of a timm backbone and the number of channels entering it."""
    info = getattr(backbone, "feature_info", None)
    if not info or len(info) < 2:
        raise GaalError(
            "daft needs a timm backbone that reports its stages (feature_info)", field="model.image_backbone"
        )
    return backbone.get_submodule(info[-1]["module"]), info[-2]["num_chs"]


@register_method("daft", settings=DaftSettings)
class Daft(Method):
    settings: DaftSettings

    def __init__(self, encoders, num_classes, settings: DaftSettings):
        super().__init__(encoders, num_classes, settings)
        encoders.tabular.mlp.requires_grad_(False)
        stage, channels = last_stage(encoders.image.backbone)
        table_width = sum(encoders.tabular.field_lengths)
        self.film = FeatureMapTransform(channels, table_width, settings.bottleneck_factor, settings.scale_activation)
        stage.register_forward_pre_hook(self.film.hook)
        self.head = nn.Linear(encoders.feature_dim, num_classes)

    def logits(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        with self.film.conditioned_on(self.encoders.tabular.one_hot(tabular)):
            return self.head(self.encoders.image(image))

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        logits = self.logits(batch.image, batch.tabular)
        loss = cross_entropy(logits, batch.label)
        loss.backward()
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        stats.update(encoder_grad_norms(self.encoders, ("image",)))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        if image is None or tabular is None:
            return Predictions(None, None, None)
        return Predictions(self.logits(image, tabular), None, None)
