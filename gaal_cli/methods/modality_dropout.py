"""Per-sample modality dropout over the non-empty modality combinations (DMRNet, MMANet).

Both papers' official codes (S. Wei et al.; `modality_drop` in MMANet-CVPR2023 and in
ECCV2024-DMRNet's audio-visual code) draw, for every training sample independently and
uniformly, one non-empty combination of the modalities and multiply the features of the
dropped modalities by zero (no rescaling of the kept ones). With two modalities the
combinations are image only, table only and both, each with probability 1/3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gaal_cli.methods.base import Predictions

#: the combinations, as (image kept, table kept); the index is the combination's id
COMBINATIONS = ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
IMAGE_ONLY, TABULAR_ONLY, BOTH = 0, 1, 2


def draw_combinations(n: int, device: torch.device) -> torch.Tensor:
    """Each of n samples' combination id, uniform over COMBINATIONS."""
    return torch.randint(len(COMBINATIONS), (n,), device=device)


def combination_masks(ids: torch.Tensor) -> torch.Tensor:
    """(n, 2) float masks (image, table) of the combination ids."""
    return torch.tensor(COMBINATIONS, device=ids.device)[ids]


def fused_features(u_image: torch.Tensor | None, u_tabular: torch.Tensor | None, masks: torch.Tensor | None):
    """[m_I u_I ; m_T u_T]: a missing modality (None) or a dropped one contributes zeros."""
    ref = u_image if u_image is not None else u_tabular
    u_image = torch.zeros_like(ref) if u_image is None else u_image
    u_tabular = torch.zeros_like(ref) if u_tabular is None else u_tabular
    if masks is not None:
        masks = masks.to(ref.dtype)
        u_image, u_tabular = u_image * masks[:, :1], u_tabular * masks[:, 1:]
    return torch.cat([u_image, u_tabular], dim=1)


def dropped_features(encoders, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch through modality dropout: its combination ids and fused features h."""
    ids = draw_combinations(len(batch.label), batch.label.device)
    u_image, u_tabular = encoders.image(batch.image), encoders.tabular(batch.tabular)
    return ids, fused_features(u_image, u_tabular, combination_masks(ids))


def combination_predictions(
    logits_of: Callable[[torch.Tensor], torch.Tensor], u_image: torch.Tensor | None, u_tabular: torch.Tensor | None
) -> Predictions:
    """Test-time predictions of a dropout-trained network, the absent modality zeroed: `multi` from
    the modalities present, `image` / `tabular` from that modality alone.

    Args:
        logits_of: the network's logits of fused features h.
    """
    li = logits_of(fused_features(u_image, None, None)) if u_image is not None else None
    lt = logits_of(fused_features(None, u_tabular, None)) if u_tabular is not None else None
    if u_image is None or u_tabular is None:
        return Predictions(li if lt is None else lt, li, lt)
    return Predictions(logits_of(fused_features(u_image, u_tabular, None)), li, lt)
