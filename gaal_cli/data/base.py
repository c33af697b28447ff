"""What every dataset hands to the engine: three splits, a tabular schema and class names.

A split is a map-style dataset indexed by a *list* of row indices that returns a whole `Batch`,
so an in-memory dataset slices tensors at once and a disk-backed one decodes a batch per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler


class Batch(NamedTuple):
    image: torch.Tensor  # float (B, 3, H, W), already scaled/normalised (uint8 if deferred: images_on_device)
    tabular: torch.Tensor  # float (B, D): continuous values and integer category codes
    label: torch.Tensor  # long (B,); None in a label-free stage (gaal_cli/methods/stages.py)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))


@dataclass(frozen=True)
class TabularSchema:
    """Columns of the table in the MMCL field-length convention.

    `field_lengths[i]` is 1 for a continuous column and the number of categories for a
    categorical column, whose values are integer codes 0..k-1 stored as floats.
    """

    names: tuple[str, ...]
    field_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.field_lengths):
            raise ValueError("names and field_lengths differ in length")

    @property
    def n_fields(self) -> int:
        return len(self.names)

    @property
    def one_hot_width(self) -> int:
        return sum(self.field_lengths)


class SplitDataset(Protocol):
    """A split of rows. One that can hand its images over unfinished also has `defer_images()`:
    from then on its batches carry uint8 images, and the function it returns turns them into
    the encoders' floats on whatever device they are on (see `images_on_device`)."""

    labels: torch.Tensor  # long (N,): class balance, class weights

    def __len__(self) -> int: ...

    def __getitem__(self, rows: Sequence[int]) -> Batch: ...


@dataclass
class DataBundle:
    """Train/val/test splits plus what the model needs to know about them."""

    train: SplitDataset
    val: SplitDataset
    test: SplitDataset
    schema: TabularSchema
    class_names: list[str]
    info: dict = field(default_factory=dict)
    # the fitted preprocessing as plain JSON-able data (a user table's `TableState.to_json()`),
    # saved with the run so new rows can be encoded the same way; None when there is none to carry
    preprocessing: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> SplitDataset:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)


def sample_ids(split: SplitDataset) -> list[str]:
    """A stable name for each row of `split`, the same in every run on the same data and split:
    the split's own `ids` (the embedded set: the row's index in the whole generated set; a
    prepared table: its image cell; a user table: its id column, else its row in the table),
    else the row's position in the split. A run's predictions file keys its samples by them."""
    ids = getattr(split, "ids", None)
    return [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(split))]


class TensorSplit:
    """An in-memory split: uint8 images, float table, long labels, sliced a batch at a time;
    `ids` optionally names each row (`sample_ids`)."""

    def __init__(
        self, images: torch.Tensor, tabular: torch.Tensor, labels: torch.Tensor, ids: Sequence[str] | None = None
    ):
        if not (len(images) == len(tabular) == len(labels)) or (ids is not None and len(ids) != len(labels)):
            raise ValueError("images, tabular, labels and ids differ in length")
        self.images, self.tabular, self.labels = images, tabular, labels
        self.ids = None if ids is None else list(ids)
        self.deferred = False

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: Sequence[int]) -> Batch:
        idx = torch.as_tensor(rows, dtype=torch.long)
        images = self.images[idx]
        return Batch(images if self.deferred else unit_range(images), self.tabular[idx], self.labels[idx])

    def defer_images(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Batches carry uint8 images from now on; see `images_on_device`."""
        self.deferred = True
        return unit_range


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float in [0, 1]."""
    return images.float().div_(255.0)


def images_on_device(
    split: SplitDataset, where: str, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Move the end of `split`'s image pipeline (augmentation, scaling, normalisation) to `device`.

    On a GPU the training augmentations cost the loader workers several times what reading the
    cache does, and a float32 batch is four times the bytes of a uint8 one; so the loader hands
    over uint8 batches (pinned), the engine copies them to the device and finishes them there.
    The augmentation parameters are drawn as before (RecipeAugmentation), in the main process.

    Args:
        where: 'loader' (in the loader: its workers or the main process), 'device', or 'auto'
            (the device when it is a GPU: a CPU run is left exactly as it was).

    Returns:
        What the engine applies to a batch's images once they are on the device, or None when
        the loader finishes them (or the split cannot defer them).
    """
    on_device = where == "device" or (where == "auto" and device.type == "cuda")
    defer = getattr(split, "defer_images", None)
    return defer() if on_device and defer is not None else None


class ShardedBatchSampler:
    """This rank's contiguous slice of every global batch (rank r of w takes rows r*B/w..)."""

    def __init__(self, batches: BatchSampler, rank: int, world_size: int):
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for rows in self.batches:
            per_rank = len(rows) // self.world_size
            yield rows[self.rank * per_rank : (self.rank + 1) * per_rank]


def make_loader(
    split: SplitDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """Batches of a split, shuffled reproducibly from `seed`.

    Evaluation keeps every row. Training drops a last batch of a single row (BatchNorm cannot
    train on it) and, when sharded over `shard = (rank, world_size)` processes, any last batch
    that does not split evenly, so every rank's loss is a mean over the same number of rows.
    """
    generator = torch.Generator().manual_seed(seed)
    order = RandomSampler(split, generator=generator) if shuffle else SequentialSampler(split)
    rank, world_size = shard
    remainder = len(split) % batch_size
    drop_last = shuffle and (remainder == 1 or (world_size > 1 and remainder % world_size != 0))
    batches = BatchSampler(order, batch_size, drop_last=drop_last)
    return DataLoader(
        split,
        sampler=batches if world_size == 1 else ShardedBatchSampler(batches, rank, world_size),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # the workers' base seed comes from here, not from the global RNG the model draws from
        generator=torch.Generator().manual_seed(seed),
    )
