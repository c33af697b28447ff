"""MMCL: multimodal contrastive pretraining on image-table pairs, then an image classifier.

Hager, Menten and Rueckert, "Best of both worlds: multimodal contrastive learning with tabular
and imaging data", CVPR 2023: Table I's MMCL row, a test-time tabular-missing method (the table
helps in pretraining; only the image at test, so the report's Image column holds its accuracy).

Stage 1, `pretrain` (label-free: the engine withholds the labels, gaal_cli/methods/stages.py). Each
encoder gets a projection head g (Linear d->d, ReLU, Linear d->`projection_dim`: the SimCLR
head of the official code's lightly 1.2.22, no batch norm). For a batch of B image-table pairs,
the image a view x̃_I (SimCLR-style augmentation) and the table a SCARF-corrupted row x̃_T:

    z_I = normalize(g_I(phi_I(x̃_I))),   z_T = normalize(g_T(phi_T(x̃_T)))
    S   = z_I z_T^T / tau                                      (B x B, cosine / temperature)
    L   = lambda CE(S, diag) + (1 - lambda) CE(S^T, diag)      (CLIP's symmetric InfoNCE)

Row i of S scores image i against every table of the batch; its positive is table i (the same
subject). The stage's `acc` is the image->table top-1 matching accuracy (no labels exist here).

SCARF corruption (official ContrastiveImagingAndTabularDataset.corrupt): in each row,
int(D * corruption_rate) of its D fields, chosen without replacement, are replaced by the same
field of a row drawn uniformly from the batch (any row, itself included): a draw from the
column's empirical marginal. It acts on the raw row (continuous values, category codes), before
the tabular encoder's one-hot, as the official code corrupts before one-hot encoding.

Image view (official grab_image_augmentations, DVM): with probability `augmentation_rate` an
image gets ColorJitter(0.8, 0.8, 0.8) p=0.8, grayscale p=0.2, GaussianBlur(29, sigma 0.1-2)
p=0.5, RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3), horizontal flip p=0.5; otherwise it is
kept as it is. All of it runs on the batch tensor with gaal's per-image batch implementation of
that recipe (gaal_cli/data/images.RecipeAugmentation, whose crop scale is 0.6-1 for GAAL's
supervised training; MMCL's pretraining crop draws from 0.08-1). The colour steps work on the
0-255 pixel scale, so the batch is un-normalised and re-normalised with `image_normalize`,
which must say how the data normalises its images.

Stage 2, `probe`: an image classifier, a Linear head on the pretrained image encoder, trained
with cross-entropy. Each probe training image is augmented with probability
`probe_augmentation_rate` (official eval_train_augment_rate 0.8; ImageDataset's
grab_hard_eval_image_augmentations, the DVM recipe of RecipeAugmentation, crops 60-100 %).
`finetune: frozen` (default) is the paper's linear probing: the encoder is fixed (eval mode,
no gradient) and only the head learns; `trainable` is its fine-tuning: the
image encoder learns with the head. The tabular encoder and both projection heads are unused
after stage 1. Frozen is the default because it is the official code's (`finetune_strategy:
frozen`, `eval_classifier: linear`; its README: "a model will be evaluated with the default
settings (frozen eval, lr=1e-3)"), which GAAL's code forks, and because GAAL's Table I puts
MMCL on DVM (.8203) below its supervised ResNet50 (.8743), as a linear probe would land and a
fine-tuned encoder would not be expected to. The paper does not say which one Table I used.

Defaults are the official code's (configs/config.yaml, configs/models/resnet18.yaml and
resnet50.yaml, models/pretraining.py, models/Evaluator.py): tau = 0.1, lambda = 0.5, projection
128, corruption 0.3, augmentation rate 0.95 (probe 0.8); pretraining 500 epochs with Adam,
weight decay 1e-4, 10 epochs of linear warm-up from 0 then a cosine anneal to 0 over the rest
(`scheduler: anneal`, pl_bolts' LinearWarmupCosineAnnealingLR stepped per epoch; gaal_cli/methods/stages.py);
the probe Adam lr 1e-3, no weight decay, no schedule, up to 500 epochs with early stopping on
validation accuracy (patience 10: train.patience; the official min_delta 2e-4 is train.min_delta,
set in the experiment files). Both optimisers are built fresh at each stage
(`pretrain_optimizer`, `probe_optimizer`; null: the run's train.*), so the default plan needs
train.epochs = 1000; fewer shrinks both stages (and the warm-up) in proportion.

Pretraining rate per backbone, as the official configs: 3e-3 for ResNet50 (the paper-scale
experiment files set it), 3e-4 for ResNet18 (the default here). The CPU backbones (test_resnet,
resnet18-sized or smaller) take ResNet18's 3e-4: they are closer to it in size, and on the
embedded set 3e-3 collapses the projections (spread 0.3 against 3.5 at 3e-4) and leaves the
loss on its ln(batch) plateau (issue 18's measurement). The official ResNet starts from random
weights (torchvision_ssl_encoder, no ImageNet weights are loaded), so model.pretrained is false.

Departures:
- The corruption draws replacement values from the batch, not from the whole training split.
- The augmentations act on the batch the loader hands over, so MMCL's experiment files leave
  data.augment off (with it on, every image would be augmented a second time); the crops start
  from the cached pixels at training resolution.
- Both stages share data.batch_size (official: 512 for pretraining).
- The frozen probe keeps the encoder in eval mode (batch norm on its running statistics); the
  official Lightning evaluator leaves a frozen encoder's batch norm in training mode.
- The official online evaluator and validation loss of the pretraining are not kept: validation
  during stage 1 reports the untrained head, and stage 1 never selects the checkpoint.
- The probe's training batches are shuffled, as the engine draws every training loader; the
  official evaluate.py builds the probe's loader with shuffle=False (l.61-64; a sampler only
  with `weighted_sampler`), so its probe sees the training file in the same order every epoch.
  Not followed: that order is whatever the prepared file has (gaal's recipes do not promise a
  random one; a file grouped by class would give batches of one class), and one training loader
  serves both stages.
- The tabular encoder is the project's MLP (the encoder every row uses) with torch's default
  initialisation; the official TabularEncoder draws its linear weights Kaiming-normal (fan_in,
  zero biases; configs' `init_strat: kaiming`). It only feeds pretraining, and batch norm
  follows each hidden linear layer (as in the official encoder), which undoes those layers'
  weight scale; the last layer's scale and the weights' directions differ.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.data.images import IMAGENET_MEAN, IMAGENET_STD, RecipeAugmentation
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms
from gaal_cli.methods.stages import Stage, StagedSettings, StageOptimizer

#: the official pretraining optimiser (MultimodalSimCLR.configure_optimizers; ResNet18's lr, 3e-3 for
#: ResNet50; Pretraining.initialize_scheduler 'anneal': 10 warm-up epochs, then cosine)
PRETRAIN_OPTIMIZER = StageOptimizer(kind="adam", lr=3e-4, weight_decay=1e-4, cosine=True, warmup_epochs=10)
#: the official evaluator's optimiser (Evaluator.configure_optimizers: lr_eval, weight_decay_eval)
PROBE_OPTIMIZER = StageOptimizer(kind="adam", lr=1e-3, weight_decay=0.0)


class MmclSettings(StagedSettings, MethodSettings):
    pretrain_epochs: int = Field(500, ge=1, description="epochs of label-free contrastive pretraining (code: 500)")
    probe_epochs: int = Field(500, ge=1, description="epochs of the image classifier stage, an upper bound (code: 500)")
    finetune: Literal["frozen", "trainable"] = Field(
        "frozen", description="stage 2: linear probe on the frozen image encoder, or fine-tune it (code: frozen)"
    )
    temperature: float = Field(0.1, gt=0, description="tau of the contrastive loss (code: 0.1)")
    lambda_image: float = Field(
        0.5, ge=0, le=1, description="weight of the image->table direction; 1 - it on table->image (code: 0.5)"
    )
    projection_dim: int = Field(128, ge=1, description="output width of both projection heads (code: 128)")
    corruption_rate: float = Field(0.3, ge=0, le=1, description="fraction of each row's fields SCARF replaces")
    augmentation_rate: float = Field(0.95, ge=0, le=1, description="chance that a pretraining image is augmented")
    probe_augmentation_rate: float = Field(
        0.8, ge=0, le=1, description="chance that a probe training image is augmented (code: 0.8)"
    )
    image_normalize: Literal["none", "imagenet"] = Field(
        "none", description="how the data normalises images (data.normalize as resolved: none for dvm and synthetic)"
    )
    pretrain_optimizer: StageOptimizer | None = Field(
        PRETRAIN_OPTIMIZER,
        description="stage 1's fresh optimiser (code: Adam 3e-4 for ResNet18, 3e-3 for ResNet50, wd 1e-4, "
        "10 warm-up epochs then cosine); null: train.*",
    )
    probe_optimizer: StageOptimizer | None = Field(
        PROBE_OPTIMIZER, description="stage 2's fresh optimiser (code: Adam 1e-3, no wd); null: train.*"
    )


def clip_loss(
    z_image: torch.Tensor, z_table: torch.Tensor, temperature: float, lambda_image: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric InfoNCE between paired embeddings (row i of each is one subject).

    Returns:
        The loss lambda CE(S, diag) + (1 - lambda) CE(S^T, diag) and the similarity logits S
        (B x B: image i against table j), S = normalize(z_image) normalize(z_table)^T / temperature.
    """
    logits = F.normalize(z_image.float(), dim=1) @ F.normalize(z_table.float(), dim=1).T / temperature
    target = torch.arange(len(logits), device=logits.device)
    loss = lambda_image * F.cross_entropy(logits, target) + (1 - lambda_image) * F.cross_entropy(logits.T, target)
    return loss, logits


