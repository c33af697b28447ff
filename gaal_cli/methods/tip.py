"""TIP: tabular-image pre-training, then a fused classifier (Du et al., ECCV 2024; Table I, TIP).

Du, Zheng, Wang, Bai, O'Regan and Qin, "TIP: Tabular-Image Pre-training for Multimodal
Classification with Incomplete Data", ECCV 2024. Facts below are from the paper's description
and its official code (github siyi-wind/TIP: models/Tip_utils/Transformer.py, Tip_pretraining.py,
Tip_downstream.py, models/Tips/TipModel3Loss.py, utils/reconstruct_loss.py,
datasets/ContrastiveReconstructImagingAndTabularDataset.py, configs/config_dvm_TIP.yaml), read
for facts only. A fusion method: its prediction is the Multi column.

Network.
- Image encoder: the project's (`encoders.image`). Its backbone's feature map (B x C x H x W,
  or a ViT's tokens) gives the image tokens the interaction module attends to (the official
  ResNet's last feature map); its pooled, projected feature u_I feeds the contrastive loss.
- Tabular encoder: TIP's own transformer; it takes the role of `encoders.tabular`, which TIP
  leaves frozen and unused (its MLP stays in the checkpoint, untouched). Each cell is a token:
  a continuous value x by a linear map x·w + b, a categorical code c of column j by a row of one
  embedding table shared by all categorical columns (row offset_j + c); a masked cell is the
  learnable mask token instead. A CLS token is prepended, a learned column embedding added
  (CLS has its own), then LayerNorm and `tabular_layers` pre-norm self-attention blocks. A
  masked cell is hidden from every other token's attention (it still attends itself), as the
  official code's attention mask does.
- Multimodal interaction module: image tokens → Linear + LayerNorm to the width `dim`; then
  `multimodal_layers` blocks in which the tabular tokens self-attend, cross-attend to the image
  tokens and pass an MLP; a final LayerNorm. Its CLS output h is the fused representation.

Pretraining (stage `pretrain`, label-free: the engine withholds the labels), per batch:

    L = (L_itc + L_itm + L_mtr) / 3

- L_itc (image-tabular contrastive, CLIP-style): z_I = g_I(u_I), z_T = g_T(CLS of the tabular
  encoder on a corrupted copy of the table), g: the SimCLR projection head of lightly 1.2.22, the
  version TIP's environment.yaml pins (Linear-ReLU-Linear, both with bias, no batch norm), to
  128, both L2-normalised; S = z_I z_T^T / τ;
  L_itc = λ0 CE(S, diag) + (1 - λ0) CE(S^T, diag). The corrupted copy replaces int(0.3·N) cells
  of each row by the same column's value in another row (SCARF-style, as the official ITC view).
- L_itm (image-tabular matching): a linear head on h says matched (1) or not (0). Positives are
  the B true pairs; for each image a hard negative table is drawn with probability
  ∝ softmax_j(S_ij) + 1e-4 (j ≠ i), and for each table a hard negative image likewise from S^T:
  B positives, 2B negatives, cross-entropy over all 3B.
- L_mtr (masked tabular reconstruction): round(0.5·N) cells of each row are masked (mask token
  and attention mask); from the multimodal outputs of the masked cells a linear regressor
  predicts a continuous cell's value (squared error) and a linear classifier over all categories
  of all columns predicts a categorical cell's offset_j + code (cross-entropy);
  L_mtr = (mean CE over masked categorical cells + mean squared error over masked continuous
  cells) / 2. Unmasked cells contribute nothing (`masked_reconstruction_loss`).

Fine-tuning (stage `finetune`): a linear classifier on h, cross-entropy. As the official
fine-tuning dataset (ImagingAndTabularDataset): each training sample is augmented with
probability `finetune_augmentation_rate` (0.8), and a sample whose image is augmented also has
its table corrupted (`corruption_rate` of its cells, SCARF-style as above); the image
augmentation is the DVM recipe (gaal_cli/data/images.RecipeAugmentation) run by TIP itself, so
TIP's experiment files leave data.augment off for fine-tuning to decide which images change.
`finetune: frozen` (the default: the official configs' `finetune_strategy: frozen`,
config_dvm_TIP.yaml l.111) trains the classifier on frozen, eval-mode encoders (a linear probe);
`trainable` (the official "fully fine-tuning", an option) trains the whole network. Which of
the two GAAL's TIP row used is not stated; Table I's paper-scale TIP files follow the official
config. The CPU-scale Table I files set `trainable`: after 3 pretraining epochs (official 500)
a probe of the frozen encoders would measure how far 3 epochs of pretraining get rather than
TIP's classifier (synthetic/table1's TIP run, seed 2022: test Multi 0.886 fine-tuned, 0.234 as
a frozen probe with min_delta 2e-4).

Predictions: Multi only (TIP has no unimodal heads: Image and Tabular are None). A table missing
at test time is TIP's own incomplete-data path at its extreme: every cell masked, so the
prediction rests on the image through the interaction module (the paper evaluates partly missing
tables, not wholly missing ones). An image missing at test time has no TIP prediction (the
interaction module needs image tokens): Multi is None.

Defaults (official configs/config_dvm_TIP.yaml unless said): τ = 0.1, λ0 = 0.5, projection 128,
corruption 0.3, mask rate 0.5 (replace_special_rate; random replacement 0), 8 heads, MLP ratio 4,
no dropout; pretraining Adam lr 3e-4, weight decay 1.5e-6, 500 epochs, 10 epochs of linear
warm-up then a cosine anneal (gaal_cli/methods/stages.py, as MMCL's); fine-tuning Adam lr 1e-4,
no weight decay, constant rate (the evaluator builds a ReduceLROnPlateau but does not return it),
500 epochs at most (the official max_epochs), early stopping on validation accuracy with
patience 10 and min_delta 2e-4 (trainers/evaluate.py l.132: train.patience and train.min_delta,
set in the paper-scale files). The official width and depth, dim 512 and 4 + 4 layers, are
paper scale; the defaults here are CPU-sized (dim 64, 2 + 2 layers, 4 heads) like the
project's other model defaults; the paper-scale experiment files set the official ones.

Departures:
- Views: as the official training step (TipModel3Loss.training_step: ITC, ITM and MTR all read
  `im_views[1]`, the view augmented with probability `augmentation_rate`, 0.95; the always
  augmented `im_views[0]` only sizes the batch), one image view serves all three losses; its
  augmentation is MMCL's pretraining recipe (crops 8-100 %) run on the batch. The corrupted
  table draws replacement values from the batch's rows, not from the whole training table.
- One width `dim` for the tabular and multimodal transformers (the official DVM config uses 512
  for both, so its tabular-to-multimodal projection is the identity). Attention is torch's
  MultiheadAttention (q/k/v with biases; the official has none on q/k/v).
- The official MTR loss is NaN for a batch with no masked cell of one kind; here the missing
  term is left out of the mean.
- A partly missing table (the paper's incomplete-data fine-tuning) needs per-cell missing masks,
  which gaal's data does not carry; only the wholly missing table above is handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.data.images import RecipeAugmentation
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.mmcl import (  # TIP builds on MMCL: the same ITC loss, corruption and views
    PretrainAugmentation,
    augment_view,
    clip_loss,
    refuse_normalised_images,
    scarf_corrupt,
)
from gaal_cli.methods.stages import Stage, StagedSettings, StageOptimizer

#: official pretraining optimiser (TipModel3Loss.configure_optimizers; config lr, weight_decay)
PRETRAIN_OPTIMIZER = StageOptimizer(kind="adam", lr=3e-4, weight_decay=1.5e-6, cosine=True, warmup_epochs=10)
#: official fine-tuning optimiser (Evaluator.configure_optimizers; lr_eval, weight_decay_eval)
FINETUNE_OPTIMIZER = StageOptimizer(kind="adam", lr=1e-4, weight_decay=0.0)

#: parameter-name prefixes of the network the fine-tuned classifier reads
BACKBONE = ("encoders.image.backbone.", "tabular.", "image_tokens.", "multimodal.")
#: heads used only by the pretraining losses
PRETRAIN_HEADS = ("encoders.image.project.", "projection.", "itm_head.", "predictor.")


class TipSettings(StagedSettings, MethodSettings):
    pretrain_epochs: int = Field(500, ge=1, description="epochs of label-free pretraining (official max_epochs 500)")
    finetune_epochs: int = Field(500, ge=1, description="epochs of fine-tuning at most (official max_epochs 500)")
    finetune: Literal["trainable", "frozen"] = Field(
        "frozen",
        description="the classifier only, on frozen encoders (official finetune_strategy), or the whole network",
    )
    pretrain_optimizer: StageOptimizer | None = Field(
        PRETRAIN_OPTIMIZER, description="pretraining's fresh optimiser (official Adam 3e-4); null: train.*"
    )
    finetune_optimizer: StageOptimizer | None = Field(
        FINETUNE_OPTIMIZER, description="fine-tuning's fresh optimiser (official Adam 1e-4); null: train.*"
    )
    dim: int = Field(64, ge=1, description="width of the tabular and multimodal transformers (paper 512)")
    tabular_layers: int = Field(2, ge=1, description="tabular transformer blocks (paper 4)")
    multimodal_layers: int = Field(2, ge=1, description="interaction-module blocks (paper 4)")
    heads: int = Field(4, ge=1, description="attention heads; must divide dim (paper 8)")
    dropout: float = Field(0.0, ge=0, lt=1, description="embedding and block dropout (official 0)")
    projection_dim: int = Field(128, ge=1, description="output width of the contrastive projections")
    temperature: float = Field(0.1, gt=0, description="τ of the contrastive loss")
    lambda_0: float = Field(0.5, ge=0, le=1, description="weight of the image-to-table direction of L_itc")
    corruption_rate: float = Field(0.3, ge=0, lt=1, description="share of cells corrupted in the contrastive view")
    mask_rate: float = Field(0.5, gt=0, lt=1, description="share of cells masked for reconstruction")
    augmentation_rate: float = Field(
        0.95, ge=0, le=1, description="pretraining: chance that an image is augmented (official 0.95)"
    )
    finetune_augmentation_rate: float = Field(
        0.8, ge=0, le=1, description="fine-tuning: chance a sample's image is augmented and its table corrupted (0.8)"
    )
    image_normalize: Literal["none", "imagenet"] = Field(
        "none", description="how the data normalises images (data.normalize as resolved: none for dvm and synthetic)"
    )

    @field_validator("heads")
    @classmethod
    def _heads_divide_dim(cls, heads: int, info) -> int:
        dim = info.data.get("dim")
        if dim is not None and dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        return heads


@dataclass(frozen=True)
class TableLayout:
    """Which columns are continuous and which categorical, from MMCL field lengths."""

    field_lengths: tuple[int, ...]

    @property
    def continuous(self) -> list[int]:
        return [j for j, k in enumerate(self.field_lengths) if k == 1]

    @property
    def categorical(self) -> list[int]:
        return [j for j, k in enumerate(self.field_lengths) if k > 1]

    @property
    def offsets(self) -> list[int]:
        """Row of each categorical column's first category in the shared embedding table."""
        sizes = [self.field_lengths[j] for j in self.categorical]
        return [sum(sizes[:i]) for i in range(len(sizes))]

    @property
    def n_categories(self) -> int:
        return sum(self.field_lengths[j] for j in self.categorical)


