"""Pure tensor functions for GAAL's cross-modal gradient surgery (paper §III-B/C).

Everything here works on flat gradients of the shared classifier and stays on the input's
device and dtype: no host round trip, no solver per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F


def flatten(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate gradients into one flat vector (the order of `grads` is kept)."""
    return torch.cat([g.reshape(-1) for g in grads])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector back into tensors shaped like `like`."""
    sizes = [t.numel() for t in like]
    return [part.view_as(t) for part, t in zip(torch.split(flat, sizes), like)]


def projection_weight(g: torch.Tensor, g_p: torch.Tensor, eps: float) -> torch.Tensor:
    """Dual variable of eq. 5: v = max(0, (eps - g_p.g) / ||g_p||^2), and 0 when g_p = 0.

    Returns a 0-d tensor (no synchronisation with the host).
    """
    dot = torch.dot(g_p, g)
    sq_norm = torch.dot(g_p, g_p)
    tiny = torch.finfo(g.dtype).tiny
    v = ((eps - dot) / sq_norm.clamp_min(tiny)).clamp_min(0)
    return torch.where(sq_norm > 0, v, torch.zeros_like(v))


def align(g: torch.Tensor, g_p: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Closed-form solution of min ||g~ - g||^2 / 2 s.t. g_p.g~ >= eps (paper eq. 4-5).

    Args:
        g: flat gradient of the current modality on the shared head.
        g_p: flat guidance gradient of the other modality's hard samples.
        eps: alignment margin.

    Returns:
        g~ = g + v g_p; equals g when g_p.g >= eps already or when g_p is zero.
    """
    return g + projection_weight(g, g_p, eps) * g_p


def gem_weight(g: torch.Tensor, g_p: torch.Tensor, margin: float = 0.75, qp_eps: float = 1e-3) -> torch.Tensor:
    """Dual variable of the official code's projection: GEM's dual QP with one constraint.

    The official code solves min_v v^2 (||g_p||^2 + qp_eps) / 2 + v g_p.g s.t. v >= margin
    with quadprog, only when g_p.g < 0. With a single constraint that QP has the closed form
    v = max(margin, -g_p.g / (||g_p||^2 + qp_eps)), computed here on the device.
    """
    dot = torch.dot(g_p, g)
    v = torch.clamp_min(-dot / (torch.dot(g_p, g_p) + qp_eps), margin)
    return torch.where(dot < 0, v, torch.zeros_like(v))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of softmax(logits) (eq. 6), computed stably from log-probabilities."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def n_selected(batch_size: int, fraction: float, rounding: str = "ceil") -> int:
    """How many samples top-lambda keeps, at least one.

    Args:
        rounding: 'ceil' reads eq. 7's top-lambda fraction as ceil(fraction * B) (the paper);
            'floor' is the official code's int(fraction * B), float product truncated as is.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if rounding == "floor":
        return max(1, int(fraction * batch_size))
    if rounding != "ceil":
        raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")
    return max(1, math.ceil(round(fraction * batch_size, 6)))


def top_uncertain(logits: torch.Tensor, fraction: float, rounding: str = "ceil") -> torch.Tensor:
    """Indices of the n_selected(B, fraction, rounding) samples with the highest entropy (eq. 7)."""
    return torch.topk(entropy(logits), n_selected(len(logits), fraction, rounding)).indices


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two flat vectors (eq. 2); 0 when either is zero."""
    # clamped: float32 rounding can put parallel vectors a hair above 1
    return F.cosine_similarity(a.float(), b.float(), dim=0, eps=1e-12).clamp(-1.0, 1.0)
