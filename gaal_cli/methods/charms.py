"""CHARMS: image channels aligned with tabular attributes by optimal transport (ICML 2024).

Jiang, Ye, Wang, Yang, Jiang and Zhan, "Tabular Insights, Visual Impacts: Transferring
Expertise from Tables to Images", ICML 2024: Table I's CHARMS row, a test-time tabular-missing
method (the table helps in training; only the image at test). The paper's full text could not
be read here (its abstract only); what follows is read from its official code (github
RyanJJP/CHARMS, models/CHARMS.py, trainers/pretrain.py, README), read for facts only.

The image network learns its classification task and, from chosen groups of its last-layer
channels, to predict the table's attributes; optimal transport chooses which channels serve
which attribute. With h = the backbone's pooled channels (width C), u = the encoder's output:

    L = CE(f(u), y)                                     image classifier (used at test)
      + w_num * mean_p MSE(a_p(m_p * h), x_p)           one regression head per continuous attribute
      + w_cat * mean_q CE(a_q(m_q * h), x_q)            one classifier per categorical attribute
      + w_tab * CE(g(x^T), y)                           a small FT-Transformer on the table

m_i (0/1 over the C channels) is attribute i's mask: all ones until the first transport plan,
then the channels of the groups the plan sends attribute i to. The plan is recomputed every
`refresh_every` epochs from N training samples (eval mode, no gradient):

1. Channel groups: each channel's activations over the N samples and the S spatial positions
   of the last feature map (a C x N*S matrix) are clustered into K groups by k-means; a group is
   represented by its centre, reshaped to N x S.
2. Attribute representations: the FT-Transformer's output token of attribute i (N x d).
3. Cost: each representation X (N x d or N x S) is scaled to unit Frobenius norm and turned
   into its sample-similarity matrix G = X X^T (N x N); cost[i, j] = ||G_attr_i - G_group_j||_F^2,
   so an attribute is cheap to send to a group of channels that ranks the samples alike.
4. Plan: optimal transport between the D attributes and the K groups, uniform marginals
   (1/D, 1/K), solved exactly by POT's `ot.emd` (`transport: exact`, the official code's call);
   attribute i reads group j's channels when the plan moves mass from i to j (every nonzero
   entry, as the official code keeps). `transport: sinkhorn` is the entropic alternative below.

At test only the image classifier runs, so the report's Image column holds its accuracy, as
Table I prints it. The table's FT-Transformer and the attribute heads are training aids.

Defaults (official code): K = 40 groups (img_reduction_dim), the plan refreshed every 5 epochs
(after epochs 5, 10, ...; all channels read until then), w_num = w_cat = 0.03, w_tab = 0.6,
the image classifier Linear(C, 1024) -> Linear(1024, classes), FT-Transformer with 8-wide
tokens, 2 blocks, 8 heads, feed-forward width 6 (ReGLU), attention dropout 0.1, feed-forward
dropout 0.2. The optimiser is the official one by default (`stage_optimizer`, built by the
engine as a one-stage method's own: SGD lr 1e-3, momentum 0.1, weight decay 1e-5, MultiStepLR
x0.5 after epochs 5, 10, 15, 20), with early stopping on validation accuracy after 5 epochs
without progress (`patience`, the stage's own; the official code's); `stage_optimizer: null`
trains with the run's train.* instead. The official DVM dataset code normalises the images
with ImageNet statistics for its ImageNet-initialised ResNet50: `imagenet_normalize: true`
(the DVM experiment file) does that to images the data leaves in [0, 1].

The official code wires CHARMS up for one dataset (PetFinder adoption: `datatype=charms` loads
only that one); the weights and the optimiser above are read from there. The settings of its
DVM, SUN and CelebA runs (the ones Table I reports) are not in the public code.

Departures, plainly:
- `transport: sinkhorn` (an option, not the official code's): entropic OT by Sinkhorn
  iterations (log domain, on the cost rescaled to [0, 1], epsilon `sinkhorn_epsilon`), whose
  plan has no exact zeros; attribute i reads group j when the plan gives j at least
  `support_threshold` of attribute i's mass. On random 17 x 40, 39 x 40 and 9 x 40 costs the
  chosen entries differed from the exact plan's support in 1 to 7 of its 48 to 78 nonzero
  entries (epsilon 0.001, threshold 0.01). With either solver every attribute reads at least
  its largest entry.
- Samples: the official code recomputes the plan on the whole validation set. A gaal method
  sees training batches only, so the plan is computed from the first `transport_samples`
  training samples of each refresh epoch (epochs 6, 11, ... with the default), forwarded again
  in eval mode; the batches of that epoch before they are collected still use the old masks.
  When the training set is smaller, the plan is computed at the next epoch's start from all of it.
- k-means: Lloyd iterations in torch from a seeded k-means++ start (official: scikit-learn's
  KMeans, random_state 0); K is capped at the number of channels (test backbones are narrow).
- The FT-Transformer is rebuilt in torch (rtdl's baseline shape, torch's own attention and
  initialisation); its per-attribute output tokens are those of its last block, as the official
  code patches rtdl to return.
- The attribute heads read the backbone's pooled channels; when model.feature_dim differs from
  the backbone's width the image classifier reads the encoder's projection of them.
- The test protocol: the official code tests the model left in memory when training stops
  (trainers/pretrain.py returns it, run.py passes it to trainers/test.py, which tests it as
  given, l.47-56), i.e. the last epoch's weights, 5 epochs after the best one when early
  stopping ends the run; its checkpoints are not read back (their callback even monitors
  val_acc with mode 'min'). Here, as for every row of Table I, the test is scored with the
  weights of the best validation epoch: one selection rule for every method.
- Crops: the official dataset (CHARMS_dataset.py PetFinderConCatImageDataset, l.132-139) applies
  RandomResizedCrop(224) and a horizontal flip to every split it loads, so its validation (early
  stopping and the transport plan's samples) and its test see randomly cropped images. Here
  validation and test images are not augmented (each row is scored on the same fixed images),
  and the transport plan's samples, being training batches, carry the data's own training
  augmentation (`data.augment`, the recipe's crops where it is on).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import ot
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.data.images import IMAGENET_MEAN, IMAGENET_STD
from gaal_cli.methods.base import Method, MethodSettings, Predictions, accuracy, cross_entropy, register_method
from gaal_cli.methods.diagnostics import encoder_grad_norms
from gaal_cli.methods.stages import Stage, StagedSettings, StageOptimizer

#: the official optimiser (trainers/pretrain.py: SGD, MultiStepLR([5, 10, 15, 20], 0.5))
OFFICIAL_OPTIMIZER = StageOptimizer(
    kind="sgd", lr=1e-3, momentum=0.1, weight_decay=1e-5, milestones=(5, 10, 15, 20), gamma=0.5
)


class CharmsSettings(StagedSettings, MethodSettings):
    trace_settings: ClassVar[dict[str, Any]] = {"refresh_every": 1}

    channel_groups: int = Field(
        40, ge=1, description="K, groups the last-layer channels are clustered into (official: 40)"
    )
    refresh_every: int = Field(5, ge=1, description="epochs between transport plans (official: 5)")
    transport_samples: int = Field(
        256, ge=2, description="training samples each plan is computed from (official: the validation set)"
    )
    transport: Literal["exact", "sinkhorn"] = Field(
        "exact", description="the plan: exact OT by POT's ot.emd (official) or entropic (Sinkhorn)"
    )
    sinkhorn_epsilon: float = Field(0.001, gt=0, description="entropic regularisation, on the cost scaled to [0, 1]")
    sinkhorn_iterations: int = Field(5000, ge=1, description="most Sinkhorn iterations (stops earlier when converged)")
    support_threshold: float = Field(
        0.01, gt=0, lt=1, description="share of an attribute's mass a group needs for the attribute to read it"
    )
    continuous_weight: float = Field(0.03, ge=0, description="w_num, weight of the continuous attributes' MSE")
    categorical_weight: float = Field(0.03, ge=0, description="w_cat, weight of the categorical attributes' CE")
    tabular_weight: float = Field(0.6, ge=0, description="w_tab, weight of the table transformer's label CE")
    head_hidden: int | None = Field(1024, ge=1, description="width between the image classifier's two linear layers")
    stage_optimizer: StageOptimizer | None = Field(
        OFFICIAL_OPTIMIZER,
        description="the run's optimiser (official: SGD 1e-3, momentum 0.1, wd 1e-5, x0.5 after epochs 5/10/15/20); "
        "null: train.*",
    )
    patience: int | None = Field(5, ge=1, description="early-stopping patience (official: 5); null: train.patience")
    imagenet_normalize: bool = Field(
        False, description="normalise [0, 1] images with ImageNet statistics (official DVM dataset code)"
    )


# ---------------------------------------------------------------- optimal transport and its cost


def sinkhorn(
    cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float, iterations: int, tol: float = 1e-6
) -> torch.Tensor:
    """The entropic optimal-transport plan between marginals `a` (rows) and `b` (columns).

    Minimises <P, cost> - epsilon H(P) over plans with P 1 = a and P^T 1 = b, by Sinkhorn's
    alternating scalings in the log domain (stable for small epsilon).

    Returns:
        The plan P, the shape of `cost`.
    """
    log_k = -cost.double() / epsilon
    log_a, log_b = a.double().log(), b.double().log()
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for step in range(iterations):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
        if step % 10:
            continue
        # after the column update the columns are exact; stop when the rows are close too
        rows = torch.logsumexp(log_k + f[:, None] + g[None, :], dim=1).exp()
        if float((rows - a.double()).abs().sum()) < tol:
            break
    return (log_k + f[:, None] + g[None, :]).exp().to(cost.dtype)


def exact_plan(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The exact optimal-transport plan between marginals `a` and `b` (POT's network simplex, ot.emd)."""
    plan = ot.emd(a.double().cpu().numpy(), b.double().cpu().numpy(), cost.double().cpu().numpy())
    return torch.as_tensor(plan, dtype=cost.dtype, device=cost.device)