def category_targets(table: torch.Tensor, layout: TableLayout) -> torch.Tensor:
    """Each categorical cell's row in the shared table: its column's offset + its code (B x N_cat)."""
    cat = layout.categorical
    sizes = torch.tensor([layout.field_lengths[j] for j in cat], device=table.device)
    codes = torch.minimum(table[:, cat].long().clamp_min(0), sizes - 1)
    return codes + torch.tensor(layout.offsets, device=table.device, dtype=torch.long)


def choose_cells(batch: int, n_fields: int, count: int, device=None) -> torch.Tensor:
    """A boolean B x N mask with `count` cells of each row chosen uniformly, independently per row."""
    rank = torch.rand(batch, n_fields, device=device).argsort(dim=1).argsort(dim=1)
    return rank < count


def choose_masked_cells(batch: int, n_fields: int, rate: float, device=None) -> torch.Tensor:
    """The cells MTR masks: round(rate·N) of each row (the official count)."""
    return choose_cells(batch, n_fields, round(n_fields * rate), device)


def masked_reconstruction_loss(
    cat_logits: torch.Tensor | None,
    con_pred: torch.Tensor | None,
    table: torch.Tensor,
    masked: torch.Tensor,
    layout: TableLayout,
) -> torch.Tensor:
    """L_mtr: mean CE over masked categorical cells and mean squared error over masked continuous
    ones, averaged (a kind with no masked cell in the batch is left out).

    Args:
        cat_logits: B x N_cat x (all categories) logits at the categorical columns, or None.
        con_pred: B x N_con predicted values at the continuous columns, or None.
        table: the unmasked B x N table (codes and values in their columns).
        masked: B x N boolean, True where a cell was masked.
    """
    terms = []
    cat, con = layout.categorical, layout.continuous
    if cat and bool(masked[:, cat].any()):
        keep = masked[:, cat]
        ce = F.cross_entropy(cat_logits[keep].float(), category_targets(table, layout)[keep])
        terms.append(ce)
    if con and bool(masked[:, con].any()):
        keep = masked[:, con]
        terms.append(((con_pred.float() - table[:, con].float())[keep] ** 2).mean())
    if not terms:
        return table.new_zeros(())
    return torch.stack(terms).mean()


