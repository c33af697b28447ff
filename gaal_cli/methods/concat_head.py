"""A linear head over concatenated features that also reads each modality alone (DGL, ARL).

The official DGL and ARL code (fusion modules `ConcatFusion_DGL` / `ConcatFusion_AUXI`)
obtain a modality's own logits by feeding the fusion head the concatenation with the other
modality's feature set to zero: W[:, m] u_m + b, with the whole bias (CF's `concat` splits
the bias in two instead; with one shared bias either choice leaves the argmax of the fused
logits unchanged, but not that of the unimodal ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConcatHead(nn.Linear):
    """Linear(2 d, C) on [u_I, u_T]; `unimodal` gives the zero-padded single-modality logits."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__(2 * feature_dim, num_classes)
        self.feature_dim = feature_dim

    def fused(self, u_image: torch.Tensor, u_tabular: torch.Tensor) -> torch.Tensor:
        return self(torch.cat([u_image, u_tabular], dim=1))

    def columns(self, modality: str) -> slice:
        d = self.feature_dim
        return slice(0, d) if modality == "image" else slice(d, 2 * d)

    def unimodal(self, u: torch.Tensor, modality: str, *, detach_head: bool = False) -> torch.Tensor:
        """W[:, m] u + b; with `detach_head` the head receives no gradient from these logits."""
        weight, bias = self.weight[:, self.columns(modality)], self.bias
        if detach_head:
            weight, bias = weight.detach(), bias.detach()
        return F.linear(u, weight, bias)