def similarity_matrices(x: torch.Tensor) -> torch.Tensor:
    """Sample-similarity matrices X X^T of each item, X scaled to unit Frobenius norm.

    Args:
        x: items x samples x width.

    Returns:
        items x samples x samples.
    """
    x = x.float()
    x = x / x.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    return x @ x.transpose(1, 2)


def transport_cost(attributes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """cost[i, j] = ||G_attr_i - G_group_j||_F^2 between sample-similarity matrices.

    Args:
        attributes: D x N x d, each attribute's representation of N samples.
        groups: K x N x S, each channel group's activations on the same N samples.
    """
    ga = similarity_matrices(attributes).flatten(1)
    gg = similarity_matrices(groups).flatten(1)
    return (ga.square().sum(1)[:, None] + gg.square().sum(1)[None, :] - 2 * ga @ gg.T).clamp_min(0)


def kmeans(x: torch.Tensor, k: int, iterations: int = 100, seed: int = 0) -> torch.Tensor:
    """Cluster the rows of `x` into `k` groups (Lloyd's algorithm from a seeded k-means++ start).

    Returns:
        Each row's group, in 0..k-1.
    """
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).square().min(dim=1).values
        weights = d2.cpu() if float(d2.sum()) > 0 else torch.ones(len(x))
        centres.append(x[int(torch.multinomial(weights, 1, generator=generator))])
    centre = torch.stack(centres)
    labels = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        new = torch.cdist(x, centre).argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if bool(members.any()):
                centre[j] = x[members].mean(0)
    return labels