def hard_negatives(similarity: torch.Tensor) -> torch.Tensor:
    """For each row i, one index j ≠ i drawn with probability ∝ softmax_j(S_ij) + 1e-4 (official ITM)."""
    weights = torch.softmax(similarity.detach().float(), dim=1) + 1e-4
    weights.fill_diagonal_(0)
    return torch.multinomial(weights, 1).squeeze(1)


class Block(nn.Module):
    """Pre-norm transformer block (TIP's BERT/BLIP layout): self-attention, optionally
    cross-attention to image tokens, then an MLP, each a residual branch."""

    def __init__(self, dim: int, heads: int, cross: bool, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim) if cross else None
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, hidden: torch.Tensor | None = None, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.norm1(x)
        mask = None if hidden is None else hidden.repeat_interleave(self.heads, dim=0)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        if self.cross_attn is not None:
            h = self.cross_norm(x)
            x = x + self.cross_attn(h, image, image, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TabularTransformer(nn.Module):
    """TIP's tabular encoder: one token per cell (plus CLS), masked cells as a learnable token."""

    def __init__(self, layout: TableLayout, dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.layout = layout
        n = len(layout.field_lengths)
        self.register_buffer("cat_offsets", torch.tensor(layout.offsets, dtype=torch.long), persistent=False)
        self.cat_embedding = nn.Embedding(layout.n_categories, dim) if layout.categorical else None
        self.con_embedding = nn.Linear(1, dim) if layout.continuous else None
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.column_embedding = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, cross=False, dropout=dropout) for _ in range(layers))
        for p in (self.cls, self.mask_token, self.column_embedding):
            nn.init.trunc_normal_(p, std=0.02)

    def cell_tokens(self, table: torch.Tensor) -> torch.Tensor:
        """B x N x dim: each cell's value embedding, in the table's column order."""
        parts = {}
        if self.con_embedding is not None:
            parts[tuple(self.layout.continuous)] = self.con_embedding(table[:, self.layout.continuous, None])
        if self.cat_embedding is not None:
            parts[tuple(self.layout.categorical)] = self.cat_embedding(category_targets(table, self.layout))
        first = next(iter(parts.values()))  # its dtype: float32, or bf16 under autocast
        tokens = first.new_zeros(len(table), table.shape[1], first.shape[-1])
        for columns, embedded in parts.items():
            tokens[:, list(columns)] = embedded.to(tokens.dtype)
        return tokens

    def forward(self, table: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """B x (1 + N) x dim token features; `masked` cells are the mask token and hidden from the others."""
        tokens = self.cell_tokens(table)
        hidden = None
        if masked is not None:
            tokens = torch.where(masked[..., None], self.mask_token.to(tokens.dtype), tokens)
            keys = torch.cat([masked.new_zeros(len(masked), 1), masked], dim=1)
            eye = torch.eye(keys.shape[1], dtype=torch.bool, device=keys.device)
            hidden = keys[:, None, :] & ~eye
        x = torch.cat([self.cls.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], dim=1)
        x = self.dropout(self.norm(x + self.column_embedding))
        for block in self.blocks:
            x = block(x, hidden=hidden)
        return x


class InteractionModule(nn.Module):
    """TIP's multimodal interaction module: tabular tokens cross-attend to image tokens."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, cross=True, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, table_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = table_tokens
        for block in self.blocks:
            x = block(x, image=image_tokens)
        return self.norm(x)


class Reconstructor(nn.Module):
    """MTR heads on the multimodal cell outputs: a classifier over all categories, a regressor."""

    def __init__(self, layout: TableLayout, dim: int):
        super().__init__()
        self.layout = layout
        self.categorical = nn.Linear(dim, layout.n_categories) if layout.categorical else None
        self.continuous = nn.Linear(dim, 1) if layout.continuous else None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cells = tokens[:, 1:]
        cat = self.categorical(cells[:, self.layout.categorical]) if self.categorical is not None else None
        con = self.continuous(cells[:, self.layout.continuous]).squeeze(-1) if self.continuous is not None else None
        return cat, con


def projection(width: int, hidden: int, out: int) -> nn.Module:
    """The contrastive projection, lightly 1.2.22's SimCLRProjectionHead: Linear-ReLU-Linear, no batch norm."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def init_weights(module: nn.Module) -> None:
    """The official initialisation of TIP's own layers: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@register_method("tip", settings=TipSettings)
class Tip(Method):
    settings: TipSettings

    def __init__(self, encoders, num_classes, settings: TipSettings):
        super().__init__(encoders, num_classes, settings)
        self.normalize_checked = False
        s = settings
        encoders.tabular.requires_grad_(False)  # TIP's transformer takes the tabular encoder's role
        self.layout = TableLayout(tuple(encoders.tabular.field_lengths))
        width = encoders.image.backbone.num_features
        self.tabular = TabularTransformer(self.layout, s.dim, s.tabular_layers, s.heads, s.dropout)
        self.image_tokens = nn.Sequential(nn.Linear(width, s.dim), nn.LayerNorm(s.dim))
        self.multimodal = InteractionModule(s.dim, s.multimodal_layers, s.heads, s.dropout)
        d = encoders.feature_dim
        self.projection = nn.ModuleDict(
            {"image": projection(d, d, s.projection_dim), "tabular": projection(s.dim, s.dim, s.projection_dim)}
        )
        self.itm_head = nn.Linear(s.dim, 2)
        self.predictor = Reconstructor(self.layout, s.dim)
        self.classifier = nn.Linear(s.dim, num_classes)
        self.augmentation: RecipeAugmentation | None = None
        self.pretrain_augmentation: RecipeAugmentation | None = None
        for module in (self.tabular, self.image_tokens, self.multimodal, self.itm_head, self.predictor):
            module.apply(init_weights)

    @classmethod
    def stages(cls, s: TipSettings, epochs: int) -> list[Stage]:
        pretrained = BACKBONE + PRETRAIN_HEADS
        finetuned = BACKBONE + ("classifier.",) if s.finetune == "trainable" else ("classifier.",)
        return [
            Stage("pretrain", s.pretrain_epochs, pretrained, s.pretrain_optimizer, selects=False, labels=False),
            Stage("finetune", s.finetune_epochs, finetuned, s.finetune_optimizer),
        ]

    @property
    def finetuning(self) -> bool:
        return self.stage is not None and self.stage.index == 1

    @property
    def frozen(self) -> bool:
        return self.finetuning and self.settings.finetune == "frozen"

    def on_epoch_start(self, epoch: int) -> None:
        if self.frozen:  # linear probing: the pretrained network's normalisation statistics stay fixed
            for prefix in BACKBONE:
                self.get_submodule(prefix.rstrip(".")).eval()

    def idle_parameters(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if not self.finetuning:
            return {n for n in names if n.startswith("classifier.")}
        used = ("classifier.",) if self.frozen else BACKBONE + ("classifier.",)
        return {n for n in names if not n.startswith(used)}

    def image_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's tokens projected for cross-attention (B x T x dim) and the pooled u_I."""
        backbone = self.encoders.image.backbone
        maps = backbone.forward_features(image)
        tokens = maps.flatten(2).transpose(1, 2) if maps.dim() == 4 else maps
        return self.image_tokens(tokens), self.encoders.image.project(backbone.forward_head(maps))

    def fused(self, image_tokens: torch.Tensor, table: torch.Tensor, masked: torch.Tensor | None = None):
        """The interaction module's token outputs for this image and table (B x (1 + N) x dim)."""
        return self.multimodal(self.tabular(table, masked), image_tokens)

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        stats = self.finetune_loss(batch) if self.finetuning else self.pretrain_loss(batch.image, batch.tabular)
        stats["loss"].backward()
        optimizer.step()
        stats["loss"] = stats["loss"].detach()
        return stats

    def pretrain_loss(self, image: torch.Tensor, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """(L_itc + L_itm + L_mtr) / 3 on one unlabelled batch; `acc` is the in-batch image-to-table
        retrieval accuracy of the contrastive similarities (there are no labels to score)."""
        s = self.settings
        self.check_normalization(image)
        if self.pretrain_augmentation is None:
            self.pretrain_augmentation = PretrainAugmentation(image.shape[-1])
        image = augment_view(image, s.augmentation_rate, s.image_normalize, self.pretrain_augmentation)
        tokens, u_image = self.image_features(image)
        corrupted = self.tabular(scarf_corrupt(table, s.corruption_rate)[0])
        z_image, z_table = self.projection["image"](u_image), self.projection["tabular"](corrupted[:, 0])
        loss_itc, similarity = clip_loss(z_image, z_table, s.temperature, s.lambda_0)
        loss_itm, itm_acc = self.matching_loss(tokens, corrupted, similarity)
        masked = choose_masked_cells(*table.shape, s.mask_rate, table.device)
        cat_logits, con_pred = self.predictor(self.fused(tokens, table, masked))
        loss_mtr = masked_reconstruction_loss(cat_logits, con_pred, table, masked, self.layout)
        target = torch.arange(len(similarity), device=similarity.device)
        return {
            "loss": (loss_itc + loss_itm + loss_mtr) / 3,
            "acc": accuracy(similarity.detach(), target),
            "loss_itc": loss_itc.detach(),
            "loss_itm": loss_itm.detach(),
            "loss_mtr": loss_mtr.detach(),
            "itm_acc": itm_acc,
        }

    def matching_loss(self, image_tokens: torch.Tensor, table_tokens: torch.Tensor, similarity: torch.Tensor):
        """L_itm over B matched pairs and 2B hard-negative pairs; also its accuracy."""
        b = len(image_tokens)
        if b < 2:  # no other pair to draw a negative from
            return image_tokens.new_zeros(()), image_tokens.new_zeros(())
        neg_table, neg_image = hard_negatives(similarity), hard_negatives(similarity.T)
        tables = torch.cat([table_tokens, table_tokens, table_tokens[neg_table]])
        images = torch.cat([image_tokens, image_tokens[neg_image], image_tokens])
        logits = self.itm_head(self.multimodal(tables, images)[:, 0])
        matched = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
        return F.cross_entropy(logits.float(), matched), accuracy(logits.detach(), matched)

    def check_normalization(self, image: torch.Tensor) -> None:
        """Once per run (a host read of the batch, not one per step): see `refuse_normalised_images`."""
        if not self.normalize_checked:
            self.normalize_checked = True
            refuse_normalised_images(image, self.settings.image_normalize, "tip", "TIP's colour augmentations")

    def finetune_view(self, image: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official fine-tuning sample: with probability finetune_augmentation_rate the image
        is augmented and its table corrupted, together; otherwise both are kept as they are."""
        s = self.settings
        if s.finetune_augmentation_rate == 0:
            return image, table
        self.check_normalization(image)
        if self.augmentation is None:
            self.augmentation = RecipeAugmentation(image.shape[-1])
        chosen = torch.rand(len(image)) < s.finetune_augmentation_rate
        image = augment_view(image, 1.0, s.image_normalize, self.augmentation, chosen)
        corrupted, _ = scarf_corrupt(table, s.corruption_rate)
        return image, torch.where(chosen.to(table.device)[:, None], corrupted, table)

    def finetune_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        image, table = self.finetune_view(batch.image, batch.tabular)
        with torch.set_grad_enabled(not self.frozen):
            h = self.representation(image, table)
        logits = self.classifier(h)
        return {"loss": cross_entropy(logits, batch.label), "acc": accuracy(logits.detach(), batch.label)}

    def representation(self, image: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
        """h, the interaction module's CLS output; a missing table is a table of masked cells."""
        tokens, _ = self.image_features(image)
        if table is None:
            n = len(self.layout.field_lengths)
            table = tokens.new_zeros(len(tokens), n)
            return self.fused(tokens, table, torch.ones_like(table, dtype=torch.bool))[:, 0]
        return self.fused(tokens, table)[:, 0]

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        if image is None:
            return Predictions(None, None, None)
        return Predictions(self.classifier(self.representation(image, tabular)), None, None)