def scarf_corrupt(table: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SCARF corruption: in each row, int(D * rate) fields (without replacement) take the same
    field's value from a row drawn uniformly from the batch.

    Returns:
        The corrupted table and the mask (B x D, bool) of the fields that were drawn anew.
    """
    n, d = table.shape
    k = int(d * rate)
    chosen = torch.rand(n, d, device=table.device).argsort(dim=1)[:, :k]
    mask = torch.zeros(n, d, dtype=torch.bool, device=table.device).scatter_(1, chosen, True)
    donors = torch.randint(0, n, (n, d), device=table.device)
    drawn = table.gather(0, donors)
    return torch.where(mask, drawn, table), mask


class PretrainAugmentation(RecipeAugmentation):
    """MMCL's pretraining view of an image: the DVM recipe with crops of 8-100 % of the area."""

    SCALE = (0.08, 1.0)


def pixel_scale(normalize: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) with pixels_0_255 = (image * scale + shift): undoes the data's normalisation."""
    if normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return mean * 255, std * 255
    return torch.zeros((), device=device), torch.full((), 255.0, device=device)


def augment_view(
    images: torch.Tensor,
    rate: float,
    normalize: str,
    augmentation: RecipeAugmentation,
    chosen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each image augmented with probability `rate` (else unchanged), in the batch's own scale;
    `chosen` (B, bool) says which instead, when the caller drew it (TIP couples it to the table)."""
    with torch.autocast(images.device.type, enabled=False):  # data processing: float32 under bf16 training
        shift, scale = pixel_scale(normalize, images.device)
        pixels = images.float() * scale + shift
        augmented = augmentation(pixels)
        if chosen is None:
            chosen = torch.rand(len(images)) < rate
        chosen = chosen.to(images.device).view(-1, 1, 1, 1)
        return ((torch.where(chosen, augmented, pixels) - shift) / scale).to(images.dtype)


@register_method("mmcl", settings=MmclSettings)
class Mmcl(Method):
    settings: MmclSettings
    #: the classifier's input at test (the table is read in pretraining only)
    modalities = ("image",)

    def __init__(self, encoders, num_classes, settings: MmclSettings):
        super().__init__(encoders, num_classes, settings)
        d, p = encoders.feature_dim, settings.projection_dim
        self.project = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, p)) for m in ("image", "tabular")}
        )
        self.head = nn.Linear(d, num_classes)
        self.augmentation: RecipeAugmentation | None = None
        self.probe_augmentation: RecipeAugmentation | None = None
        self.normalize_checked = False

    @classmethod
    def stages(cls, s: MmclSettings, epochs: int) -> list[Stage]:
        pretrain_trains = ("encoders.", "project.")
        probe_trains = ("head.",) if s.finetune == "frozen" else ("head.", "encoders.image.")
        return [
            Stage("pretrain", s.pretrain_epochs, pretrain_trains, s.pretrain_optimizer, selects=False, labels=False),
            Stage("probe", s.probe_epochs, probe_trains, s.probe_optimizer),
        ]

    @property
    def probing(self) -> bool:
        return self.stage is not None and self.stage.index == 1

    @property
    def frozen(self) -> bool:
        return self.probing and self.settings.finetune == "frozen"

    def on_epoch_start(self, epoch: int) -> None:
        if self.frozen:  # a fixed feature extractor: batch norm on its running statistics
            self.encoders.image.eval()

    def idle_parameters(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if not self.probing:
            return {n for n in names if n.startswith("head.")}
        learn = ("head.",) if self.frozen else ("head.", "encoders.image.")
        return {n for n in names if not n.startswith(learn)}

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        stats = self.probe_loss(batch) if self.probing else self.contrastive_loss(batch)
        stats["loss"].backward()
        stats.update(encoder_grad_norms(self.encoders, ("image",) if self.probing else ("image", "tabular")))
        optimizer.step()
        stats["loss"] = stats["loss"].detach()
        return stats

    def contrastive_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage 1: CLIP loss between an augmented image view and a corrupted table; no label read."""
        s = self.settings
        self.check_normalization(batch.image)
        if self.augmentation is None:
            self.augmentation = PretrainAugmentation(batch.image.shape[-1])
        image = augment_view(batch.image, s.augmentation_rate, s.image_normalize, self.augmentation)
        table, _ = scarf_corrupt(batch.tabular, s.corruption_rate)
        z_image = self.project["image"](self.encoders.image(image))
        z_table = self.project["tabular"](self.encoders.tabular(table))
        loss, logits = clip_loss(z_image, z_table, s.temperature, s.lambda_image)
        target = torch.arange(len(logits), device=logits.device)
        return {"loss": loss, "acc": accuracy(logits.detach(), target)}

    def check_normalization(self, image: torch.Tensor) -> None:
        """Once per run (a host read of the batch): see `refuse_normalised_images`."""
        if not self.normalize_checked:
            self.normalize_checked = True
            refuse_normalised_images(
                image, self.settings.image_normalize, "mmcl", "the colour augmentations of pretraining"
            )

    def probe_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage 2: cross-entropy of the image classifier (the encoder fixed when frozen) on images
        augmented with probability `probe_augmentation_rate`."""
        s = self.settings
        image = batch.image
        if s.probe_augmentation_rate > 0:
            self.check_normalization(image)
            if self.probe_augmentation is None:
                self.probe_augmentation = RecipeAugmentation(image.shape[-1])
            image = augment_view(image, s.probe_augmentation_rate, s.image_normalize, self.probe_augmentation)
        with torch.set_grad_enabled(not self.frozen):
            u = self.encoders.image(image)
        logits = self.head(u)
        return {"loss": cross_entropy(logits, batch.label), "acc": accuracy(logits.detach(), batch.label)}

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        logits = self.head(self.encoders.image(image)) if image is not None else None
        return Predictions(logits, logits, None)


def refuse_normalised_images(image: torch.Tensor, normalize: str, method: str, purpose: str) -> None:
    """Images in [0, 1] are never negative: a negative pixel means the data normalised them, and a
    method whose own augmentations assume the pixel scale must be told (`image_normalize`).

    Raises:
        GaalError: negative pixels while `methods.<method>.image_normalize` is 'none'.
    """
    if normalize == "none" and bool((image < 0).any()):
        raise GaalError(
            "the training images are mean/std-normalised (they have negative pixels), but "
            f"methods.{method}.image_normalize is 'none'; set it to 'imagenet' so that {purpose} "
            "work on the pixel scale",
            field=f"methods.{method}.image_normalize",
        )
