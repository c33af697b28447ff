"""GAAL: Gradient-Aligned Alternating Learning (ICME 2026, seeds/001; Algorithm 1).

Two encoders and ONE shared linear classifier psi. Per batch, modalities take turns (image,
then tabular by default). In the turn of modality m:

1. L_m = CE(psi(u_m), y) over the batch; its backward gives the gradient of encoder m and the
   head gradient g (eq. 1).
2. Uncertainty-based gradient guidance (UGG, eq. 6-8): entropy of softmax(psi(u_m')) for the
   other modality m'; g_p = head gradient of the mean CE over its top-lambda_m' fraction.
3. Cross-modal gradient surgery (CGS, eq. 4-5): g~ = g + v g_p with
   v = max(0, (eps - g_p.g) / ||g_p||^2), so that g_p.g~ >= eps.
4. One optimiser step: encoder m with its own gradient, the head with g~.

Inference (eq. 10) averages the two logits; image-only inference is psi(u_I).

Freshness (`guidance`): Algorithm 1 recomputes the predictions at each turn (line 8), so with
`guidance: fresh` (default) the second turn's g_p comes from the first encoder as it stands
after the first turn's step: one no-grad forward of that encoder. `guidance: stale` reuses this
batch's features from before that step (one image step moves u_I by 5-12 %, enough to change
the selected hard samples and whether the surgery fires), saving that forward. The first
turn's guidance is fresh either way: the second encoder has not moved yet.

Cost: each encoder runs forward and backward once per batch, as in joint training, plus one
no-grad forward of the first encoder under `fresh` (about 1 + forward / (forward + backward) of
the image encoder: 1.2-1.5x a concat step on a CPU, benchmarks/step_cost.py) and, under
`idle_step`, one of the second encoder, whose training forward waits for the first turn's step.
The official code back-propagates the hard-sample loss through the other encoder and throws
that gradient away; here g_p is taken through the head alone on detached features. A guidance
forward uses the encoder's training mode (BatchNorm normalises with the batch's statistics) but
leaves its running statistics alone (`guidance_features`).

Switches: `cgs: false` gives alternating learning only (Table II row 1); `ugg: false` takes
g_p from the whole batch (row 2). Official-code behaviour, for like-for-like comparison with
the paper's numbers (experiments/gaal_official.yaml; REFERENCE §1): `projection: gem` replaces
eq. 5 by GEM's dual QP with a lower bound `gem_margin` on v; `hard_count: floor` keeps
int(lambda B) samples instead of ceil; `idle_step: true` zeroes gradients as torch 1.12 did
(zero tensors, not None), so an encoder that has had a gradient still takes the optimiser's
weight-decay and momentum step during the other modality's turn.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods import surgery
from gaal_cli.methods.base import (
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    fuse_missing,
    register_method,
)


class GaalSettings(MethodSettings):
    lambda_image: float = Field(0.5, gt=0, le=1, description="fraction of image samples used as guidance")
    lambda_tabular: float = Field(0.5, gt=0, le=1, description="fraction of tabular samples used as guidance")
    epsilon: float = Field(0.0, description="alignment margin of eq. 3-5")
    cgs: bool = Field(True, description="cross-modal gradient surgery on the shared head")
    ugg: bool = Field(True, description="guidance from the top-lambda most uncertain samples (else all)")
    guidance: Literal["fresh", "stale"] = Field(
        "fresh",
        description="second turn's guidance from the other encoder after its step (fresh, Algorithm 1 line 8) "
        "or from this batch's forward before it (stale, no extra forward)",
    )
    projection: Literal["closed_form", "gem"] = "closed_form"
    gem_margin: float = Field(0.75, ge=0, description="lower bound of v in the official GEM projection")
    hard_count: Literal["ceil", "floor"] = Field(
        "ceil", description="top-lambda keeps ceil(lambda B) samples (paper) or int(lambda B) (official code)"
    )
    idle_step: bool = Field(
        False,
        description="official code (torch 1.12 zero_grad): an encoder that has had a gradient still takes "
        "the optimiser's step with a zero gradient during the other modality's turn",
    )
    order: Literal["image_first", "tabular_first"] = "image_first"


@register_method("gaal", settings=GaalSettings)
class Gaal(Method):
    settings: GaalSettings

    def __init__(self, encoders, num_classes, settings: GaalSettings):
        super().__init__(encoders, num_classes, settings)
        self.head = nn.Linear(encoders.feature_dim, num_classes)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """Algorithm 1 on one batch: the first modality's turn, then the second's.

        Each encoder's training forward runs once, with the weights its own turn starts from;
        each turn's guidance comes from the other encoder's features (see the module docstring).
        """
        first, second = ("image", "tabular") if self.settings.order == "image_first" else ("tabular", "image")
        inputs = {"image": batch.image, "tabular": batch.tabular}
        encoder = {"image": self.encoders.image, "tabular": self.encoders.tabular}
        if self.settings.idle_step:
            restore_zero_grads(optimizer)
        # under idle_step the first turn's step also moves the second encoder (once it has had
        # a gradient): its training forward must then wait until after that step
        second_moves = self.settings.idle_step and any(p.grad is not None for p in encoder[second].parameters())
        u_first = encoder[first](inputs[first])
        u_second = None if second_moves else encoder[second](inputs[second])
        guide = self.guidance_features(encoder[second], inputs[second]) if second_moves else u_second.detach()
        logits, stats = {}, {}
        logits[first] = self.phase(first, u_first, guide, batch.label, optimizer, stats)
        if u_second is None:
            u_second = encoder[second](inputs[second])
        if self.settings.guidance == "fresh":
            guide = self.guidance_features(encoder[first], inputs[first])
        else:
            guide = u_first.detach()
        logits[second] = self.phase(second, u_second, guide, batch.label, optimizer, stats)
        stats["loss"] = (stats["loss_image"] + stats["loss_tabular"]) / 2
        stats["acc"] = accuracy((logits["image"] + logits["tabular"]) / 2, batch.label)
        return stats

    @torch.no_grad()
    def guidance_features(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The other modality's features as its encoder stands now, for the guidance only.

        The forward runs in the encoder's current mode (in training: BatchNorm with this batch's
        statistics, as the training forward normalises), but leaves the running statistics as
        they were: the encoder's own training forward counts this batch once, and a second
        update per batch would make the evaluation statistics move faster than in joint
        training (momentum 0.1 applied twice), a side effect of the step pattern rather than part
        of the method. Saving and restoring the buffers is exact for every norm layer (also
        `num_batches_tracked`, which a momentum-0 trick would still advance) and costs a copy of
        a few kilobytes.
        """
        saved = [b.clone() for b in encoder.buffers()]
        features = encoder(x)
        for buffer, value in zip(encoder.buffers(), saved):
            buffer.copy_(value)
        return features

    def fraction(self, modality: str) -> float:
        if not self.settings.ugg:
            return 1.0
        return self.settings.lambda_image if modality == "image" else self.settings.lambda_tabular

    def phase(
        self,
        current: str,
        u: torch.Tensor,
        u_other: torch.Tensor,
        labels: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        stats: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Modality `current`'s turn: encoder + head backward, head surgery, one optimiser step.

        Returns the turn's logits (detached); its statistics go into `stats`, suffixed `_current`.
        """
        # set_to_none=False is torch 1.12's zero_grad: a parameter that has had a gradient keeps a
        # zero one and still takes the optimiser's step (weight decay, momentum)
        optimizer.zero_grad(set_to_none=not self.settings.idle_step)
        logits = self.head(u)
        loss = cross_entropy(logits, labels)
        loss.backward()
        # data-parallel: the surgery must act on the global gradient (no-op in one process)
        self.comm.average_grads(p for p in self.parameters() if p.grad is not None)
        params = list(self.head.parameters())
        g = surgery.flatten(p.grad for p in params)
        other = "tabular" if current == "image" else "image"
        g_p = self.guidance(u_other, labels, self.fraction(other))
        v = self.weight(g, g_p)
        if self.settings.cgs:
            for p, new in zip(params, surgery.unflatten(g + v * g_p, params)):
                p.grad.copy_(new)
        optimizer.step()
        stats[f"loss_{current}"] = loss.detach()
        stats[f"grad_cos_{current}"] = surgery.cosine(g, g_p).detach()
        stats[f"surgery_{current}"] = (v > 0).float() if self.settings.cgs else torch.zeros((), device=g.device)
        return logits.detach()

    def guidance(self, u_other: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
        """g_p: head gradient of the mean CE over the other modality's most uncertain samples."""
        logits = self.head(u_other)
        params = list(self.head.parameters())
        if self.comm.world_size == 1:
            rows = surgery.top_uncertain(logits.detach(), fraction, self.settings.hard_count)
            return surgery.flatten(torch.autograd.grad(cross_entropy(logits[rows], labels[rows]), params))
        # data-parallel: rank the global batch by entropy, sum each rank's share of the
        # selected samples' CE and divide by the global count, so g_p is the same as in one
        # process on the combined batch
        everyone = self.comm.all_gather(surgery.entropy(logits.detach()))
        k = surgery.n_selected(len(everyone), fraction, self.settings.hard_count)
        threshold = torch.topk(everyone, k).values[-1]
        rows = surgery.entropy(logits.detach()) >= threshold
        loss = nn.functional.cross_entropy(logits[rows].float(), labels[rows], reduction="sum") / k
        return self.comm.sum(surgery.flatten(torch.autograd.grad(loss, params)))

    def weight(self, g: torch.Tensor, g_p: torch.Tensor) -> torch.Tensor:
        if self.settings.projection == "gem":
            return surgery.gem_weight(g, g_p, self.settings.gem_margin)
        return surgery.projection_weight(g, g_p, self.settings.epsilon)

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        li = self.head(self.encoders.image(image)) if image is not None else None
        lt = self.head(self.encoders.tabular(tabular)) if tabular is not None else None
        return Predictions(fuse_missing(li, lt, lambda: (li + lt) / 2), li, lt)


def restore_zero_grads(optimizer: torch.optim.Optimizer) -> None:
    """Give a zero gradient back to every parameter the optimiser has stepped before.

    Under `idle_step`, whether a parameter has had a gradient lives in `.grad` (zero tensor or
    None), which no checkpoint holds: after a resume every `.grad` is None, while the
    optimiser's restored state still lists the parameters it has stepped. Without this the
    first resumed batch would skip the idle step that an uninterrupted run takes.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None and p in optimizer.state:
                p.grad = torch.zeros_like(p)
