"""MMANet, margin-aware distillation and modality-aware regularization (Wei, Luo and Luo, CVPR 2023).

"MMANet: Margin-aware distillation and modality-aware regularization for incomplete multimodal
learning", arXiv 2304.08028: a deployment network trained with modality dropout, taught by a
trained multimodal teacher (MAD) and pushed on its weak modality combinations by a
regularization network (MAR). In Table I's test-time tabular-missing setting it is trained on
image and table and scored on the image alone (`data.test_missing: tabular`).

Only the abstract could be read here; the recipe is the official code's,
`shicaiwei123/MMANet-CVPR2023` (classification/: src/surf_mmanet.py and .sh,
configuration/config_feature_kd.py, lib/model_develop.py
`train_knowledge_distill_patch_feature_auxi_weak`, loss/kd/mad.py, models/surf_baseline.py
SURF_MMANet, lib/model_arch.py modality_drop), read for facts only and written for three
image modalities; its two-modality form is this module's reading (departures below).

Deployment network: the two encoders, modality dropout (each sample's combination drawn
uniformly from {image, table, both}, the dropped features zeroed; modality_dropout.py) and a
linear head on h = [m_I u_I ; m_T u_T]. Teacher: another run (`methods.mmanet.teacher`, by
default a `concat` run), frozen, reading both modalities: its features f = [u_I^t ; u_T^t]
and fused logits t.

    L = CE(W h + b, y)                                      every epoch
        + lambda_mad * MAD + lambda_mar * MAR               (when each applies: the recipes below)
    MAD = sum_ij (G^s_ij - G^t_ij)^2 w_j                    G^s = rownorm(h h^T), G^t = rownorm(f f^T)
    w_j = H(softmax(t_j)) / sum_k H(softmax(t_k))           the teacher's entropy: samples near a
                                                            decision boundary weigh more
    MAR = 1/B sum_b [c_b regularized] CE(A h_b, y_b)

Two recipes (`recipe`). `two_modality` (default) is the authors' own two-modality port, in
the ECCV2024-DMRNet repository (`audio-visual classification/main_distillation.py`,
train_epoch; models/fusion_modules.py ConcatFusion): MAD x0.5 from the first epoch; MAR x0.01
on both unimodal combinations (image only and table only) only once `epoch > 5` (l.164-167,
its epochs counted from 0: the first 6 epochs train without MAR, `mar_after` = 6 here, where
epochs count from 1), no mining. The port's auxiliary output is its main classifier
(`auxi_out = self.fc_out(output)`, the same layer as `out`), so A = W: MAR adds 0.01 x the
unimodal samples' cross-entropy once more through the main head. `three_modality` is the
CASIA-SURF/CeFA script of the MMANet repository: MAD x30 and MAR x0.5 after `begin_epoch`,
MAR through a regularization network (A = R, a second linear head on h here) on the one weak
combination that the mining names:

Mining the weak combination (the code's eqs. 9-13, `three_modality` only): in the epochs 1 < e < begin_epoch every
combination's predicted-label histogram is collected (normalised to frequencies q_c); each
incomplete combination c scores KL(softmax(q_c) || softmax(q_both)), summed over those epochs;
the highest score names the weak combination. The softmax over frequencies is the code's.

Defaults and their source (the code; the paper's values could not be read):
- `two_modality`: lambda_mad = 0.5 from epoch 1, lambda_mar = 0.01 after 6 epochs (DMRNet
  repository, main_distillation.py, the two-modality port by MMANet's authors);
- `three_modality`: lambda_mad = 30 and lambda_mar = 0.5: surf_mmanet.sh, the arguments of
  every CASIA-SURF and CeFA run (`lambda_kd_feature`, `lambda_kd_mar`); begin_epoch = 5
  (config_feature_kd.py): cross-entropy alone up to it, mining in epochs 2-4, the weak
  combination fixed at its end, MAD and MAR after it. The code's epoch 0 trains nothing (it
  skips every batch), so its epoch numbers are this engine's (counted from 1);
- `lambda_mad`, `lambda_mar` left unset take the recipe's values;
- the teacher's loss-weight temperature is 1 (a plain softmax, as mad.py);
- the optimiser: the port's is SGD 1e-3, momentum 0.9, weight decay 1e-4, StepLR(70, 0.1),
  100 epochs, batch 64 (main_distillation.py l.291-292 and its argparse defaults); the
  paper-scale experiment files give it as `stage_optimizer` (the engine builds it for MMANet's
  one stage), because those files share train.* with the other missing-table rows. Unset
  (`null`, the default) MMANet trains with train.*, as the CPU-scale files do (an SGD at 1e-3
  sized for 100 epochs barely moves in 6). The CASIA-SURF script's optimiser (SGD 1e-3, nesterov
  momentum 0.9, weight decay 5e-4, multi-step decay) belongs to `three_modality` runs.

Not followed: the port's student (AVClassifier_Distillation_PME, `--pme 1`) also carries
DMRNet's stochastic embedding (mu and sigma heads, a sample z = mu + eps sigma fed to the head
in training, mu at test) with a 0.001 KL to N(0, I) after epoch 5. That embedding is DMRNet's
contribution (ECCV 2024, the paper of the repository the port lives in; gaal_cli/methods/dmrnet.py),
absent from MMANet's own code and paper (MMANet-CVPR2023 classification/ has no such layer), so
it is left out: the mmanet row is MMANet's MAD and MAR on a modality-dropout network, and the
dmrnet row carries the embedding.

Departures:
- Histograms come from the training batches of the mining epochs, predicted without dropout
  in eval mode, no gradient; the code predicts the test split after each mining epoch (no
  labels, but test inputs) - this project never lets training see the test split.
- MAR is normalised by the batch over the regularized combinations' samples only. The code's
  `loss_batch * weak_index` (and the port's `auxi_loss * (p[:, 0] * (1 - p[:, 1]))`, p being
  (B, 2, 1, 1, 1)) broadcasts a (B,) by a (B, 1, 1, 1) tensor to (B, 1, 1, B), so it actually
  adds (number of regularized samples) x (mean CE over all samples); its stated aim (the
  abstract: "calculate prediction loss for [the weak combinations]") is followed instead.
- `three_modality` with two modalities: the code regularizes the weak pair and each of its
  single modalities; with two the weak combination is already a single modality, so it is
  regularized once (a literal port would list it twice, doubling lambda_mar).
- Three ResNet18-SE branches with a shared ResNet trunk become this project's encoders and a
  linear head, so the regularization network (a copy of the trunk in the code) is a second
  linear head, and MAD compares the fused features h and f (the code's two-modality port in
  ECCV2024-DMRNet does the same; on CASIA-SURF it compares the trunk's layer4 maps).
- MAD's weight multiplies column j of the (B, B) squared differences, as mad.py's broadcast
  does; whether the paper weights rows (sample i) instead could not be checked.
- The port initialises its whole student with utils.weight_init (Xavier-normal linear layers,
  zero biases); here the head follows it (`two_modality`) and the encoders keep the project's
  initialisation, as DMRNet's (see there). The CASIA-SURF script sets no initialisation.
- The port scores every epoch on its test split and keeps the best (it has no validation
  split); here the best epoch is chosen on validation, as for every method.
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
from gaal_cli.methods.dmrnet import xavier_init
from gaal_cli.methods.modality_dropout import (
    BOTH,
    COMBINATIONS,
    IMAGE_ONLY,
    TABULAR_ONLY,
    combination_predictions,
    dropped_features,
    fused_features,
)
from gaal_cli.methods.stages import Stage, StageOptimizer
from gaal_cli.runs.dependencies import required_dependency

#: the weak combination before the mining ends
UNDECIDED = -1


class MmanetSettings(MethodSettings):
    dependency_fields: ClassVar[tuple[str, ...]] = ("teacher",)

    teacher: str | None = Field(
        None, description="the multimodal teacher: a finished run folder or a checkpoint file (required)"
    )
    recipe: Literal["two_modality", "three_modality"] = Field(
        "two_modality",
        description="two_modality: the authors' DMRNet port (MAD 0.5 throughout, MAR 0.01 on both unimodal "
        "combinations through the main head after mar_after epochs, no mining); three_modality: the CASIA-SURF "
        "script (MAD 30, MAR 0.5 by a regularizer head, mining, begin_epoch)",
    )
    lambda_mad: float | None = Field(None, ge=0, description="weight of MAD; unset: the recipe's (0.5 / 30)")
    lambda_mar: float | None = Field(None, ge=0, description="weight of MAR; unset: the recipe's (0.01 / 0.5)")
    mar_after: int = Field(
        6,
        ge=0,
        description="two_modality only: epochs trained before MAR joins (the port's `epoch > 5`, its epochs "
        "counted from 0: 6)",
    )
    begin_epoch: int = Field(
        5,
        ge=3,
        description="three_modality only: cross-entropy alone up to this epoch (mining in epochs 2..begin_epoch-1); "
        "MAD, MAR after",
    )
    stage_optimizer: StageOptimizer | None = Field(
        None,
        description="the run's own optimiser (the port's: SGD 1e-3, momentum 0.9, wd 1e-4, StepLR(70, 0.1), which "
        "the paper-scale files set); null: train.*",
    )

    @property
    def weights(self) -> tuple[float, float]:
        """(lambda_mad, lambda_mar) as set, else the recipe's."""
        mad, mar = (0.5, 0.01) if self.recipe == "two_modality" else (30.0, 0.5)
        return (
            mad if self.lambda_mad is None else self.lambda_mad,
            mar if self.lambda_mar is None else self.lambda_mar,
        )