def group_centres(channels: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean activation map of each channel group: C x N x S channels -> K x N x S."""
    sums = channels.new_zeros(k, *channels.shape[1:]).index_add_(0, labels, channels)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).to(channels.dtype)
    return sums / counts[:, None, None]


def plan_masks(plan: torch.Tensor, labels: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Each attribute's channel mask from the plan (D x K) and the channels' groups (C,).

    Attribute i reads the channels of every group j with plan[i, j] >= threshold * plan[i].sum()
    (threshold None: every nonzero entry, an exact plan's support), and always those of its
    largest entry.
    """
    support = plan > 0 if threshold is None else plan >= threshold * plan.sum(1, keepdim=True)
    support[torch.arange(len(plan)), plan.argmax(1)] = True
    return support[:, labels].float()


# ---------------------------------------------------------------- the table's transformer


class ReGlu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return a * F.relu(b)


class TransformerBlock(nn.Module):
    """Pre-norm attention and ReGLU feed-forward, each residual (rtdl's FT-Transformer block)."""

    def __init__(self, d: int, heads: int, ffn_hidden: int, attention_dropout: float, ffn_dropout: float, first: bool):
        super().__init__()
        # rtdl's baseline leaves the first block's attention input unnormalised
        self.attention_norm = nn.Identity() if first else nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, heads, dropout=attention_dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, 2 * ffn_hidden), ReGlu(), nn.Dropout(ffn_dropout), nn.Linear(ffn_hidden, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.ffn_norm(x))


