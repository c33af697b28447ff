"""DMRNet, decoupled multimodal representations (Wei, Luo, Wang and Luo, ECCV 2024).

"Robust multimodal learning via representation decoupling", arXiv 2407.04458: a network meant
to work with any subset of its modalities, trained with modality dropout; in Table I's
test-time tabular-missing setting it is trained on image and table and scored on the image
alone (`data.test_missing: tabular`; the report's Image column holds that accuracy).

Only the abstract could be read here; the recipe below is the one of the official code's
two-modality (audio-visual) classification, `shicaiwei123/ECCV2024-DMRNet`, files
`audio-visual classification/main.py`, `models/basic_model.py` (AVClassifier,
modality_drop), `models/fusion_modules.py` (ConcatFusion), `valid.py`, `cramed.sh`, read for
facts only. For every training sample one combination c of {image, table, both} is drawn
uniformly (gaal_cli/methods/modality_dropout.py) and the dropped modality's features zeroed:

    h      = [m_I u_I ; m_T u_T]                          u: encoder features, m: the mask of c
    mu     = BN(W_mu h + b_mu),  log s^2 = BN(W_s h + b_s)   (2d -> 2d each)
    z      = mu + eps * s,  eps ~ N(0, I)   in training;   z = mu at test
    logits = W z + b
    L = CE(logits, y)
        + alpha * mean_b sum_k 1/2 (s^2 + mu^2 - log s^2 - 1)               (KL to N(0, I))
        + beta  * 1/B sum_b [c_b = hard] CE_b                              (hard combination)

The hard combination is mined: over the first `mining_epochs` epochs the batch mean of the
per-sample variance mean_k s^2 is summed, separately over image-only and over table-only
samples; the unimodal combination with the larger sum is the hard one, and from the next
epoch on its samples' cross-entropy is added once more, weighted by beta (normalised by the
whole batch, as the code does). In the code the regularizer's logits are the same head on
the same sample z as the task loss, so it is an extra weight on those samples' task loss.
At test the absent modality is zeroed, as the code's `general_model_test` fixes a combination.

Defaults and their source (the code; the paper's values could not be read):
- alpha = 1e-3 (`--alpha` in cramed.sh and ks.sh, the argparse default);
- beta = 0.2: the CREMA-D line of cramed.sh with its best result (0.2 -> 64.2 against 0.25,
  0.15, 0.1); ks.sh uses 0.3 and the argparse default is 0.5. The code's README warns that
  beta matters and may need tuning on other hardware;
- mining_epochs = 6: the code mines during epochs 0-5 and regularizes from epoch 6 on;
- the layers DMRNet adds (mu, log s^2, the head) start as the code's `utils.weight_init` starts
  every linear layer: Xavier-normal weights, zero biases (`xavier_init`);
- the optimiser: the code's is SGD 1e-3, momentum 0.9, weight decay 1e-4, StepLR(70, 0.1),
  100 epochs, batch 64 (main.py l.298-299 and its argparse defaults). The paper-scale
  experiment files give it as `stage_optimizer` (the engine builds it for DMRNet's one stage),
  because those files share train.* with the other missing-table rows. Unset (`null`, the
  default) DMRNet trains with train.*, as the CPU-scale files do (an SGD at 1e-3 sized for 100
  epochs barely moves in 6).

Departures:
- The feature extractors are this project's encoders (any image backbone, the tabular MLP)
  instead of two ResNet18s; mu and log s^2 are 2d -> 2d as the code's 1024 -> 1024 for two
  512-wide features. The code's `weight_init` also re-initialises its from-scratch ResNet18s
  (convolutions Kaiming-normal fan_out, as torchvision's ResNet already does, and any linear
  layer Xavier-normal); the encoders here keep the project's initialisation, shared by every
  row (at paper scale the image backbone starts from ImageNet weights, which it must not
  overwrite).
- The hard-combination regularizer is normalised by the batch over the hard combination's
  samples (1/B sum_b [c_b = hard] CE_b). The code's `auxi_loss * ((1 - p[:, 0]) * p[:, 1])`
  multiplies a (B,) loss by a (B, 1, 1, 1) mask (p is (B, 2, 1, 1, 1)), which broadcasts to
  (B, 1, 1, B): it adds (number of hard samples) x (mean CE over all samples). The evident aim,
  the hard combination's own loss (the mining branch reshapes its mask to (B,) for that), is
  followed.
- A batch with no sample of one unimodal combination adds nothing to that combination's
  variance sum (the code divides 0 by 0 there, a NaN that would poison the comparison).
- The code divides each epoch's sums by the number of steps before comparing; a common
  factor of both sums, so it changes nothing and is left out.
- The code's validation (model selection) also drops modalities at random; here the best
  epoch is chosen by the engine on the validation split with both modalities, as for every
  method. The code's face anti-spoofing version (three modalities) hard-codes the hard
  combinations per dataset instead of mining them; with two modalities the audio-visual
  mining above is the code's only rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms
from gaal_cli.methods.modality_dropout import (
    IMAGE_ONLY,
    TABULAR_ONLY,
    combination_predictions,
    dropped_features,
)
from gaal_cli.methods.stages import Stage, StageOptimizer

#: the hard combination before the mining ends
UNDECIDED = -1


class DmrnetSettings(MethodSettings):
    trace_settings: ClassVar[dict[str, Any]] = {"mining_epochs": 1}

    alpha: float = Field(1e-3, ge=0, description="weight of the KL of the embedding distribution to N(0, I)")
    beta: float = Field(0.2, ge=0, description="weight of the hard-combination regularizer")
    mining_epochs: int = Field(
        6, ge=1, description="epochs whose variances pick the hard combination; the regularizer starts after them"
    )
    stage_optimizer: StageOptimizer | None = Field(
        None,
        description="the run's own optimiser (the code's: SGD 1e-3, momentum 0.9, wd 1e-4, StepLR(70, 0.1), which "
        "the paper-scale files set); null: train.*",
    )


def xavier_init(*layers: nn.Linear) -> None:
    """The official `utils.weight_init` of a linear layer: Xavier-normal weights, zero biases."""
    for layer in layers:
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)


def gaussian_kl(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, std^2) || N(0, I)): summed over dimensions, averaged over the batch."""
    var = std.float() ** 2
    return (0.5 * (var + mu.float() ** 2 - torch.log(var) - 1)).sum(dim=1).mean()


