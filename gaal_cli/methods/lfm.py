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

alpha adaptation, in the official code's direction: the CE weight starts low and rises
(REFERENCE §3: about 0.20 at epoch 0, 0.30 at 20, 0.54 at 100, 0-based).

- `schedule: heuristic` (default): alpha_0(e) = 1 - (1 - alpha_start) * h / (e + h), e the
  0-based epoch, i.e. the matching weight 1 - alpha_0 halves every `matching_half_life` = h
  epochs from where it starts. With alpha_start = 0.2 and h = 140 this gives 0.200 / 0.300 /
  0.533 at epochs 0 / 20 / 100, the curve through the official code's values as REFERENCE
  records them; the official code's own formula was not available here, so this is a fit of
  the three points, not a copy of it.
- `schedule: learnable`: the paper's learning-based strategy as a one-step, first-order
  bi-level update (this project's reading; the official update was not available here):
  alpha = softmax(beta), beta starting at CE 0.05 / matching 0.95 as in the official code.
  Each step takes the gradients of both terms, steps the model with their alpha-weighted sum,
  and moves beta to lower the CE after that step; to first order d CE(theta') / d alpha_k is
  proportional to -<g_CE, g_k>, taken here scale-free as the cosine (so the CE weight's own
  score is 1 and the matching term's is cos(g_CE, g_match)); beta += alpha_lr * dalpha. Costs
  one extra backward pass per step.

Logs alpha (the CE weight), the two loss terms and, with `grad_cosine: true`, per encoder the
cosine between the gradient of its unimodal CE and that of L.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods import surgery
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

#: the CE weight each schedule starts from in the official code
OFFICIAL_START = {"heuristic": 0.2, "learnable": 0.05}


class LfmSettings(MethodSettings):
    schedule: Literal["heuristic", "learnable"] = Field(
        "heuristic", description="heuristic: a rising CE weight; learnable: learnt by a first-order bi-level step"
    )
    alpha_start: float | None = Field(
        None, gt=0, lt=1, description="CE weight at the first epoch; None: the official 0.2 (heuristic) / 0.05"
    )
    matching_half_life: float = Field(
        140.0, gt=0, description="heuristic: epochs over which the matching weight halves (0.2 -> 0.54 by 100)"
    )
    alpha_lr: float = Field(0.01, ge=0, description="learnable: step size of the CE/matching logits per batch")

    def start(self) -> float:
        return self.alpha_start if self.alpha_start is not None else OFFICIAL_START[self.schedule]


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Batch mean of JS(softmax(a), softmax(b)) = (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2."""
    log_p = F.log_softmax(logits_a.float(), dim=-1)
    log_q = F.log_softmax(logits_b.float(), dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return ((kl_pm + kl_qm) / 2).mean()


def alpha_schedule(epoch: int, start: float, half_life: float) -> float:
    """CE weight of 1-based `epoch`: 1 - (1 - start) * h / (e + h), e = epoch - 1 (rises from `start`)."""
    e = max(epoch - 1, 0)
    return 1 - (1 - start) * half_life / (e + half_life)


def learnable_update(alpha: torch.Tensor, score: torch.Tensor, lr: float) -> torch.Tensor:
    """Change of the logits beta for scores s_k (d alpha_k/d beta_j through the softmax)."""
    return lr * alpha * (score - (alpha * score).sum())


def loss_grads(loss: torch.Tensor, params: list[torch.Tensor], retain: bool) -> list[torch.Tensor]:
    """Gradient of `loss` per parameter (zeros where unused)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def lfm_loss(
    logits_image: torch.Tensor, logits_tabular: torch.Tensor, labels: torch.Tensor, alpha: float | torch.Tensor
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
        start = settings.start()
        # the learnable weights' logits (CE, matching); a buffer: learnt by its own rule, saved
        self.register_buffer("beta", torch.tensor([start, 1 - start]).log())
        self.alpha = start

    def on_epoch_start(self, epoch: int) -> None:
        s = self.settings
        if s.schedule == "heuristic":
            self.alpha = alpha_schedule(epoch, s.start(), s.matching_half_life)

    def weights(self) -> torch.Tensor:
        """(CE weight, matching weight) for this step."""
        if self.settings.schedule == "learnable":
            return torch.softmax(self.beta, 0)
        return torch.tensor([self.alpha, 1 - self.alpha], device=self.beta.device)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        logits = {
            "image": self.heads["image"](self.encoders.image(batch.image)),
            "tabular": self.heads["tabular"](self.encoders.tabular(batch.tabular)),
        }
        w = self.weights()
        loss, ce, js = lfm_loss(logits["image"], logits["tabular"], batch.label, w[0])
        fused = (logits["image"] + logits["tabular"]).detach() / 2
        stats = {
            "loss": loss.detach(),
            "acc": accuracy(fused, batch.label),
            "ce": ce.detach(),
            "js": js.detach(),
            "alpha": w[0].detach().clone(),
        }
        if self.settings.grad_cosine:
            unimodal = {m: cross_entropy(logits[m], batch.label) for m in MODALITIES}
            stats.update(encoder_cosines(unimodal, loss, self.encoders))
        if self.settings.schedule == "learnable":
            stats["cos_ce_match"] = self.learnable_backward(ce, js, w)
        else:
            loss.backward()
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def learnable_backward(self, ce: torch.Tensor, js: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Set .grad to w_CE g_CE + w_match g_match and move beta (module docstring). Returns the cosine."""
        params = [p for p in self.parameters() if p.requires_grad]
        g_ce = loss_grads(ce, params, retain=True)
        g_js = loss_grads(js, params, retain=False)
        for p, a, b in zip(params, g_ce, g_js):
            p.grad = w[0] * a + w[1] * b
        cos = surgery.cosine(surgery.flatten(g_ce), surgery.flatten(g_js)).detach()
        score = torch.stack([torch.ones_like(cos), cos]).to(w.dtype)
        with torch.no_grad():
            self.beta += learnable_update(w, score, self.settings.alpha_lr)
        return cos

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        li = self.heads["image"](self.encoders.image(image)) if image is not None else None
        lt = self.heads["tabular"](self.encoders.tabular(tabular)) if tabular is not None else None
        return Predictions(fuse_missing(li, lt, lambda: (li + lt) / 2), li, lt)
