"""Images of the real datasets: decoding, the on-disk cache, the augmentations and the split.

Decoding a JPEG costs far more than a training step's share of a small encoder, so images are
decoded and resized once to the training resolution into one uint8 array on disk
(`<cache>/images_<size>.npy`), memory-mapped by every loader worker; augmentations run on
the cached pixels. The cache's metadata holds a key over the image paths, their sizes and
modification times and the resolution; any change rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from gaal_cli.data.base import Batch
from gaal_cli.data.tabular import Problems

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_CHUNK = 256


def decode(path: str | Path, size: int) -> np.ndarray:
    """The image at `path` as RGB uint8 (3, size, size), squashed to a square as in MMCL."""
    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def check_files(paths: Sequence[str], problems: Problems, *, headers: bool = True) -> None:
    """Record missing files and, with `headers`, files that are not images (no decoding: cheap)."""
    for row, path in enumerate(paths):
        if not headers:
            if not os.path.isfile(path):
                problems.add(row, "image file not found", file=path)
            continue
        try:
            with Image.open(path):
                pass
        except FileNotFoundError:
            problems.add(row, "image file not found", file=path)
        except (UnidentifiedImageError, OSError) as err:
            problems.add(row, f"unreadable image: {err}", file=path)


def cache_key(paths: Sequence[str], size: int) -> str:
    """Changes when any image is added, removed, replaced or touched, or the resolution changes."""
    digest = hashlib.sha256(f"size={size}\n".encode())
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\tmissing\n".encode())
    return digest.hexdigest()


class _Decoder(torch.utils.data.Dataset):
    """Decodes one image per item for the cache build; a failure comes back as its message."""

    def __init__(self, paths: Sequence[str], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, decode(self.paths[i], self.size), None
        except (OSError, UnidentifiedImageError, ValueError) as err:
            return i, None, str(err) or type(err).__name__


def ensure_cache(paths: Sequence[str], size: int, folder: Path, problems: Problems, num_workers: int = 0) -> Path:
    """The cache file for `paths` at `size`, built (or rebuilt) when its key is stale.

    Images that fail to decode are recorded in `problems` (and remembered in the metadata, so
    a reused cache reports them again); their pixels are left black.

    Returns:
        The .npy file holding a (N, 3, size, size) uint8 array in the order of `paths`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    file, meta_file = folder / f"images_{size}.npy", folder / f"images_{size}.json"
    key = cache_key(paths, size)
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if meta.get("key") != key or not file.exists():
        meta = {"key": key, "count": len(paths), "size": size, "failed": _build(paths, size, file, num_workers)}
        tmp = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_file)
    for row, message in meta["failed"].items():
        problems.add(int(row), f"unreadable image: {message}", file=paths[int(row)])
    return file


def _build(paths: Sequence[str], size: int, file: Path, num_workers: int) -> dict[str, str]:
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npy")  # runs in parallel may build the same cache
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
    failed: dict[str, str] = {}
    loader = DataLoader(_Decoder(paths, size), batch_size=None, num_workers=num_workers, collate_fn=lambda item: item)
    for i, image, error in loader:
        if error is None:
            pixels[i] = image
        else:
            pixels[i] = 0
            failed[str(i)] = error
    pixels.flush()
    del pixels
    os.replace(tmp, file)
    return failed


def _as_is(item):
    return item


class ImageTransform:
    """uint8 images (B, 3, H, W) to the float tensors the encoders take.

    Args:
        size: output side.
        augment: the MMCL/GAAL training augmentations (REFERENCE §2); training split only.
        normalize: 'imagenet' (mean/std, CelebA and SUN in GAAL) or 'none' ([0, 1], DVM in MMCL).
    """

    def __init__(self, size: int, augment: bool, normalize: str):
        self.size, self.augment, self.normalize = size, augment, normalize
        self._augment = RecipeAugmentation(size) if augment else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = v2.functional.resize(images, [self.size, self.size], antialias=True)
        out = self._augment(images) if self._augment is not None else images.float()
        out = out.div_(255.0)
        if self.normalize == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            out = (out - mean) / std
        return out


