"""IGM, interactive multimodal learning via flat gradient modification (Jiang, Chi, Yang, IJCAI 2025).

seeds/003, §3 and Algorithm 1. Late fusion: each modality m has its encoder and its own head
FC(d, 256) - ReLU - FC(256, 64) - FC(64, C) (§4.2). Training alternates stages, one modality
per stage (`first` first), `stages` of them, their lengths cycling through `stage_epochs`.

Stages (gaal_cli/methods/stages.py), as the official code (configs/crema.json, train_CREMA.py): 12
stages of 25, 50, 25, 50, ... epochs, each with a fresh SGD (lr 1e-2, momentum 0.9, weight
decay 1e-4) and its own StepLR(40, 0.1) (`stage_optimizer`; null: the run's train.*). A stage's
optimiser holds its modality's encoder and head. Every epoch is a candidate for the best
checkpoint, as in the official code. Departures: the official code starts every stage from
the best checkpoint so far (chosen on the test split) and steps its StepLR before each epoch
(so it decays after 39 epochs, here after 40); here a stage continues from the last weights.
`stages: null` trains as many stages as fit train.epochs (at least 2 when the run has 2 epochs); stages that do not fit
are shrunk in proportion by the engine.

- Flat gradient modification (eq. 2-5). After a stage on modality k, for every Linear layer
  of k's head, the uncentred covariance of its batch-mean inputs is accumulated over the
  training set, Y = sum_t z_t z_t^T (eq. 2, z_t the mean input of batch t); its SVD
  Y = U diag(lambda) V^T gives T_k = V diag(exp(-tau (lambda - lambda_min) /
  (lambda_max - lambda_min))) V^T (eq. 4): directions in which k's inputs vary a lot, sharp
  for k, get a smaller step. While modality l trains, the gradient of each of l's head
  Linear weights is right-multiplied by T_k of the layer in the same position (eq. 5, 9).
  T starts as the identity. Y is symmetric PSD, so its SVD is computed as an eigh.
- SAM (eq. 6-8) on the head: eps = rho g / ||g|| from the head gradient g of the current
  loss, the update uses the gradient of the loss at head + eps (the encoder's gradient is
  taken through the perturbed head, as in the official code where the encoder perturbation
  does not reach the reused features).

Covariance pass (the one departure from Algorithm 1's data access). The paper runs a
separate pass over the training set with the final weights of the stage, in batches of 12.
A Method sees one batch at a time and no loader, so instead Y is accumulated online during
the LAST epoch of each stage from the training forward itself (no extra cost), splitting
each training batch into chunks of `cov_batch` = 12 rows so that z_t are means of 12-sample
batches as in the paper. Differences: the weights move during that epoch (the paper freezes
them) and the encoder runs in training mode (batch-norm batch statistics). No engine change
is needed; T is updated at the start of the next stage.

Read-out (Table 1): image-only / tabular-only = each modality's head; fused = the MLA
weighting the paper adopts ("same weighting strategy as the MLA method"): softmax
probabilities weighted by softmax(-entropy) across modalities (`fusion: entropy`); the
official code averages the probabilities (`fusion: average`).

rho. The paper's §4.2 gives rho = 1e-15 (image/text) and 1e-10 (audio), the values of the
official code; in float32 a perturbation of that size does not change the weights at all,
so SAM is inactive, while the method section (eq. 6-9) and Table 2 describe an active SAM.
The default here is rho = 0.05, the radius of the SAM paper IGM builds on (Foret et al.,
2021); `rho: 1.0e-15` reproduces the published setting and `rho: 0` turns SAM off.
Other known deviations of the official code, as options: it mixes the losses at the
original and perturbed point, (1 - 0.3) L + 0.3 L_SAM (`sam_mix: 0.3`; paper: 1), and
normalises the perturbation per tensor (`sam_norm: per_tensor`; paper eq. 7: global). It
also never removes the perturbation from the weights (not reproduced), mixes up its inputs
(not reproduced) and selects checkpoints on the test split.

Logs the current stage's modality (`stage_image`), the SAM loss, whether a non-identity T
was applied (`gm`) and the encoder gradient norms. There is no multimodal loss in training,
so no unimodal-vs-multimodal cosine exists for IGM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
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
    register_method,
)
from gaal_cli.methods.diagnostics import encoder_grad_norms
from gaal_cli.methods.stages import PlannedStage, Stage, StagedSettings, StageOptimizer

#: the official optimiser of every stage (configs/crema.json: SGD, lr_scheduler patience 40 as step)
OFFICIAL_OPTIMIZER = StageOptimizer(kind="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-4, step_size=40, gamma=0.1)


class IgmSettings(StagedSettings, MethodSettings):
    tau: float = Field(0.4, gt=0, description="scaling factor of eq. 4")
    rho: float = Field(0.05, ge=0, description="SAM radius on the head (paper/code: 1e-15, inactive; 0: no SAM)")
    sam_mix: float = Field(1.0, gt=0, le=1, description="weight of the perturbed loss (official code: 0.3)")
    sam_norm: Literal["global", "per_tensor"] = "global"
    gm: bool = Field(True, description="flat gradient modification (false: the 'w/o GM' ablation)")
    stage_epochs: list[Annotated[int, Field(ge=1)]] = Field(
        [25, 50], min_length=1, description="epochs of successive stages, cycled (official: 25, 50)"
    )
    stages: int | None = Field(
        None, ge=1, description="modality stages (official: 12); None: as many as fit train.epochs, at least 2"
    )
    stage_optimizer: StageOptimizer | None = Field(
        OFFICIAL_OPTIMIZER, description="each stage's fresh optimiser (official: SGD 1e-2); null: train.*"
    )
    first: Literal["image", "tabular"] = "image"
    head_widths: tuple[int, int] = (256, 64)
    cov_batch: int = Field(12, ge=1, description="rows per batch mean in the covariance (paper: 12)")
    fusion: Literal["entropy", "average"] = "entropy"

    @field_validator("stage_epochs", mode="before")
    @classmethod
    def _one_length(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value


def modality_order(first: str) -> tuple[str, ...]:
    return MODALITIES if first == "image" else MODALITIES[::-1]


def flat_transform(cov: torch.Tensor, tau: float) -> torch.Tensor:
    """T = V diag(exp(-tau (lambda - lambda_min) / (lambda_max - lambda_min))) V^T (eq. 4).

    Returns the identity when all singular values are equal (no direction is sharper).
    """
    lam, vectors = torch.linalg.eigh(cov.double())
    span = lam.max() - lam.min()
    if span <= 0:
        return torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    scale = torch.exp(-tau * (lam - lam.min()) / span)
    return ((vectors * scale) @ vectors.T).to(cov.dtype)


def batch_mean_second_moment(x: torch.Tensor, rows: int) -> torch.Tensor:
    """sum_t z_t z_t^T over consecutive chunks of `rows` rows of x, z_t the chunk mean (eq. 2)."""
    means = torch.stack([chunk.mean(0) for chunk in x.float().split(rows)])
    return means.T @ means


def sam_perturbation(grads: Sequence[torch.Tensor], rho: float, per_tensor: bool = False) -> list[torch.Tensor]:
    """eps = rho g / ||g||_2 (eq. 7), the norm taken over all tensors or per tensor."""
    tiny = torch.finfo(torch.float32).tiny
    if per_tensor:
        return [rho * g / g.norm().clamp_min(tiny) for g in grads]
    norm = torch.linalg.vector_norm(surgery.flatten(grads)).clamp_min(tiny)
    return [rho * g / norm for g in grads]


def entropy_weighted(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """log of sum_m lambda_m p_m with lambda = softmax(-entropy) over modalities (MLA's rule)."""
    log_p = torch.stack([F.log_softmax(x.float(), -1) for x in logits])
    weights = F.softmax(-torch.stack([surgery.entropy(x) for x in logits]), dim=0)
    return torch.logsumexp(log_p + weights.clamp_min(torch.finfo(torch.float32).tiny).log()[..., None], dim=0)


def averaged(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    log_p = torch.stack([F.log_softmax(x.float(), -1) for x in logits])
    return torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(logits))))


