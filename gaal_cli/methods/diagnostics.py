"""Gradient diagnostics shared by the methods: cosines and norms per encoder.

Fig. 1a of the GAAL paper is the histogram of cos(grad of the image encoder under the image
loss, grad under the multimodal loss) during joint training. These helpers compute such
quantities with `torch.autograd.grad`, leaving `.grad` untouched; each call costs one extra
backward pass per loss, so methods only call them when `settings.grad_cosine` is on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gaal_cli.methods import surgery


def loss_grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flat gradient of `loss` w.r.t. `params` (zeros where a parameter is unused)."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return surgery.flatten(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))


def grad_cosine(loss_a: torch.Tensor, loss_b: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine between the gradients of two losses w.r.t. the same parameters."""
    return surgery.cosine(loss_grad(loss_a, params), loss_grad(loss_b, params)).detach()


def grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the current `.grad` of `params` (0 when none has a gradient)."""
    grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.cat(grads).float())


def encoder_params(encoders, modality: str) -> list[torch.Tensor]:
    """The trainable parameters of one encoder ('image' or 'tabular')."""
    return [p for p in getattr(encoders, modality).parameters() if p.requires_grad]


def encoder_grad_norms(encoders, modalities: Sequence[str] = ("image", "tabular")) -> dict[str, torch.Tensor]:
    """`gnorm_<modality>`: norm of each encoder's current `.grad` (cheap, logged every step)."""
    return {f"gnorm_{m}": grad_norm(list(getattr(encoders, m).parameters())) for m in modalities}


def encoder_cosines(unimodal: dict[str, torch.Tensor], fused: torch.Tensor, encoders) -> dict[str, torch.Tensor]:
    """`cos_<modality>`: per encoder, cosine between its unimodal-loss and fused-loss gradients.

    Args:
        unimodal: modality -> that modality's own loss (a head slice or its own head).
        fused: the multimodal loss.
    """
    return {f"cos_{m}": grad_cosine(loss, fused, encoder_params(encoders, m)) for m, loss in unimodal.items()}