def hard_combination_loss(per_sample_ce: torch.Tensor, ids: torch.Tensor, hard: int) -> torch.Tensor:
    """1/B sum_b [c_b = hard] CE_b: the hard combination's samples, normalised by the whole batch."""
    return (per_sample_ce * (ids == hard).to(per_sample_ce.dtype)).sum() / len(ids)


def combination_variances(std: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(image-only, table-only) batch means of the per-sample variance mean_k s^2 (0 where none)."""
    per_sample = (std.float() ** 2).mean(dim=1)
    means = []
    for combination in (IMAGE_ONLY, TABULAR_ONLY):
        chosen = (ids == combination).to(per_sample.dtype)
        means.append((per_sample * chosen).sum() / chosen.sum().clamp_min(1))
    return torch.stack(means)


@register_method("dmrnet", settings=DmrnetSettings)
class Dmrnet(Method):
    settings: DmrnetSettings

    def __init__(self, encoders, num_classes, settings: DmrnetSettings):
        super().__init__(encoders, num_classes, settings)
        width = 2 * encoders.feature_dim
        self.mu = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))
        self.log_var = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))
        self.head = nn.Linear(width, num_classes)
        xavier_init(self.mu[0], self.log_var[0], self.head)
        # buffers, so that a resumed run keeps the mining's sums and its verdict
        self.register_buffer("variance_sums", torch.zeros(2))
        self.register_buffer("hard", torch.tensor(UNDECIDED))
        self.epoch = 1

    @classmethod
    def stages(cls, s: DmrnetSettings, epochs: int) -> list[Stage]:
        return [Stage("train", None, (), s.stage_optimizer)]

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if epoch > self.settings.mining_epochs and int(self.hard) == UNDECIDED:
            picked = IMAGE_ONLY if self.variance_sums[0] > self.variance_sums[1] else TABULAR_ONLY
            self.hard.fill_(picked)

    def embedding(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and s of the embedding distribution of the fused features h."""
        return self.mu(h), torch.exp(0.5 * self.log_var(h))

    def mean_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the mean embedding: the test-time rule."""
        return self.head(self.embedding(h)[0])

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        s = self.settings
        ids, h = dropped_features(self.encoders, batch)
        mu, std = self.embedding(h)
        z = mu + torch.randn_like(std) * std
        logits = self.head(z)
        task, kl = cross_entropy(logits, batch.label), gaussian_kl(mu, std)
        loss = task + s.alpha * kl
        stats = {"loss_task": task.detach(), "loss_kl": kl.detach()}
        if self.epoch <= s.mining_epochs:
            variances = combination_variances(std.detach(), ids)
            self.variance_sums += variances
            stats.update({"variance_image_only": variances[0], "variance_tabular_only": variances[1]})
        elif int(self.hard) != UNDECIDED:
            per_sample = nn.functional.cross_entropy(logits.float(), batch.label, reduction="none")
            hard = hard_combination_loss(per_sample, ids, int(self.hard))
            loss = loss + s.beta * hard
            stats["loss_hard"] = hard.detach()
        loss.backward()
        stats.update({"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)})
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        return combination_predictions(self.mean_logits, *self.encode(image, tabular))
