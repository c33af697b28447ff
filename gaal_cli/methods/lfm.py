"""LFM, dynamically learning the modality gap (Yang, Wan, Jiang, Xu, NeurIPS 2024).

The paper traces modality imbalance to how hard each modality finds it to fit the labels, and
mixes a supervised loss with an unsupervised cross-modal matching loss whose weight changes
during training. In the form given in REFERENCE §3:

    L = alpha_0 * CE((o_I + o_T) / 2, y) + alpha_1 * JS(p_I, p_T),   alpha_1 = 1 - alpha_0,

with o_m the logits of modality m's own linear head, p_m = softmax(o_m) and JS the
Jensen-Shannon divergence (natural log, batch mean). The paper's abstract calls its matching
term unsupervised contrastive learning; the JS form between the two predictions is the one
REFERENCE §3 records for the official code, and is what is implemented. Image-only and tabular-only accuracy
are o_I and o_T; the fused prediction is (o_I + o_T) / 2.

alpha adaptation: the paper's heuristic strategy lowers the weight of label fitting with a
monotonically decreasing function of the epoch (its learning-based variant solves a
bi-level problem instead and is not implemented here). Neither the paper's exact function
nor its official code were available while writing this, so the schedule is explicit and
configurable: alpha_0 falls linearly from `alpha_start` at epoch 1 to `alpha_end` at epoch
`decay_epochs` and stays there. The defaults are this project's choice, not the paper's.

Logs alpha (the CE weight), the two loss terms and, with `grad_cosine: true`, per encoder the
cosine between the gradient of its unimodal CE and that of L.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import (
    MODALITIES,
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    fuse_missing,
    register_method,
)
from gaal_cli.methods.diagnostics import encoder_cosines, encoder_grad_norms


class LfmSettings(MethodSettings):
    alpha_start: float = Field(1.0, ge=0, le=1, description="weight of the supervised loss at epoch 1")
    alpha_end: float = Field(0.5, ge=0, le=1, description="weight of the supervised loss after the decay")
    decay_epochs: int = Field(8, ge=1, description="epoch at which alpha reaches alpha_end")

    @model_validator(mode="after")
    def _decreasing(self):
        if self.alpha_end > self.alpha_start:
            raise ValueError("the heuristic schedule decreases: alpha_end must not exceed alpha_start")
        return self


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Batch mean of JS(softmax(a), softmax(b)) = (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2."""
    log_p = F.log_softmax(logits_a.float(), dim=-1)
    log_q = F.log_softmax(logits_b.float(), dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return ((kl_pm + kl_qm) / 2).mean()


def alpha_schedule(epoch: int, start: float, end: float, decay_epochs: int) -> float:
    """Linear decrease from `start` (epoch 1) to `end` (epoch `decay_epochs`), then constant."""
    if decay_epochs == 1:
        return end
    progress = min(max(epoch - 1, 0) / (decay_epochs - 1), 1.0)
    return start + (end - start) * progress


def lfm_loss(
    logits_image: torch.Tensor, logits_tabular: torch.Tensor, labels: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, CE of the averaged logits, JS of the two predictions)."""
    ce = cross_entropy((logits_image + logits_tabular) / 2, labels)
    js = js_divergence(logits_image, logits_tabular)
    return alpha * ce + (1 - alpha) * js, ce, js


@register_method("lfm", settings=LfmSettings)
class Lfm(Method):
    settings: LfmSettings

    def __init__(self, encoders, num_classes, settings: LfmSettings):
        super().__init__(encoders, num_classes, settings)
        self.heads = nn.ModuleDict({m: nn.Linear(encoders.feature_dim, num_classes) for m in MODALITIES})
        self.alpha = settings.alpha_start

    def on_epoch_start(self, epoch: int) -> None:
        s = self.settings
        self.alpha = alpha_schedule(epoch, s.alpha_start, s.alpha_end, s.decay_epochs)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        logits = {
            "image": self.heads["image"](self.encoders.image(batch.image)),
            "tabular": self.heads["tabular"](self.encoders.tabular(batch.tabular)),
        }
        loss, ce, js = lfm_loss(logits["image"], logits["tabular"], batch.label, self.alpha)
        fused = (logits["image"] + logits["tabular"]).detach() / 2
        stats = {
            "loss": loss.detach(),
            "acc": accuracy(fused, batch.label),
            "ce": ce.detach(),
            "js": js.detach(),
            "alpha": torch.tensor(self.alpha),
        }
        if self.settings.grad_cosine:
            unimodal = {m: cross_entropy(logits[m], batch.label) for m in MODALITIES}
            stats.update(encoder_cosines(unimodal, loss, self.encoders))
        loss.backward()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        li = self.heads["image"](self.encoders.image(image)) if image is not None else None
        lt = self.heads["tabular"](self.encoders.tabular(tabular)) if tabular is not None else None
        return Predictions(fuse_missing(li, lt, lambda: (li + lt) / 2), li, lt)
