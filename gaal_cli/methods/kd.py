"""KD, knowledge distillation (Hinton et al. 2015): image student, CE + T^2 KL to a teacher run.

Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network", arXiv 1503.02531:
Table I's KD row, a test-time tabular-missing method (the table helps in training; only the
image at test).

An image student (the image encoder and a linear head, the same network as the `image` row)
learns from the labels and from a trained teacher's softened prediction (Hinton et al. §2):

    L = (1 - alpha) CE(z_s, y) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T))

z_s, z_t: student and teacher logits; T: the temperature. The T^2 factor keeps the soft term's
gradients the same size whatever T (they scale as 1/T^2, §2), so alpha keeps its meaning.

The teacher is another run (`methods.kd.teacher`: a finished run folder or a checkpoint; see
gaal_cli.runs.dependencies): by default a multimodal run of any fused method (e.g. `concat`), whose
fused prediction (`multi`) is the target, computed from the image and the table of the training
batch; a `tabular` run works the same way (its `multi` is its tabular prediction). The teacher
is frozen (eval mode, no gradient). At test the student sees the image alone, so the report's
Image column holds its accuracy, as Table I prints it.

Defaults: Hinton et al. fix no single temperature or weight. They found that the best results
"were generally obtained by using a considerably lower weight" on the hard-label term (§2),
that all temperatures of 8 and above did about equally well for a large student on MNIST, and
that 2.5-4 worked best for a small one (§3). Defaults: T = 4 (the top of the range that worked
for the student with the least capacity relative to its task; here the student sees only the
image, a weaker input than its teacher's), alpha = 0.9 (the hard term weighted 0.1).

Departures:
- Hinton's student is a smaller network distilled from a larger one on the same input; here
  the student sees a different input (the image) than its teacher (image and table): the
  cross-modal use that GAAL's Table I makes of KD. The paper does not say which teacher its KD
  row used; the teacher here is whatever run the setting names (the experiment files use concat).
- The two terms are weighted (1 - alpha, alpha), a convex form of Hinton's "weighted average".
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


class KdSettings(MethodSettings):
    dependency_fields: ClassVar[tuple[str, ...]] = ("teacher",)

    teacher: str | None = Field(
        None, description="the trained teacher: a finished run folder or a checkpoint file (required)"
    )
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of both teacher and student")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term; 1 - alpha on the labels")
    teacher_head: Literal["multi", "image", "tabular"] = Field(
        "multi", description="which of the teacher's predictions is the soft target (multi: its fused one)"
    )


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    kl_per_class: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hinton's loss: (1 - alpha) CE(student, y) + alpha T^2 KL(p_teacher^T || p_student^T).

    The KL is summed over classes and averaged over the batch (its `batchmean` reduction); with
    `kl_per_class` also divided by the number of classes (torch's KLDivLoss reduction='mean').

    Returns:
        The total loss and its parts ('hard', 'soft': the KL before the T^2 and alpha factors).
    """
    hard = cross_entropy(student, labels)
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    if kl_per_class:
        soft = soft / student.shape[1]
    total = (1 - alpha) * hard + alpha * temperature**2 * soft
    return total, {"hard": hard, "soft": soft}


def distillation_step(
    student: Method,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    target: torch.Tensor,
    kl_per_class: bool = False,
) -> dict[str, torch.Tensor]:
    """One optimiser step of an image student (`student.logits(image)`) on `kd_loss` towards the
    teacher's logits `target`, with its settings' temperature and alpha (KD, and MFH's distillation).

    Returns:
        The step's statistics (loss, accuracy, both loss parts, the teacher's accuracy, grad norms).
    """
    optimizer.zero_grad(set_to_none=True)
    logits = student.logits(batch.image)
    s = student.settings
    loss, parts = kd_loss(logits, target, batch.label, s.temperature, s.alpha, kl_per_class)
    loss.backward()
    stats = {
        "loss": loss.detach(),
        "acc": accuracy(logits.detach(), batch.label),
        "loss_hard": parts["hard"].detach(),
        "kl_soft": parts["soft"].detach(),
        "teacher_acc": accuracy(target, batch.label),
    }
    stats.update(encoder_grad_norms(student.encoders, student.modalities))
    optimizer.step()
    return stats


@register_method("kd", settings=KdSettings)
class Kd(Method):
    settings: KdSettings
    #: the student's input, in training and at test (the teacher reads the table in training)
    modalities = ("image",)

    def __init__(self, encoders, num_classes, settings: KdSettings, dependencies: dict):
        super().__init__(encoders, num_classes, settings)
        self.teacher = required_dependency(dependencies, "teacher", "kd")
        encoders.tabular.requires_grad_(False)
        self.head = nn.Linear(encoders.feature_dim, num_classes)
        teacher = self.teacher.model
        head = settings.teacher_head
        if teacher is not None and head != "multi" and head not in teacher.modalities:
            raise GaalError(
                f"the teacher (a {self.teacher.config.method} run) has no {head} prediction; use multi",
                source=str(self.teacher.file),
                field="methods.kd.teacher_head",
            )

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoders.image(image))

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        teacher = self.teacher.model
        uses = teacher.modalities
        preds = teacher.predict(batch.image if "image" in uses else None, batch.tabular if "tabular" in uses else None)
        return getattr(preds, self.settings.teacher_head)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        return distillation_step(self, batch, optimizer, self.teacher_logits(batch))

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        logits = self.logits(image) if image is not None else None
        return Predictions(logits, logits, None)
