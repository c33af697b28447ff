"""OGM-GE: On-the-fly Gradient Modulation with Generalization Enhancement (Peng et al., CVPR 2022).

Concatenation fusion as in CF: one linear head on [u_I, u_T], trained with the fused
cross-entropy; per-modality logits are the head slices W[:, m] u_m + b/2. Per step:

    s_m   = Σ_i softmax(W[:, m] u_m,i + b/2)[y_i]          (discrepancy scores)
    ρ_I   = s_I / s_T,  ρ_T = 1 / ρ_I
    k_m   = 1 − tanh(α · ρ_m)  if ρ_m > 1, else 1          (eq. 10, as the official code cites it)
    g̃(θ_m) = k_m · g(θ_m) + h,  h ~ N(0, std(g(θ_m))²)    (GE; only with `ge`)

so only the dominant modality's encoder gradient is slowed; GE adds, to every modulated
tensor of both encoders (as the official update does), Gaussian noise with the standard
deviation of that tensor's gradient before scaling. Modulation and noise act only in epochs
`modulation_start`..`modulation_end` (inclusive); outside, the step is plain CF.

Defaults: the official README's "default modulation setting" (α = 0.1, an earlier revision
said 0.5; the code itself requires α on the command line; α is tuned per dataset), modulation
in epochs 0-50 counted from 0, i.e. 1-51 here. Official-code deviation, as an option:
`conv_only: true` modulates only 4-D (convolution kernel) gradients, as the official loop
does; on the tabular MLP that means no modulation at all. The paper states the rule for an
encoder's parameters θ_m as a whole, the default here.

Optimiser: the official code uses SGD (momentum 0.9). Adam (the engine's default) divides
each gradient by a running estimate of its own scale, which largely cancels a per-step factor
k; set `train.optimizer=sgd` to compare under the official optimiser.

Logs `coef_k_image`, `coef_k_tabular`, `rho` (= ρ_I), gradient norms after modulation and,
with `grad_cosine`, the per-encoder cosines of the slice and fused losses (as CF).
"""

from __future__ import annotations

import torch
from pydantic import Field

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import accuracy, cross_entropy, register_method
from gaal_cli.methods.concat import Concat, ConcatSettings
from gaal_cli.methods.diagnostics import encoder_cosines, encoder_grad_norms


class OgmGeSettings(ConcatSettings):
    alpha: float = Field(0.1, gt=0, description="modulation strength α of eq. 10")
    ge: bool = Field(True, description="generalization enhancement: Gaussian noise on modulated gradients")
    modulation_start: int = Field(1, ge=1, description="first epoch with modulation")
    modulation_end: int = Field(51, ge=1, description="last epoch with modulation")
    conv_only: bool = Field(False, description="official code: modulate 4-D conv kernels only (paper: all)")


def ogm_coefficients(
    logits_image: torch.Tensor, logits_tabular: torch.Tensor, labels: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k_I, k_T, ρ_I) from the per-modality logits; 0-d tensors, no host sync."""
    score_i = torch.softmax(logits_image.float(), -1).gather(1, labels[:, None]).sum()
    score_t = torch.softmax(logits_tabular.float(), -1).gather(1, labels[:, None]).sum()
    rho = score_i / score_t
    one = torch.ones_like(rho)
    k_i = torch.where(rho > 1, 1 - torch.tanh(alpha * rho), one)
    k_t = torch.where(1 / rho > 1, 1 - torch.tanh(alpha / rho), one)
    return k_i, k_t, rho


def modulate(params, k: torch.Tensor, noise: bool, conv_only: bool) -> None:
    """g ← k g (+ N(0, std(g)²)) in place, for every parameter with a gradient."""
    for p in params:
        if p.grad is None or (conv_only and p.grad.dim() != 4):
            continue
        g = p.grad
        std = g.std() if g.numel() > 1 else torch.zeros((), device=g.device)
        g.mul_(k)
        if noise:
            g.add_(torch.randn_like(g) * (std + 1e-8))


@register_method("ogm_ge", settings=OgmGeSettings)
class OgmGe(Concat):
    settings: OgmGeSettings

    def __init__(self, encoders, num_classes, settings: OgmGeSettings):
        super().__init__(encoders, num_classes, settings)
        self.epoch = 1

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        s = self.settings
        optimizer.zero_grad(set_to_none=True)
        u = {"image": self.encoders.image(batch.image), "tabular": self.encoders.tabular(batch.tabular)}
        logits = self.head(torch.cat([u["image"], u["tabular"]], dim=1))
        loss = cross_entropy(logits, batch.label)
        sliced = {m: self.slice_logits(u[m], m) for m in u}
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        if s.grad_cosine:
            unimodal = {m: cross_entropy(sliced[m], batch.label) for m in u}
            stats.update(encoder_cosines(unimodal, loss, self.encoders))
        loss.backward()
        k_i, k_t, rho = ogm_coefficients(sliced["image"].detach(), sliced["tabular"].detach(), batch.label, s.alpha)
        active = s.modulation_start <= self.epoch <= s.modulation_end
        if active:
            modulate(self.encoders.image.parameters(), k_i, s.ge, s.conv_only)
            modulate(self.encoders.tabular.parameters(), k_t, s.ge, s.conv_only)
        stats.update(encoder_grad_norms(self.encoders))
        one = torch.ones_like(k_i)
        stats.update({"coef_k_image": k_i if active else one, "coef_k_tabular": k_t if active else one, "rho": rho})
        optimizer.step()
        return stats