def similarity(features: torch.Tensor) -> torch.Tensor:
    """The batch's (B, B) Gram matrix of flattened features, each row L2-normalised."""
    flat = features.float().flatten(1)
    return F.normalize(flat @ flat.T, p=2, dim=1)


def teacher_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """w_j: the entropy of the teacher's prediction of sample j, normalised to sum to 1."""
    log_p = F.log_softmax(teacher_logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return entropy / entropy.sum()


def mad_loss(student: torch.Tensor, teacher: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """sum_ij (G^s_ij - G^t_ij)^2 w_j: similarity-preserving distillation weighted by uncertainty."""
    return ((similarity(student) - similarity(teacher)) ** 2 * teacher_weights(teacher_logits)).sum()


def mar_loss(
    logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, weak: int | tuple[int, ...]
) -> torch.Tensor:
    """1/B sum_b [c_b in weak] CE(logits_b, y_b): the regularized combinations' samples' CE."""
    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    chosen = torch.isin(ids, torch.tensor(weak if isinstance(weak, tuple) else (weak,), device=ids.device))
    return (per_sample * chosen.to(per_sample.dtype)).sum() / len(ids)


def histogram_distances(histograms: torch.Tensor) -> torch.Tensor:
    """KL(softmax(q_c) || softmax(q_both)) for c = image only, table only; q: label frequencies.

    Args:
        histograms: (3, C) predicted-label counts, rows in COMBINATIONS order.
    """
    q = histograms.float() / histograms.float().sum(dim=1, keepdim=True).clamp_min(1)
    p = F.softmax(q, dim=1)
    return torch.stack([(p[c] * (p[c].log() - p[BOTH].log())).sum() for c in (IMAGE_ONLY, TABULAR_ONLY)])


@register_method("mmanet", settings=MmanetSettings)
class Mmanet(Method):
    settings: MmanetSettings

    def __init__(self, encoders, num_classes, settings: MmanetSettings, dependencies: dict):
        super().__init__(encoders, num_classes, settings)
        self.teacher = required_dependency(dependencies, "teacher", "mmanet")
        teacher = self.teacher.model
        if teacher is not None and tuple(teacher.modalities) != ("image", "tabular"):
            raise GaalError(
                f"the teacher must be a multimodal run (e.g. concat), not a {self.teacher.config.method} run",
                source=str(self.teacher.file),
                field="methods.mmanet.teacher",
            )
        width = 2 * encoders.feature_dim
        self.head = nn.Linear(width, num_classes)
        # the CASIA-SURF script's regularization network; the two-modality port's MAR reads the main head
        self.regularizer = nn.Linear(width, num_classes) if self.three_modality else None
        if not self.three_modality:  # the port initialises its student as DMRNet's code does
            xavier_init(self.head)
        # buffers, so that a resumed run keeps the mining's counts, its scores and its verdict
        self.register_buffer("histograms", torch.zeros(len(COMBINATIONS), num_classes))
        self.register_buffer("distances", torch.zeros(2))
        self.register_buffer("weak", torch.tensor(UNDECIDED))
        self.epoch = 1

    @classmethod
    def stages(cls, s: MmanetSettings, epochs: int) -> list[Stage]:
        return [Stage("train", None, (), s.stage_optimizer)]

    @property
    def three_modality(self) -> bool:
        return self.settings.recipe == "three_modality"

    def mining(self, epoch: int) -> bool:
        return self.three_modality and 1 < epoch < self.settings.begin_epoch

    def on_epoch_start(self, epoch: int) -> None:
        """Fold the last mining epoch's histograms into the scores; after begin_epoch, pick the weak one."""
        if self.histograms.sum() > 0:
            self.distances += histogram_distances(self.histograms)
            self.histograms.zero_()
        if self.three_modality and epoch > self.settings.begin_epoch and int(self.weak) == UNDECIDED:
            self.weak.fill_(IMAGE_ONLY if self.distances[0] >= self.distances[1] else TABULAR_ONLY)
        self.epoch = epoch

    @property
    def distilling(self) -> bool:
        """Whether MAD is on: throughout in the port, after begin_epoch in the CASIA-SURF script."""
        return not self.three_modality or self.regularizing

    @property
    def regularizing(self) -> bool:
        """Whether MAR is on: after mar_after epochs in the port, once the weak combination is mined otherwise."""
        if not self.three_modality:
            return self.epoch > self.settings.mar_after
        return self.epoch > self.settings.begin_epoch and int(self.weak) != UNDECIDED

    @property
    def regularized(self) -> tuple[int, ...]:
        """The combinations MAR trains: both unimodal ones, or the mined weak one."""
        return (int(self.weak),) if self.three_modality else (IMAGE_ONLY, TABULAR_ONLY)

    @torch.no_grad()
    def teacher_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's fused features [u_I ; u_T] and fused logits, from both modalities."""
        teacher = self.teacher.model
        u_i, u_t = teacher.encode(batch.image, batch.tabular)
        return torch.cat([u_i, u_t], dim=1), teacher.predict(batch.image, batch.tabular).multi

    @torch.no_grad()
    def count_predictions(self, batch: Batch) -> None:
        """Add each combination's predicted labels of this batch to the mining histograms."""
        self.eval()
        u_i, u_t = self.encode(batch.image, batch.tabular)
        for c, (keep_image, keep_table) in enumerate(COMBINATIONS):
            logits = self.head(fused_features(u_i if keep_image else None, u_t if keep_table else None, None))
            self.histograms[c] += torch.bincount(logits.argmax(1), minlength=self.num_classes).to(self.histograms)
        self.train()

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        lambda_mad, lambda_mar = self.settings.weights
        ids, h = dropped_features(self.encoders, batch)
        logits = self.head(h)
        loss = cross_entropy(logits, batch.label)
        stats = {"loss_ce": loss.detach()}
        if self.distilling:
            features, teacher_logits = self.teacher_outputs(batch)
            mad = mad_loss(h, features, teacher_logits)
            loss = loss + lambda_mad * mad
            stats["loss_mad"] = mad.detach()
        if self.regularizing:
            # the port's auxiliary output is its main head's (fusion_modules.py: auxi_out = fc_out(...))
            mar_logits = self.regularizer(h) if self.three_modality else logits
            mar = mar_loss(mar_logits, batch.label, ids, self.regularized)
            loss = loss + lambda_mar * mar
            stats["loss_mar"] = mar.detach()
        loss.backward()
        stats.update({"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label)})
        stats.update(encoder_grad_norms(self.encoders))
        optimizer.step()
        if self.mining(self.epoch):
            self.count_predictions(batch)
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        return combination_predictions(self.head, *self.encode(image, tabular))

    def idle_parameters(self) -> set[str]:
        """The regularization network (CASIA-SURF script) before MAR starts."""
        if self.regularizer is None or self.regularizing:
            return set()
        return {"regularizer.weight", "regularizer.bias"}