def run_head(head: nn.Sequential, u: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the input of every Linear layer of `head`, in order."""
    inputs = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            inputs.append(u)
        u = layer(u)
    return u, inputs


@register_method("igm", settings=IgmSettings)
class Igm(Method):
    settings: IgmSettings

    def __init__(self, encoders, num_classes, settings: IgmSettings):
        super().__init__(encoders, num_classes, settings)
        h1, h2 = settings.head_widths
        d = encoders.feature_dim
        self.heads = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, h1), nn.ReLU(), nn.Linear(h1, h2), nn.Linear(h2, num_classes))
                for m in MODALITIES
            }
        )
        # T and the running covariance of every head Linear, per modality; buffers, so that a
        # resumed run continues with the same matrices
        for m in MODALITIES:
            for i, layer in enumerate(self.linears(m)):
                n = layer.in_features
                self.register_buffer(f"flat_{m}_{i}", torch.eye(n))
                self.register_buffer(f"cov_{m}_{i}", torch.zeros(n, n))
        self.epoch = 1

    def linears(self, modality: str) -> list[nn.Linear]:
        return [layer for layer in self.heads[modality] if isinstance(layer, nn.Linear)]

    def buffers_of(self, kind: str, modality: str) -> list[torch.Tensor]:
        return [getattr(self, f"{kind}_{modality}_{i}") for i in range(len(self.linears(modality)))]

    def order(self) -> tuple[str, ...]:
        return modality_order(self.settings.first)

    @classmethod
    def stages(cls, s: IgmSettings, epochs: int) -> list[Stage]:
        lengths = s.stage_epochs
        count = s.stages
        if count is None:  # as many whole stages as fit, at least one per modality
            count, used = 0, 0
            while used + lengths[count % len(lengths)] <= epochs:
                used += lengths[count % len(lengths)]
                count += 1
            count = max(count, min(2, epochs))
        plan = []
        for k in range(count):
            m = modality_order(s.first)[k % 2]
            plan.append(Stage(f"{m}", lengths[k % len(lengths)], (f"encoders.{m}.", f"heads.{m}."), s.stage_optimizer))
        return plan

    def schedule(self) -> tuple[int, str, bool]:
        """(stage index, modality trained now, whether this epoch is the last of its stage)."""
        stage = self.stage
        index = stage.index if stage is not None else 0
        last = stage is not None and self.epoch == stage.end
        return index, self.order()[index % 2], last

    def on_stage_start(self, stage: PlannedStage) -> None:
        """T of the modality the previous stage trained, from its last epoch's covariance (eq. 4)."""
        if stage.index >= 1:
            self.update_flat(self.order()[(stage.index - 1) % 2])

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def idle_parameters(self) -> set[str]:
        """The encoder and head of the modality that the current stage does not train."""
        _, modality, _ = self.schedule()
        other = "tabular" if modality == "image" else "image"
        prefixes = (f"encoders.{other}.", f"heads.{other}.")
        return {name for name, _ in self.named_parameters() if name.startswith(prefixes)}

    @torch.no_grad()
    def update_flat(self, modality: str) -> None:
        """Eq. 4 for every head layer of `modality` from the covariance of its last epoch."""
        for flat, cov in zip(self.buffers_of("flat", modality), self.buffers_of("cov", modality)):
            flat.copy_(flat_transform(cov, self.settings.tau))
            cov.zero_()

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        index, modality, last_epoch = self.schedule()
        other = "tabular" if modality == "image" else "image"
        head = self.heads[modality]
        x = batch.image if modality == "image" else batch.tabular
        u = getattr(self.encoders, modality)(x)
        logits, inputs = run_head(head, u)
        loss = cross_entropy(logits, batch.label)
        if last_epoch:
            with torch.no_grad():
                for cov, z in zip(self.buffers_of("cov", modality), inputs):
                    cov += batch_mean_second_moment(z.detach(), self.settings.cov_batch)
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        if self.settings.rho > 0:
            stats["sam_loss"] = self.sam_backward(head, u, loss, batch.label)
        else:
            loss.backward()
        # the other modality has finished a stage, so its T is no longer the identity
        applied = self.settings.gm and index >= 1
        if applied:
            self.modify_gradients(modality, other)
        stats["gm"] = torch.tensor(float(applied))
        stats["stage_image"] = torch.tensor(float(modality == "image"))
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def sam_backward(self, head: nn.Sequential, u: torch.Tensor, loss: torch.Tensor, labels: torch.Tensor):
        """Backward of (1 - mix) L(head) + mix L(head + eps); leaves the head weights unchanged."""
        s = self.settings
        params = list(head.parameters())
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        if s.sam_mix < 1:
            ((1 - s.sam_mix) * loss).backward(retain_graph=True)
        eps = sam_perturbation(grads, s.rho, per_tensor=s.sam_norm == "per_tensor")
        # restore by copy: (w + eps) - eps is not w in floating point
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        sam_loss = cross_entropy(head(u), labels)
        (s.sam_mix * sam_loss).backward()
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        return sam_loss.detach()

    @torch.no_grad()
    def modify_gradients(self, modality: str, other: str) -> None:
        """Eq. 5: grad(W_l) <- grad(W_l) T_k, layer by layer."""
        for layer, flat in zip(self.linears(modality), self.buffers_of("flat", other)):
            layer.weight.grad.copy_(layer.weight.grad @ flat.to(layer.weight.grad.dtype))

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        li = self.heads["image"](self.encoders.image(image)) if image is not None else None
        lt = self.heads["tabular"](self.encoders.tabular(tabular)) if tabular is not None else None
        present = [x for x in (li, lt) if x is not None]
        fuse = entropy_weighted if self.settings.fusion == "entropy" else averaged
        return Predictions(fuse(present) if len(present) == 2 else present[0], li, lt)