class RecipeAugmentation:
    """MMCL's DVM training augmentations, each drawn per image, in MMCL's order:
    ColorJitter(0.8, 0.8, 0.8) p=0.8, grayscale p=0.2, GaussianBlur(29, sigma 0.1-2) p=0.5,
    RandomResizedCrop(scale 0.6-1, ratio 3/4-4/3), horizontal flip p=0.5.

    The blur runs on the whole batch at once as two 1-D passes (a 29x29 kernel per image costs
    ~12 ms on a CPU core, more than everything else together). The kernel shrinks to the largest
    odd size below the image side, since reflect padding needs an image wider than half the kernel.
    Crops are taken from the cached pixels at the training resolution rather than from the
    original file, so a crop is upsampled from fewer pixels than in MMCL.
    """

    def __init__(self, size: int):
        self.kernel = min(29, size - 1 if size % 2 == 0 else size)
        self.colour = v2.Compose(
            [
                v2.RandomApply([v2.ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8)], p=0.8),
                v2.RandomGrayscale(p=0.2),
            ]
        )
        self.geometry = v2.Compose(
            [
                v2.RandomResizedCrop(size=(size, size), scale=(0.6, 1.0), ratio=(0.75, 4 / 3), antialias=True),
                v2.RandomHorizontalFlip(p=0.5),
            ]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) to augmented float (B, 3, size, size) on the 0-255 scale."""
        coloured = torch.stack([self.colour(img) for img in images]).float()
        blur = torch.rand(len(images)) < 0.5
        if blur.any():
            sigma = torch.empty(int(blur.sum())).uniform_(0.1, 2.0)
            coloured[blur] = gaussian_blur(coloured[blur], self.kernel, sigma)
        return torch.stack([self.geometry(img) for img in coloured])


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur float images (B, C, H, W), image i with `sigma[i]`, reflect-padded (as torchvision)."""
    n, c, h, w = images.shape
    half = kernel // 2
    t = torch.arange(-half, half + 1, dtype=images.dtype)
    weights = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, 0)
    x = torch.nn.functional.pad(images.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    x = torch.nn.functional.conv2d(x, weights[:, None, None, :], groups=n * c)
    x = torch.nn.functional.conv2d(x, weights[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


class ImageTableSplit:
    """A split of an image table: each batch of rows reads cached pixels (or decodes files).

    Picklable for DataLoader workers: the memory map is opened lazily in each process.

    Args:
        paths: image file per row.
        tabular: encoded table (rows x fields).
        labels: class index per row.
        transform: uint8 to float, with or without augmentation.
        cache: the cache file, or None to decode the files on every access.
        cache_rows: row of the cache array holding each row's image.
    """

    def __init__(
        self,
        paths: Sequence[str],
        tabular: torch.Tensor,
        labels: torch.Tensor,
        transform: ImageTransform,
        cache: Path | None = None,
        cache_rows: np.ndarray | None = None,
    ):
        if not (len(paths) == len(tabular) == len(labels)):
            raise ValueError("paths, tabular and labels differ in length")
        self.paths, self.tabular, self.labels = list(paths), tabular, labels
        self.transform, self.cache = transform, cache
        self.cache_rows = np.arange(len(paths)) if cache_rows is None else np.asarray(cache_rows)
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def _images(self, rows: np.ndarray) -> torch.Tensor:
        if self.cache is None:
            size = self.transform.size
            return torch.from_numpy(np.stack([decode(self.paths[r], size) for r in rows]))
        if self._pixels is None:
            self._pixels = np.load(self.cache, mmap_mode="r")
        where = self.cache_rows[rows]
        order = np.argsort(where, kind="stable")  # ascending reads are sequential on disk
        images = np.empty((len(rows), *self._pixels.shape[1:]), dtype=np.uint8)
        images[order] = self._pixels[where[order]]
        return torch.from_numpy(images)

    def __getitem__(self, rows: Sequence[int]) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        idx = torch.from_numpy(rows)
        return Batch(self.transform(self._images(rows)), self.tabular[idx], self.labels[idx])
