"""The embedded dataset: DVM-like tables and rendered images, generated in-process.

Three regimes (`data.synthetic.regime`):

- `complementary` (the default, described below): each modality is needed for half the classes.
- `table_dominant`: both modalities carry the whole class (every class has its own table and
  picture) and the table is much easier to learn, as on DVM (GAAL paper, Table I: an MLP alone
  nearly matches joint training, whose image branch starves).
- `image_dominant`: the mirror image, the picture being the easy modality.

In the two dominant regimes `dominance` in [0, 1] (default 1) dials the imbalance: at 0 both
modalities sit at the same middle noise levels; moving towards 1 the dominant modality gets
cleaner and the other noisier, along straight lines between the constants `BALANCED`, `EASY` and
`HARD`.
Dominance 1 of `table_dominant` is calibrated on concat and the unimodal models against DVM's
signature (see README, "Imbalance regimes"); the constants were never tuned for any other method.

Complementary regime. Classes come in pairs (2k, 2k+1). In an *image-only* pair (k even) both
classes share one table distribution, so only the picture tells them apart; in a *table-only*
pair (k odd) both share one picture distribution, so only the table does. Across pairs both
modalities carry the class, each with its own noise. Hence neither modality alone reaches the
fused accuracy.

The table is the easier modality, as on DVM: continuous fields are class means plus Gaussian
noise and categorical fields are a class prototype kept with some probability, which an MLP
learns in a few steps. The image renders a filled shape (circle, square, triangle, cross) in
a class hue at a random position, size and rotation on a noisy background; the shape is
replaced by a random one with probability `shape_flip` and the hue jitters by `image_noise`.

Class prototypes come from a fixed generator (the same "world" for every seed); the samples,
their splits and their noise come from the run's seed. Continuous fields are standardised
with training-split statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from gaal_cli.config import DataConfig
from gaal_cli.data.base import DataBundle, TabularSchema, TensorSplit

WORLD_SEED = 20260403
SHAPES = ("circle", "square", "triangle", "cross")
CATEGORY_SIZES = (5, 8, 3, 6, 4, 7)
DOMINANT_REGIMES = ("table_dominant", "image_dominant")


@dataclass(frozen=True)
class Noise:
    """How hard each modality is: the table's noise and the picture's hue jitter, pixel noise
    and probability of drawing a random shape instead of the class's."""

    tabular: float
    hue_jitter: float
    pixel: float
    shape_flip: float


# dominance 0 of both dominant regimes: the same middle noise for both (a CNN still learns the
# picture more slowly than an MLP the table: README, "Imbalance regimes", has what each reaches)
BALANCED = Noise(tabular=1.0, hue_jitter=0.06, pixel=0.2, shape_flip=0.2)
# dominance 1: the dominant modality's noise (calibrated: table_dominant's table) ...
EASY = Noise(tabular=0.6, hue_jitter=0.01, pixel=0.05, shape_flip=0.0)
# ... and the other modality's (it still carries the class: see README for what it reaches alone)
HARD = Noise(tabular=1.6, hue_jitter=0.09, pixel=0.5, shape_flip=0.3)


