"""A linear head over concatenated features that also reads each modality alone.

CF (`concat`, `ogm_ge`) reads modality m as W[:, m] u_m + b/2 (REFERENCE §3), so the two
unimodal logits add up to the fused ones. The official DGL and ARL code (fusion modules
`ConcatFusion_DGL` / `ConcatFusion_AUXI`) feed the fusion head the concatenation with the
other modality's feature set to zero instead: W[:, m] u_m + b, the whole bias. Either choice
leaves the fused logits unchanged, but not the argmax of the unimodal ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaal_cli.methods.base import Predictions, fuse_missing


class ConcatHead(nn.Linear):
    """Linear(2 d, C) on [u_I, u_T]; `unimodal` gives the zero-padded single-modality logits."""

    def __init__(self, feature_dim: int, num_classes: int, *, split_bias: bool = False):
        super().__init__(2 * feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.split_bias = split_bias

    def fused(self, u_image: torch.Tensor, u_tabular: torch.Tensor) -> torch.Tensor:
        return self(torch.cat([u_image, u_tabular], dim=1))

    def columns(self, modality: str) -> slice:
        d = self.feature_dim
        return slice(0, d) if modality == "image" else slice(d, 2 * d)

    def predictions(self, u_image: torch.Tensor | None, u_tabular: torch.Tensor | None) -> Predictions:
        """Fused and per-modality logits; with one feature missing the fused head is its own."""
        li = self.unimodal(u_image, "image") if u_image is not None else None
        lt = self.unimodal(u_tabular, "tabular") if u_tabular is not None else None
        return Predictions(fuse_missing(li, lt, lambda: self.fused(u_image, u_tabular)), li, lt)

    def unimodal(self, u: torch.Tensor, modality: str, *, detach_head: bool = False) -> torch.Tensor:
        """W[:, m] u + b (b/2 with `split_bias`); with `detach_head` the head gets no gradient."""
        weight, bias = self.weight[:, self.columns(modality)], self.bias
        if self.split_bias:
            bias = bias / 2
        if detach_head:
            weight, bias = weight.detach(), bias.detach()
        return F.linear(u, weight, bias)