class AttributeTransformer(nn.Module):
    """FT-Transformer over the table's columns: one token per attribute plus a class token.

    Returns each attribute's output token (its representation for the transport cost) and the
    class token's prediction of the label.
    """

    def __init__(self, field_lengths: tuple[int, ...], num_classes: int, d: int = 8, blocks: int = 2, heads: int = 8):
        super().__init__()
        lengths = torch.tensor(field_lengths)
        categorical = lengths > 1
        self.register_buffer("categorical", categorical, persistent=False)
        offsets = torch.cumsum(torch.where(categorical, lengths, 0), 0) - torch.where(categorical, lengths, 0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("top_code", (lengths - 1).clamp_min(0), persistent=False)
        bound = 1 / math.sqrt(d)
        n = len(field_lengths)
        self.weight = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))  # continuous: x * w_i
        self.bias = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))
        self.embedding = nn.Embedding(max(1, int(lengths[categorical].sum())), d)  # categorical: E[code]
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.cls = nn.Parameter(torch.empty(d).uniform_(-bound, bound))
        self.blocks = nn.ModuleList(
            TransformerBlock(d, heads, ffn_hidden=6, attention_dropout=0.1, ffn_dropout=0.2, first=i == 0)
            for i in range(blocks)
        )
        self.head = nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, num_classes))

    def tokens(self, table: torch.Tensor) -> torch.Tensor:
        codes = (table.long().clamp(min=0).minimum(self.top_code) + self.offsets).where(self.categorical, 0)
        embedded = self.embedding(codes)
        continuous = table.float()[..., None] * self.weight
        return torch.where(self.categorical[:, None], embedded, continuous) + self.bias

    def forward(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tokens(table)
        x = torch.cat([x, self.cls.expand(len(x), 1, -1)], dim=1)  # rtdl appends the class token
        for block in self.blocks:
            x = block(x)
        return x[:, :-1], self.head(x[:, -1])


# ---------------------------------------------------------------- the method


def channel_maps(features: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map as samples x channels x positions (CNN or token layout)."""
    if features.dim() == 4:
        return features.flatten(2)
    if features.dim() == 3:  # vision transformers: samples x tokens x channels
        return features.transpose(1, 2)
    return features[..., None]


@register_method("charms", settings=CharmsSettings)
class Charms(Method):
    settings: CharmsSettings
    #: the image classifier's input, in training and at test (the table trains the auxiliary parts)
    modalities = ("image",)

    def __init__(self, encoders, num_classes, settings: CharmsSettings):
        super().__init__(encoders, num_classes, settings)
        encoders.tabular.requires_grad_(False)  # the MLP encoder is not used: the transformer reads the table
        lengths = tuple(encoders.tabular.field_lengths)
        self.field_lengths = lengths
        channels = encoders.image.backbone.num_features
        d = encoders.feature_dim
        hidden = settings.head_hidden
        self.head = (
            nn.Linear(d, num_classes)
            if hidden is None
            else nn.Sequential(nn.Linear(d, hidden), nn.Linear(hidden, num_classes))
        )
        self.attribute_heads = nn.ModuleList(nn.Linear(channels, k if k > 1 else 1) for k in lengths)
        self.table = AttributeTransformer(lengths, num_classes)
        self.groups = min(settings.channel_groups, channels)
        self.register_buffer("masks", torch.ones(len(lengths), channels))
        self.register_buffer("plan", torch.zeros(len(lengths), self.groups))
        self.register_buffer("channel_group", torch.zeros(channels, dtype=torch.long))
        self.pending: list[Batch] = []
        self.collecting = False

    @classmethod
    def stages(cls, s: CharmsSettings, epochs: int) -> list[Stage]:
        return [Stage("train", None, (), s.stage_optimizer, patience=s.patience)]

    # ------------------------------------------------------------ the plan

    def on_epoch_start(self, epoch: int) -> None:
        if self.pending:  # a training set smaller than transport_samples: plan from all of it
            self.refresh()
        self.collecting = epoch > 1 and (epoch - 1) % self.settings.refresh_every == 0

    def collect(self, batch: Batch) -> None:
        """Keep the epoch's first training samples; plan once there are `transport_samples`."""
        have = sum(len(b.label) for b in self.pending)
        take = min(len(batch.label), self.settings.transport_samples - have)
        self.pending.append(Batch(batch.image[:take].detach(), batch.tabular[:take].detach(), batch.label[:take]))
        if have + take >= self.settings.transport_samples:
            self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the plan and the masks from the collected samples (eval mode, no gradient)."""
        image = torch.cat([b.image for b in self.pending])
        table = torch.cat([b.tabular for b in self.pending])
        self.pending, self.collecting = [], False
        was_training = self.training
        self.eval()
        maps = channel_maps(self.encoders.image.backbone.forward_features(self.normalized(image))).float()  # N x C x S
        attributes, _ = self.table(table)  # N x D x d
        self.train(was_training)
        channels = maps.transpose(0, 1)  # C x N x S
        labels = kmeans(channels.flatten(1), self.groups)
        cost = transport_cost(attributes.transpose(0, 1), group_centres(channels, labels, self.groups))
        cost = (cost - cost.min()) / (cost.max() - cost.min()).clamp_min(1e-12)
        d, k = cost.shape
        s = self.settings
        a, b = cost.new_full((d,), 1 / d), cost.new_full((k,), 1 / k)
        if s.transport == "exact":
            plan, threshold = exact_plan(cost, a, b), None
        else:
            plan, threshold = sinkhorn(cost, a, b, s.sinkhorn_epsilon, s.sinkhorn_iterations), s.support_threshold
        masks = plan_masks(plan, labels, threshold)
        # data-parallel replicas plan from their own samples: all take rank 0's
        keep = 1.0 if self.comm.is_main else 0.0
        self.masks.copy_(self.comm.sum(masks * keep))
        self.plan.copy_(self.comm.sum(plan * keep))
        self.channel_group.copy_(self.comm.sum(labels * int(keep)))

    def resume_state(self) -> dict[str, Any]:
        # samples collected in an epoch that ended before there were transport_samples of them
        return {"pending": [tuple(b) for b in self.pending]}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.pending = [Batch(*b) for b in state.get("pending", [])]

    # ------------------------------------------------------------ training and prediction

    def forward_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's pooled channels h and the image classifier's logits f(project(h))."""
        backbone = self.encoders.image.backbone
        pooled = backbone.forward_head(backbone.forward_features(self.normalized(image)), pre_logits=True)
        return pooled, self.head(self.encoders.image.project(pooled))

    def normalized(self, image: torch.Tensor) -> torch.Tensor:
        """The image as the official dataset code hands it over: ImageNet-normalised when asked."""
        if not self.settings.imagenet_normalize:
            return image
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return (image - mean) / std

    def attribute_predictions(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        """Each attribute's prediction from its own channels (m_i * h): a value or class logits."""
        return [head(pooled * mask) for head, mask in zip(self.attribute_heads, self.masks)]

    def attribute_losses(self, predictions: list[torch.Tensor], table: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean MSE over the continuous attributes and mean CE over the categorical ones."""
        mse, ce = [], []
        for j, (pred, k) in enumerate(zip(predictions, self.field_lengths)):
            if k == 1:
                mse.append(F.mse_loss(pred.float().squeeze(1), table[:, j].float()))
            else:
                ce.append(F.cross_entropy(pred.float(), table[:, j].long().clamp(0, k - 1)))
        zero = table.new_zeros((), dtype=torch.float32)
        return {
            "continuous": torch.stack(mse).mean() if mse else zero,
            "categorical": torch.stack(ce).mean() if ce else zero,
        }

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        if self.collecting:
            self.collect(batch)
        optimizer.zero_grad(set_to_none=True)
        s = self.settings
        pooled, logits = self.forward_image(batch.image)
        attributes = self.attribute_losses(self.attribute_predictions(pooled), batch.tabular)
        _, table_logits = self.table(batch.tabular)
        loss_image = cross_entropy(logits, batch.label)
        loss_table = cross_entropy(table_logits, batch.label)
        loss = (
            loss_image
            + s.continuous_weight * attributes["continuous"]
            + s.categorical_weight * attributes["categorical"]
            + s.tabular_weight * loss_table
        )
        loss.backward()
        stats = {
            "loss": loss.detach(),
            "acc": accuracy(logits.detach(), batch.label),
            "loss_image": loss_image.detach(),
            "loss_continuous": attributes["continuous"].detach(),
            "loss_categorical": attributes["categorical"].detach(),
            "loss_table": loss_table.detach(),
            "mask_density": self.masks.mean(),
        }
        stats.update(encoder_grad_norms(self.encoders, self.modalities))
        optimizer.step()
        return stats

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        if image is None:
            return Predictions(None, None, None)
        logits = self.forward_image(image)[1]
        return Predictions(logits, logits, None)