def build(cfg: DataConfig, seed: int) -> DataBundle:
    """Generate the three splits of the embedded dataset for `seed`."""
    s = cfg.synthetic
    n_total = s.n_train + s.n_val + s.n_test
    world = _world(s.num_classes, s.n_continuous, s.n_categorical)
    noise = regime_noise(s.regime, s.dominance, s.tabular_noise, s.image_noise, s.shape_flip)
    if s.regime in DOMINANT_REGIMES:  # every class its own table and picture: both carry it all
        world = {**world, "table_id": torch.arange(s.num_classes), "image_id": torch.arange(s.num_classes)}
    gen = torch.Generator().manual_seed(seed)

    labels = torch.arange(n_total) % s.num_classes
    labels = labels[torch.randperm(n_total, generator=gen)]
    tabular = _tabular(labels, world, noise.tabular, gen)
    images = _images(labels, world, cfg.image_size, noise, gen)

    n_cont = s.n_continuous
    train_rows = slice(0, s.n_train)
    mean = tabular[train_rows, :n_cont].mean(0)
    std = tabular[train_rows, :n_cont].std(0).clamp_min(1e-6)
    tabular[:, :n_cont] = (tabular[:, :n_cont] - mean) / std

    bounds = [0, s.n_train, s.n_train + s.n_val, n_total]
    splits = [
        TensorSplit(images[a:b], tabular[a:b], labels[a:b], ids=[str(i) for i in range(a, b)])
        for a, b in zip(bounds, bounds[1:])
    ]
    cat_sizes = world["category_sizes"]
    schema = TabularSchema(
        names=tuple(f"num_{j}" for j in range(n_cont)) + tuple(f"cat_{j}" for j in range(len(cat_sizes))),
        field_lengths=(1,) * n_cont + tuple(cat_sizes),
    )
    class_names = [
        f"{c}:{SHAPES[int(world['shape'][world['image_id'][c]])]}/hue{float(world['hue'][world['image_id'][c]]):.2f}"
        for c in range(s.num_classes)
    ]
    info = {"counts": {"train": s.n_train, "val": s.n_val, "test": s.n_test}}
    if s.regime == "complementary":
        info["image_only_pairs"] = [(2 * k, 2 * k + 1) for k in range(s.num_classes // 2) if k % 2 == 0]
        info["table_only_pairs"] = [(2 * k, 2 * k + 1) for k in range(s.num_classes // 2) if k % 2 == 1]
    else:
        info.update(
            regime=s.regime, dominance=dominance_of(s.dominance), noise={k: round(v, 6) for k, v in vars(noise).items()}
        )
    return DataBundle(*splits, schema=schema, class_names=class_names, info=info)


def dominance_of(value: float | None) -> float:
    """The dominance a dominant regime uses: the configured one, else the calibrated 1."""
    return 1.0 if value is None else value


def regime_noise(
    regime: str, dominance: float | None, tabular_noise: float, image_noise: float, shape_flip: float
) -> Noise:
    """Each modality's noise in `regime`.

    `complementary` reads the three configured knobs as it always has (the image noise sets
    both the hue jitter and the pixel noise); the dominant regimes set all of them from
    `dominance` (the config refuses the knobs there, so none is silently ignored).
    """
    if regime == "complementary":
        return Noise(tabular_noise, image_noise * 0.25, image_noise * 0.3, shape_flip)
    d = dominance_of(dominance)
    easy, hard = _lerp(BALANCED, EASY, d), _lerp(BALANCED, HARD, d)
    if regime == "table_dominant":
        return replace(hard, tabular=easy.tabular)
    return replace(easy, tabular=hard.tabular)


def _lerp(a: Noise, b: Noise, t: float) -> Noise:
    return Noise(*(x + t * (y - x) for x, y in zip(vars(a).values(), vars(b).values())))


def _world(num_classes: int, n_continuous: int, n_categorical: int) -> dict:
    """Class prototypes: which table and image identity each class has, and their attributes."""
    gen = torch.Generator().manual_seed(WORLD_SEED)
    classes = torch.arange(num_classes)
    pair, member = classes // 2, classes % 2
    image_only = (pair % 2 == 0) & (classes < num_classes - num_classes % 2)
    table_only = (pair % 2 == 1) & (classes < num_classes - num_classes % 2)
    table_id = torch.where(image_only & (member == 1), classes - 1, classes)
    image_id = torch.where(table_only & (member == 1), classes - 1, classes)

    category_sizes = [CATEGORY_SIZES[j % len(CATEGORY_SIZES)] for j in range(n_categorical)]
    n_hues = math.ceil(num_classes / len(SHAPES))
    hue_slot = torch.randperm(num_classes, generator=gen)
    return {
        "table_id": table_id,
        "image_id": image_id,
        "mean": torch.randn(num_classes, n_continuous, generator=gen),
        "prototype": torch.stack([torch.randint(k, (num_classes,), generator=gen) for k in category_sizes], dim=1),
        "category_sizes": category_sizes,
        "shape": (classes * 3) % len(SHAPES),
        "hue": (hue_slot // len(SHAPES)).float() / n_hues + (hue_slot % len(SHAPES)).float() / (len(SHAPES) * n_hues),
    }


def _tabular(labels: torch.Tensor, world: dict, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Continuous fields = class mean + noise; categorical = prototype kept with probability p."""
    tid = world["table_id"][labels]
    n = len(labels)
    continuous = world["mean"][tid] + noise * torch.randn(n, world["mean"].shape[1], generator=gen)
    keep_p = 1.0 / (1.0 + noise)
    columns = []
    for j, size in enumerate(world["category_sizes"]):
        proto = world["prototype"][tid, j]
        random = torch.randint(size, (n,), generator=gen)
        keep = torch.rand(n, generator=gen) < keep_p
        columns.append(torch.where(keep, proto, random).float())
    return torch.cat([continuous, torch.stack(columns, dim=1)], dim=1)


def _images(
    labels: torch.Tensor,
    world: dict,
    size: int,
    noise: Noise,
    gen: torch.Generator,
    chunk: int = 1024,
) -> torch.Tensor:
    """Render uint8 images (N, 3, size, size), a chunk at a time to bound memory."""
    iid = world["image_id"][labels]
    n = len(labels)
    shape = world["shape"][iid]
    flip = torch.rand(n, generator=gen) < noise.shape_flip
    shape = torch.where(flip, torch.randint(len(SHAPES), (n,), generator=gen), shape)
    hue = (world["hue"][iid] + noise.hue_jitter * torch.randn(n, generator=gen)) % 1.0
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        out[rows] = _render(shape[rows], hue[rows], size, noise.pixel, gen)
    return out


def _render(
    shape: torch.Tensor, hue: torch.Tensor, size: int, pixel_noise: float, gen: torch.Generator
) -> torch.Tensor:
    n = len(shape)
    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    centre = (torch.rand(n, 2, generator=gen) - 0.5) * 0.8
    radius = 0.28 + 0.2 * torch.rand(n, generator=gen)
    angle = (torch.rand(n, generator=gen) - 0.5) * (math.pi / 3)
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u, v = (cos * dx + sin * dy) / radius[:, None, None], (-sin * dx + cos * dy) / radius[:, None, None]
    masks = torch.stack(
        [
            u**2 + v**2 < 1.0,
            torch.maximum(u.abs(), v.abs()) < 0.85,
            (v < 0.7) & (u.abs() < (v + 1.0) * 0.55),
            ((u.abs() < 0.3) & (v.abs() < 1.0)) | ((v.abs() < 0.3) & (u.abs() < 1.0)),
        ],
        dim=1,
    )
    mask = masks[torch.arange(n), shape].float()[:, None]
    colour = _hsv_to_rgb(hue, 0.85, 0.9)[:, :, None, None]
    background = 0.35 + 0.3 * torch.rand(n, 3, 1, 1, generator=gen)
    image = background * (1 - mask) + colour * mask
    image = image + pixel_noise * torch.randn(n, 3, size, size, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _hsv_to_rgb(h: torch.Tensor, s: float, v: float) -> torch.Tensor:
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
