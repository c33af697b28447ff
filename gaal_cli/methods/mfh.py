"""MFH, the modality focusing hypothesis (ICLR 2023): distil only the teacher's modality-general part.

Xue, Gao, Ren and Zhao, "The modality focusing hypothesis: towards understanding crossmodal
knowledge distillation", ICLR 2023 (arXiv 2206.06487; code github zihuixue/MFH): Table I's MFH
row, a test-time tabular-missing method (the table helps in training; only the image at test).

The hypothesis: crossmodal KD helps the student only through the teacher's modality-general
decisive features, those that the student's modality also carries; the teacher's
modality-specific knowledge cannot be learnt from the student's input. The paper's Algorithm 1
ranks the teacher's feature channels by how much modality-general decisive information each
holds (its "overlap tag"), and the public code then distils a teacher whose other channels are
frozen. Here the teacher is a network of the table, the student one of the image:

    u        = f_T(x_T)                    the teacher's features (input of its head g), D channels
    z_S      = r(x_I)                      a trained image network's logits (the reference)
    u^(k)    = u with channel k permuted across the batch (x_I and the rest of u unpermuted)
    tag_k    = mean over batches, permutations of  MSE(g(u^(k)), z_S)               (Alg. 1)
    tag      <- (tag - min tag) / (max tag - min tag)
    R        = the floor(rho D) channels with the lowest tag (least modality-general)
    u~       = u with each channel in R replaced by its mean over the batch ("freeze")
    L        = (1 - alpha) CE(z_s, y) + alpha T^2 KL(softmax(g(u~) / T) || softmax(z_s / T)) / C

A channel whose permutation pulls the teacher's prediction away from what the image network
predicts is one the two modalities agree on: a high tag is modality-general. The student (the
image encoder and a linear head, the `image` row's network, trained from its initialisation)
learns from the frozen teacher's prediction g(u~), so only the kept channels shape its target
sample by sample (the frozen ones add the same constant to every sample of a batch). The loss
is kd.py's (Hinton's), with the official code's weights, its KL averaged over the batch and the
C classes as RAVDESS's `KLDivLoss(reduction='mean')` (helper.py l.193): under the official SGD
at a fixed rate that factor sets the size of the step.

The reference r, and so the agreement the tag measures (two official paths):
- RAVDESS (ravdess/main_overlap_tag.py; the default here, `reference` unset): the teacher- and
  student-modality networks are trained together with CE on each and an MSE between their
  logits (ravdess/utils/helper.py `train_network_for_overlap_tag`, 100 epochs, SGD 1e-2
  momentum 0.9), and that jointly trained teacher is the one tagged and distilled
  (main_overlap_tag.py `eval_overlap_tag` loads `teacher_mod_*_overlap.pkl`, the teacher the
  joint training saved). So r is a network trained to agree with the teacher where its
  modality can, the teacher one pulled towards what r can predict, and the distance a
  permutation adds measures how much of that agreement the channel carries. Here stage
  `reference` trains MFH's own reference network (a copy of the image encoder at
  initialisation plus a linear head, `reference_net`) and, with `joint_teacher` (default), a
  copy of the teacher run (`joint_teacher`, starting from the run's weights) with
  CE(r(x_I), y) + CE(t(x_T), y) + `agreement_weight` MSE(r(x_I), t(x_T)) for
  `reference_epochs` epochs; the tag and the distillation then use that copy (the teacher run
  itself is not changed). `joint_teacher: false` keeps the teacher frozen and trains the
  reference alone with CE + MSE (this file's earlier path).
- VGGSound (vggsound/modality_general/cal_overlap_permute.py): an independently trained video
  network, mean absolute difference, 100 permutations: `reference` set to a finished image run.
  This is not the default: r then does not agree with the teacher to begin with (on the
  embedded set the logits of Table I's image and tabular runs are ~14 apart), and permuting an
  informative teacher channel moves the teacher's logits towards its mean prediction, nearer to
  such an r, so the informative channels get the lowest tags (issue 18 measured the ranking
  inverted that way). Its distillation (vggsound/mfh_kd/main.py) zeroes the channels listed in
  `idx`, built as the entries of the tag's argsort that are >= 256: a fixed half of the 512
  channels whatever the tag, so that path gives no sign convention to follow; RAVDESS's does
  (mode 1: the lowest tags removed, README: "a larger value indicates ... more
  modality-general decisive information").

Stages (gaal_cli/methods/stages.py): `reference` (RAVDESS path only: the reference network and the
joint teacher learn, the student does not), `overlap_tag`, one label-free epoch over the training
split in which nothing trains (the tag needs no label); then `distil`, the rest of the run. Each
stage starts a fresh optimiser, by default the official one (`stage_optimizer`): constant SGD
1e-2, momentum 0.9, no weight decay, as RAVDESS builds it for the joint training
(helper.py l.252) and again for the distillation (main_overlap_tag.py l.50, `--lr 1e-2` l.70);
`stage_optimizer: null` uses the run's train.* instead (VGGSound's distillation, mfh_kd/main.py,
is AdamW 1e-3, weight decay 1e-5, StepLR(25, 0.1): a `stage_optimizer` block can give it). The
tag is fixed when `distil` starts and kept in the checkpoint (buffers `overlap_tag`, `keep`). At
test the student sees the image alone (the Image column).

Dependencies (`dependency_fields`, as KD's teacher): `teacher`, a run whose tabular encoder and
tabular prediction are the teacher (a `tabular` run: the paper's crossmodal setting is a
teacher network of the other modality; a concat run's tabular slice also works), trained to its
own convergence (with `joint_teacher`, the starting point of the joint copy). The CPU-scale
files give it its own run, `mfh_teacher` (up to 40 epochs with early stopping): their Table I
tabular run is bounded at 6 epochs and early-stopped at an epoch that suits Table I, on the
embedded set its first, where its targets are near uniform. The paper-scale files use Table I's
tabular run itself, which there trains up to 500 epochs with early stopping (patience 10), so
to its own convergence. Optionally `reference`, a run with an image prediction (above). Both
are frozen.

Lengths: the official joint training and distillation run 100 epochs each (`reference_epochs`,
`distil_epochs`, set in the paper-scale files); the CPU-scale files give the joint training 5
(the agreement MSE is on its plateau from the 2nd) and the distillation up to 14, what the
student needed to learn on the embedded set under the run's Adam (see the experiment files and
"Known": at the official SGD it does not learn within them).

Defaults, from the official code (the paper's body could not be read here; every default and
detail below comes from the public code): rho = 0.75 (ravdess/main_overlap_tag.py `--ratio
0.75`, mode 1: remove the channels with the lowest tags), 10 permutations per channel
(`--num-permute 10`), MSE over all logits (ravdess/utils/dist_utils.py), the penultimate layer
(`--place 5`; the VGGSound code likewise permutes the pooled features before the last fc),
frozen channels replaced by their batch mean (ravdess/utils/model.py `freeze`), distillation by
KL alone at temperature 1 (`--gt-weight 0 --pl-weight 1`; VGGSound's mfh_kd likewise):
alpha = 1, T = 1.

Known: at CPU scale on the embedded set the ranking stays inverted (seed 2022,
tools/mfh_channels.py, validation accuracy of the teacher with only its 64 kept / 64 random /
64 lowest-tagged of 256 channels varying; on the class, then on the pair c // 2 that both
modalities know). Measured with the run's Adam in every stage (before issue 27): frozen
teacher, 5 reference epochs 0.232 / 0.432 / 0.553 (pair 0.330 /
0.612 / 0.818); joint teacher, 5 epochs 0.401 / 0.590 / 0.630 (pair 0.697 / 0.875 / 0.900);
joint, 15 epochs 0.441 / 0.562 / 0.522 (pair 0.743 / 0.854 / 0.811). The joint teacher agrees
with the reference (logit MSE 0.48 after 2 epochs, against 11.7 after 5 with the frozen one),
yet a channel's tag falls with its class-discriminative logit spread (correlation -0.64 joint,
-0.88 frozen): with the MSE on raw logits, permuting a channel that the teacher's other
channels duplicate moves its logits towards the less confident reference. The official
algorithm measures the same distance; on this data it does not rank the modality-general
channels first. The student does learn from the joint teacher (synthetic/table1_mfh, seed 2022,
test accuracy): 0.316 with rho 0.75 (0.132 with the frozen teacher), 0.425 with rho 0.5, 0.440
with no channel frozen; freezing fewer channels helps, as an inverted tag predicts. With the
official optimiser (constant SGD 1e-2 in each stage, the KL averaged over classes; same seed,
teacher and lengths): joint teacher, 5 epochs 0.394 / 0.598 / 0.615 (pair 0.597 / 0.882 /
0.909), still inverted, and the student does not learn within the CPU file's 14 distillation
epochs: test accuracy 0.109 (chance 0.10), against 0.336 with the run's Adam (0.100 with the
SGD and the KL not averaged over classes). A result of this method at that scale may be wrong.

Departures:
- RAVDESS trains teacher and reference together from scratch; here the joint teacher starts
  from a finished teacher run (trained to its own convergence) and the reference from its
  initialisation, and the joint stage is shorter at CPU scale (`reference_epochs`).
- The tag is averaged over every batch of one pass over the training split (the VGGSound code
  averages over batches; the RAVDESS code keeps the last batch's only) and over the ranks of a
  data-parallel run; each channel gets its own random permutation per repeat, as in the code.
- The official Gaussian experiment retrains a teacher on the kept input features; with a
  trained teacher run that is not possible, so its channels are frozen instead (the deep-network
  experiments' way).
- The tag's batches are the run's (RAVDESS: 512 for the tag, 64 for training).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.kd import distillation_step
from gaal_cli.methods.stages import PlannedStage, Stage, StagedSettings, StageOptimizer
from gaal_cli.runs.dependencies import Dependency, required_dependency

#: most elements of one chunk of permuted feature copies (channels x batch x width)
CHUNK_ELEMENTS = 1 << 24
#: the official optimiser of the joint teacher-reference training and of the distillation
#: (ravdess/utils/helper.py `train_network_for_overlap_tag`, main_overlap_tag.py
#: `eval_overlap_tag`: SGD, `--lr 1e-2`, momentum 0.9, no weight decay, no scheduler)
OFFICIAL_OPTIMIZER = StageOptimizer(kind="sgd", lr=1e-2, momentum=0.9, weight_decay=0.0)


class MfhSettings(StagedSettings, MethodSettings):
    dependency_fields: ClassVar[tuple[str, ...]] = ("teacher", "reference")

    teacher: str | None = Field(
        None, description="the teacher: a finished run (folder or checkpoint) with a tabular prediction, e.g. tabular"
    )
    reference: str | None = Field(
        None,
        description="an image run to compare the teacher with (VGGSound's path); unset: MFH trains its own "
        "reference to agree with the teacher (RAVDESS's path)",
    )
    reference_epochs: int = Field(
        5, ge=1, description="epochs of the reference network's CE + logit-MSE training (RAVDESS path; official 100)"
    )
    distil_epochs: int | None = Field(
        None, ge=1, description="epochs of distillation (official: 100); unset: the rest of the run"
    )
    agreement_weight: float = Field(1.0, ge=0, description="weight of the reference's MSE to the teacher's logits")
    joint_teacher: bool = Field(
        True,
        description="RAVDESS path: a copy of the teacher trains with the reference (CE + CE + MSE) and that copy is "
        "tagged and distilled (official); false: the teacher stays frozen and only the reference learns",
    )
    remove_ratio: float = Field(
        0.75, ge=0, lt=1, description="rho: share of the teacher's channels frozen, those with the lowest tags (0.75)"
    )
    permutations: int = Field(10, ge=1, description="random permutations per channel and batch for the tag (10)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature T of teacher and student (official: 1)")
    alpha: float = Field(
        1.0, ge=0, le=1, description="weight of the distillation term; 1 - alpha on the labels (official: 1)"
    )
    stage_optimizer: StageOptimizer | None = Field(
        OFFICIAL_OPTIMIZER,
        description="each stage's fresh optimiser (official RAVDESS: constant SGD 1e-2, momentum 0.9, no weight "
        "decay); null: train.*",
    )


def permuted_channel_distances(
    features: torch.Tensor,
    reference_logits: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    perms: torch.Tensor,
) -> torch.Tensor:
    """One term of Algorithm 1's overlap tag for every channel of the teacher's features.

    Args:
        features: the teacher's features u, (B, D).
        reference_logits: the reference network's logits z_S, (B, C).
        head: the teacher's head g, features (N, D) to logits (N, C).
        perms: (D, B); row k is the permutation of the batch applied to channel k.

    Returns:
        (D,): MSE(g(u^(k)), z_S) over all B x C logits, u^(k) being u with column k permuted.
    """
    b, d = features.shape
    distances = []
    chunk = max(1, CHUNK_ELEMENTS // (b * d))
    for start in range(0, d, chunk):
        channels = torch.arange(start, min(start + chunk, d), device=features.device)
        copies = features.unsqueeze(0).repeat(len(channels), 1, 1)  # (k, B, D)
        copies[torch.arange(len(channels)), :, channels] = features[perms[channels], channels.unsqueeze(1)]
        logits = head(copies.reshape(-1, d)).reshape(len(channels), b, -1)
        distances.append((logits - reference_logits).pow(2).mean(dim=(1, 2)))
    return torch.cat(distances)


def kept_channels(tag: torch.Tensor, remove_ratio: float) -> torch.Tensor:
    """Boolean mask of the channels kept: all but the floor(ratio D) with the lowest tags."""
    keep = torch.ones_like(tag, dtype=torch.bool)
    keep[torch.argsort(tag, stable=True)[: int(remove_ratio * tag.numel())]] = False
    return keep


def min_max(tag: torch.Tensor) -> torch.Tensor:
    """The official normalisation of the tag to [0, 1] (all zeros when every channel ties)."""
    span = tag.max() - tag.min()
    return (tag - tag.min()) / span if span > 0 else torch.zeros_like(tag)


def freeze_channels(features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """u~: the channels not kept replaced by their mean over the batch (the official `freeze`)."""
    frozen = features.mean(dim=0, keepdim=True).expand_as(features)
    return torch.where(keep, features, frozen)


@contextmanager
def features_as_input(model: Method) -> Iterator[None]:
    """Inside the block the model's tabular encoder passes its input through, so that its
    tabular prediction is its head applied to given features (permuted or frozen channels)."""
    encoder = model.encoders.tabular
    model.encoders.tabular = nn.Identity()
    try:
        yield
    finally:
        model.encoders.tabular = encoder


@register_method("mfh", settings=MfhSettings)
class Mfh(Method):
    settings: MfhSettings
    #: the student's input, in training and at test (teacher and reference are other runs)
    modalities = ("image",)

    def __init__(self, encoders, num_classes, settings: MfhSettings, dependencies: dict):
        super().__init__(encoders, num_classes, settings)
        self.teacher = required_dependency(dependencies, "teacher", "mfh")
        self.reference = dependencies.get("reference")
        check_teacher(self.teacher, num_classes)
        if self.reference is not None:
            check_reference(self.reference)
            self.reference_net = None
        else:  # RAVDESS's path: an image network of MFH's own, trained to agree with the teacher
            self.reference_net = nn.ModuleDict(
                {"encoder": copy.deepcopy(encoders.image), "head": nn.Linear(encoders.feature_dim, num_classes)}
            )
        # RAVDESS's teacher is the one trained together with the reference: a copy of the teacher
        # run that learns in stage `reference` (None when evaluating a finished run: not needed)
        self.joint_teacher = None
        if self.reference is None and settings.joint_teacher and self.teacher.model is not None:
            self.joint_teacher = copy.deepcopy(self.teacher.model).requires_grad_(True)
        self.register_load_state_dict_pre_hook(drop_joint_teacher)
        encoders.tabular.requires_grad_(False)
        self.head = nn.Linear(encoders.feature_dim, num_classes)
        width = self.teacher.config.model.feature_dim
        # Algorithm 1's running sum, then the tag and the kept channels: in the checkpoint
        self.register_buffer("tag_sum", torch.zeros(width))
        self.register_buffer("tag_terms", torch.zeros(()))
        self.register_buffer("overlap_tag", torch.zeros(width))
        self.register_buffer("keep", torch.ones(width, dtype=torch.bool))

    @classmethod
    def stages(cls, settings: MfhSettings, epochs: int) -> Sequence[Stage]:
        optimizer = settings.stage_optimizer
        tag = (
            Stage("overlap_tag", 1, optimizer=optimizer, selects=False, labels=False, steps=False),
            Stage("distil", settings.distil_epochs, optimizer=optimizer),
        )
        if settings.reference is not None:
            return tag
        trains = ("reference_net.", "joint_teacher.") if settings.joint_teacher else ("reference_net.",)
        return (Stage("reference", settings.reference_epochs, trains, optimizer, selects=False), *tag)

    @property
    def tagging(self) -> bool:
        return self.stage is not None and self.stage.name == "overlap_tag"

    @property
    def referencing(self) -> bool:
        return self.stage is not None and self.stage.name == "reference"

    def on_stage_start(self, stage: PlannedStage) -> None:
        if stage.name == "reference":
            return
        if stage.name == "overlap_tag":
            self.tag_sum.zero_()
            self.tag_terms.zero_()
            return
        total, terms = self.comm.sum(self.tag_sum.clone()), self.comm.sum(self.tag_terms.clone())
        if terms == 0:
            raise RuntimeError("mfh: the distillation stage started before any overlap tag was computed")
        self.overlap_tag.copy_(min_max(total / terms))
        self.keep.copy_(kept_channels(self.overlap_tag, self.settings.remove_ratio))

    def idle_parameters(self) -> set[str]:
        """Nothing trains while the tag is computed; only the reference network (and the joint
        teacher) before; they rest after."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        joint = ("reference_net.", "joint_teacher.")
        if self.tagging:
            return names
        if self.referencing:
            return {n for n in names if not n.startswith(joint)}
        return {n for n in names if n.startswith(joint)}

    @property
    def teacher_model(self) -> Method:
        """The teacher that is tagged and distilled: the joint copy (RAVDESS) or the frozen run."""
        return self.teacher.model if self.joint_teacher is None else self.joint_teacher

    def reference_logits(self, image: torch.Tensor) -> torch.Tensor:
        """z_S: the reference network's logits (MFH's own, or the reference run's image prediction)."""
        if self.reference_net is None:
            return self.reference.model.predict(image, None).image
        return self.reference_net["head"](self.reference_net["encoder"](image))

    def reference_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """RAVDESS's joint loss (ravdess/utils/helper.py `train_network_for_overlap_tag`):
        CE(r, y) + CE(t, y) + w MSE(r, t), the teacher t learning too; with a frozen teacher
        (`joint_teacher: false`) CE(r, y) + w MSE(r, t)."""
        optimizer.zero_grad(set_to_none=True)
        joint = self.joint_teacher is not None
        if joint:
            self.joint_teacher.train()
        with torch.set_grad_enabled(joint):
            target = self.teacher_head(self.teacher_model.encoders.tabular(batch.tabular)).float()
        logits = self.reference_logits(batch.image)
        ce = cross_entropy(logits, batch.label)
        agreement = F.mse_loss(logits.float(), target)
        loss = ce + self.settings.agreement_weight * agreement
        stats = {"reference_ce": ce.detach(), "agreement_mse": agreement.detach()}
        if joint:
            teacher_ce = cross_entropy(target, batch.label)
            loss = loss + teacher_ce
            stats.update(teacher_ce=teacher_ce.detach(), teacher_acc=accuracy(target.detach(), batch.label))
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "acc": accuracy(logits.detach(), batch.label), **stats}

    def teacher_head(self, features: torch.Tensor) -> torch.Tensor:
        """g: the teacher's tabular prediction from its features."""
        teacher = self.teacher_model
        with features_as_input(teacher):
            return teacher.predict(None, features).tabular

    @torch.no_grad()
    def tag_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Algorithm 1 on one batch: add every channel's permuted distances to the running sum."""
        with torch.autocast(batch.tabular.device.type, enabled=False):  # a ranking of small differences
            self.teacher_model.eval()  # as the official code (and the joint copy's dropout off)
            features = self.teacher_model.encoders.tabular(batch.tabular).float()
            if self.reference_net is not None:
                self.reference_net.eval()  # a fixed network while it is compared (batch norm included)
            reference = self.reference_logits(batch.image).float()
            b, d = features.shape
            for _ in range(self.settings.permutations):
                perms = torch.argsort(torch.rand(d, b, device=features.device), dim=1)
                self.tag_sum += permuted_channel_distances(features, reference, self.teacher_head, perms)
                self.tag_terms += 1
            agreement = (self.teacher_head(features) - reference).pow(2).mean()
        return {"loss": agreement, "agreement_mse": agreement}

    @torch.no_grad()
    def teacher_logits(self, tabular: torch.Tensor) -> torch.Tensor:
        """g(u~): the teacher's prediction with the channels not kept frozen."""
        self.teacher_model.eval()
        features = self.teacher_model.encoders.tabular(tabular)
        return self.teacher_head(freeze_channels(features, self.keep))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoders.image(image))

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        if self.referencing:
            return self.reference_step(batch, optimizer)
        if self.tagging:
            return self.tag_step(batch)
        # RAVDESS's KLDivLoss(reduction='mean') averages over classes too: at SGD's fixed rate the
        # step's size depends on it
        return distillation_step(self, batch, optimizer, self.teacher_logits(batch.tabular), kl_per_class=True)

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        logits = self.logits(image) if image is not None else None
        return Predictions(logits, logits, None)


