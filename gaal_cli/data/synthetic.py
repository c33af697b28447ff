"""The embedded dataset: DVM-like tables and rendered images, generated in-process.

Classes come in pairs (2k, 2k+1). In an *image-only* pair (k even) both classes share one
table distribution, so only the picture tells them apart; in a *table-only* pair (k odd) both
share one picture distribution, so only the table does. Across pairs both modalities carry
the class, each with its own noise. Hence neither modality alone reaches the fused accuracy.

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

import torch

from gaal_cli.config import DataConfig
from gaal_cli.data.base import DataBundle, TabularSchema, TensorSplit

WORLD_SEED = 20260403
SHAPES = ("circle", "square", "triangle", "cross")
CATEGORY_SIZES = (5, 8, 3, 6, 4, 7)


def build(cfg: DataConfig, seed: int) -> DataBundle:
    """Generate the three splits of the embedded dataset for `seed`."""
    s = cfg.synthetic
    n_total = s.n_train + s.n_val + s.n_test
    world = _world(s.num_classes, s.n_continuous, s.n_categorical)
    gen = torch.Generator().manual_seed(seed)

    labels = torch.arange(n_total) % s.num_classes
    labels = labels[torch.randperm(n_total, generator=gen)]
    tabular = _tabular(labels, world, s.tabular_noise, gen)
    images = _images(labels, world, cfg.image_size, s.image_noise, s.shape_flip, gen)

    n_cont = s.n_continuous
    train_rows = slice(0, s.n_train)
    mean = tabular[train_rows, :n_cont].mean(0)
    std = tabular[train_rows, :n_cont].std(0).clamp_min(1e-6)
    tabular[:, :n_cont] = (tabular[:, :n_cont] - mean) / std

    bounds = [0, s.n_train, s.n_train + s.n_val, n_total]
    splits = [TensorSplit(images[a:b], tabular[a:b], labels[a:b]) for a, b in zip(bounds, bounds[1:])]
    cat_sizes = world["category_sizes"]
    schema = TabularSchema(
        names=tuple(f"num_{j}" for j in range(n_cont)) + tuple(f"cat_{j}" for j in range(len(cat_sizes))),
        field_lengths=(1,) * n_cont + tuple(cat_sizes),
    )
    class_names = [
        f"{c}:{SHAPES[int(world['shape'][world['image_id'][c]])]}/hue{float(world['hue'][world['image_id'][c]]):.2f}"
        for c in range(s.num_classes)
    ]
    info = {
        "counts": {"train": s.n_train, "val": s.n_val, "test": s.n_test},
        "image_only_pairs": [(2 * k, 2 * k + 1) for k in range(s.num_classes // 2) if k % 2 == 0],
        "table_only_pairs": [(2 * k, 2 * k + 1) for k in range(s.num_classes // 2) if k % 2 == 1],
    }
    return DataBundle(*splits, schema=schema, class_names=class_names, info=info)


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
    noise: float,
    shape_flip: float,
    gen: torch.Generator,
    chunk: int = 1024,
) -> torch.Tensor:
    """Render uint8 images (N, 3, size, size), a chunk at a time to bound memory."""
    iid = world["image_id"][labels]
    n = len(labels)
    shape = world["shape"][iid]
    flip = torch.rand(n, generator=gen) < shape_flip
    shape = torch.where(flip, torch.randint(len(SHAPES), (n,), generator=gen), shape)
    hue = (world["hue"][iid] + noise * 0.25 * torch.randn(n, generator=gen)) % 1.0
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        out[rows] = _render(shape[rows], hue[rows], size, noise, gen)
    return out


def _render(shape: torch.Tensor, hue: torch.Tensor, size: int, noise: float, gen: torch.Generator) -> torch.Tensor:
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
    image = image + noise * 0.3 * torch.randn(n, 3, size, size, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _hsv_to_rgb(h: torch.Tensor, s: float, v: float) -> torch.Tensor:
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
