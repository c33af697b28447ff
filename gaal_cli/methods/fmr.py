"""FMR, fixed model reuse (AAAI 2017): image model regressing a fixed tabular model's features.

Yang, Zhan, Fan, Jiang and Zhou, "Deep learning for fixed model reuse", AAAI 2017: Table I's
FMR row, a test-time tabular-missing method.

FMR reuses a fixed model f whose features help in training but are unavailable (or not to be
used) at test. In the paper's words (abstract), the network's features and the fixed features
are first arranged "in parallel, fully connecting to the output layer nodes"; then "the
dependencies between the output layer nodes and the fixed model/features are knocked down",
so that only the raw input is needed at test, the fixed model's knowledge having been absorbed
by the network. Here the fixed model is the tabular encoder of another trained run
(`methods.fmr.fixed_model`, e.g. a `tabular` MLP run); the raw input is the image:

    u   = phi_I(x_I)                        image features
    v   = f(x_T)                            the fixed model's features (frozen, eval mode)
    v^  = R(u)                              the image network's estimate of v (R: one Linear)
    z   = W [u ; v^] + b                    the classifier reads both
    L   = CE(z, y) + lambda * mean_j (v^_j - v_j)^2

At test z is computed from the image alone (u and v^); f is not needed. The report's Image
column holds its accuracy, as Table I prints it.

Reconstructed, not checked: only the paper's abstract could be read here, not its body, so
the following are this project's reading and may differ from the paper:
- how the knock-down is done: here by regressing the fixed features from the image network (a
  squared error, `regression_weight` lambda = 1) while the classifier reads the estimate v^
  from the first step (`classifier_reads: predicted`); `classifier_reads: fixed` is the other
  natural reading, the classifier reading the true v in training (the parallel arrangement)
  and the estimate v^ at test;
- which layer regresses the fixed features (here one Linear on the image encoder's output);
- that the fixed features are the fixed model's penultimate features (here the tabular
  encoder's output, before its classifier) rather than its predictions;
- the regression error is averaged over feature dimensions and samples, with no rescaling of v.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms
from gaal_cli.runs.dependencies import required_dependency


class FmrSettings(MethodSettings):
    dependency_fields: ClassVar[tuple[str, ...]] = ("fixed_model",)

    fixed_model: str | None = Field(
        None, description="the fixed model: a finished run (folder or checkpoint) whose tabular encoder is reused"
    )
    regression_weight: float = Field(1.0, ge=0, description="lambda, weight of the squared error to the fixed features")
    classifier_reads: Literal["predicted", "fixed"] = Field(
        "predicted", description="in training, the classifier reads the estimated (predicted) or true (fixed) features"
    )


@torch.no_grad()
def fmr_target(fixed_encoder: nn.Module, tabular: torch.Tensor) -> torch.Tensor:
    """The regression target: the fixed model's features of the table, in eval mode, no gradient."""
    return fixed_encoder(tabular).float()


def fmr_loss(
    logits: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor, weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE(logits, y) + weight * mean squared error between predicted and fixed features."""
    ce = cross_entropy(logits, labels)
    mse = F.mse_loss(predicted.float(), target)
    return ce + weight * mse, {"ce": ce, "mse": mse}


@register_method("fmr", settings=FmrSettings)
class Fmr(Method):
    settings: FmrSettings
    #: the network's input, in training and at test (the fixed model reads the table in training)
    modalities = ("image",)

    def __init__(self, encoders, num_classes, settings: FmrSettings, dependencies: dict):
        super().__init__(encoders, num_classes, settings)
        self.fixed = required_dependency(dependencies, "fixed_model", "fmr")
        fixed = self.fixed.model
        if fixed is not None and "tabular" not in fixed.modalities:
            raise GaalError(
                f"the fixed model must be a run that trained a tabular encoder (e.g. tabular or concat), "
                f"not a {self.fixed.config.method} run",
                source=str(self.fixed.file),
                field="methods.fmr.fixed_model",
            )
        encoders.tabular.requires_grad_(False)
        fixed_dim = self.fixed.config.model.feature_dim
        self.regress = nn.Linear(encoders.feature_dim, fixed_dim)
        self.head = nn.Linear(encoders.feature_dim + fixed_dim, num_classes)

    def forward_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features u and the estimate v^ = R(u) of the fixed features."""
        u = self.encoders.image(image)
        return u, self.regress(u)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        target = fmr_target(self.fixed.model.encoders.tabular, batch.tabular)
        u, predicted = self.forward_image(batch.image)
        read = predicted if self.settings.classifier_reads == "predicted" else target.to(predicted.dtype)
        logits = self.head(torch.cat([u, read], dim=1))
        loss, parts = fmr_loss(logits, batch.label, predicted, target, self.settings.regression_weight)
        loss.backward()
        stats = {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)}
        stats.update({"loss_ce": parts["ce"].detach(), "loss_regression": parts["mse"].detach()})
        stats.update(encoder_grad_norms(self.encoders, self.modalities))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        if image is None:
            return Predictions(None, None, None)
        u, predicted = self.forward_image(image)
        logits = self.head(torch.cat([u, predicted], dim=1))
        return Predictions(logits, logits, None)