def drop_joint_teacher(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """A finished run evaluated without its teacher's weights has no joint teacher to load into:
    its copy's entries in the checkpoint are dropped (the student never reads them)."""
    if getattr(module, "joint_teacher", None) is None:
        for key in [k for k in state if k.startswith(prefix + "joint_teacher.")]:
            del state[key]


def check_teacher(dep: Dependency, num_classes: int) -> None:
    """The teacher must predict from its tabular features alone (a tabular or concat run).

    Raises:
        GaalError: a run without a tabular encoder or without a tabular-only prediction.
    """
    model = dep.model
    if model is None:  # rebuilt from a record to evaluate a finished run: it was checked in training
        return
    fits = "tabular" in model.modalities
    if fits:
        zeros = torch.zeros(2, dep.config.model.feature_dim, device=next(model.parameters()).device)
        with torch.no_grad(), features_as_input(model):
            probe = model.predict(None, zeros).tabular
        fits = probe is not None and probe.shape == (2, num_classes)
    if not fits:
        raise GaalError(
            f"the teacher must give a prediction from the table alone (a tabular or concat run), "
            f"not a {dep.config.method} run",
            source=str(dep.file),
            field="methods.mfh.teacher",
        )


def check_reference(dep: Dependency) -> None:
    """The reference must give an image-only prediction (an image or concat run).

    Raises:
        GaalError: a run that reads no image.
    """
    if dep.model is not None and "image" not in dep.model.modalities:
        raise GaalError(
            f"the reference must be a run that predicts from the image (e.g. image), not a {dep.config.method} run",
            source=str(dep.file),
            field="methods.mfh.reference",
        )
