"""Images of the real datasets: decoding, the on-disk cache, the augmentations and the split.

Decoding a JPEG costs far more than a training step's share of a small encoder, so images are
decoded and resized once to the training resolution into one uint8 array on disk
(`<cache>/images_<size>.npy`), memory-mapped by every loader worker; augmentations run on
the cached pixels. The cache's metadata holds a key over the image paths, their sizes and
modification times and the resolution; any change rebuilds it, as does metadata that does not
read as gaal's. The cache's folders and files are gaal's own: a link planted at one of them is
refused (gaal_cli.foundation.files), never written through.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.ops import roi_align
from torchvision.transforms import v2

from gaal_cli.data.base import Batch
from gaal_cli.data.problems import Problems
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import own_folder, write_file
from gaal_cli.foundation.untrusted import open_regular, read_json

#: the folder beside a user's table that holds its image caches (`<table folder>/.gaal_cache/<stem>/`)
CACHE_FOLDER = ".gaal_cache"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_CHUNK = 256


# what opening or decoding a file from a stranger may raise; a decompression bomb (a small file
# that claims billions of pixels) is one more unreadable image, not a crash
IMAGE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """PIL's Image.open with its decompression-bomb warning (over MAX_IMAGE_PIXELS) made an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # a FIFO or a device would block or never end: only a regular file is opened (an OSError, a bad row)
        with open_regular(path) as fh, Image.open(fh) as img:
            yield img


def decode(path: str | Path, size: int) -> np.ndarray:
    """The image at `path` as RGB uint8 (3, size, size), squashed to a square as in MMCL."""
    with _opened(path) as img:
        if img.mode == "P" and "transparency" in img.info:
            # the same pixels as P -> RGB, without PIL's warning per image (transparency is dropped either way)
            img = img.convert("RGBA")
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
            with _opened(path):
                pass
        except FileNotFoundError:
            problems.add(row, "image file not found", file=path)
        except IMAGE_ERRORS as err:
            problems.add(row, f"unreadable image: {err}", file=path, kind="unreadable image")


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
        except IMAGE_ERRORS as err:
            return i, None, str(err) or type(err).__name__


class Bar(Protocol):
    def advance(self, n: int = 1) -> None: ...


# what shows a long job's progress: made with a description and a total, entered as a context,
# advanced once per item (gaal_cli.foundation.display.CountProgress is one); the data layer draws nothing itself
Progress = Callable[[str, int], AbstractContextManager[Bar]]


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


def no_progress(description: str, total: int) -> AbstractContextManager[Bar]:
    """The default `Progress`: nothing on the screen."""
    return nullcontext(_Silent())


def ensure_cache(
    paths: Sequence[str],
    size: int,
    folder: Path,
    problems: Problems,
    num_workers: int = 0,
    progress: Progress | None = None,
) -> Path:
    """The cache file for `paths` at `size`, built (or rebuilt) when its key is stale.

    Images that fail to decode are recorded in `problems` (and remembered in the metadata, so
    a reused cache reports them again); their pixels are left black. `progress` shows the
    build (default: nothing shown).

    Returns:
        The .npy file holding a (N, 3, size, size) uint8 array in the order of `paths`.
    """
    if folder.parent.name == CACHE_FOLDER:
        own_folder(folder.parent)
    own_folder(folder)
    file, meta_file = folder / f"images_{size}.npy", folder / f"images_{size}.json"
    key = cache_key(paths, size)
    meta = _read_meta(meta_file, len(paths))
    if meta.get("key") != key or not file.exists():
        failed = _build(paths, size, file, num_workers, progress or no_progress)
        meta = {"key": key, "count": len(paths), "size": size, "failed": failed}
        write_file(meta_file, json.dumps(meta))
    for row, message in meta["failed"].items():
        problems.add(int(row), f"unreadable image: {message}", file=paths[int(row)], kind="unreadable image")
    return file


def _read_meta(file: Path, rows: int) -> dict:
    """A cache's metadata, or {} (rebuild) when it is missing or does not read as gaal's."""
    if not file.exists():
        return {}
    try:
        meta = read_json(file)
    except GaalError:
        return {}
    failed = meta.get("failed") if isinstance(meta, dict) else None
    if not isinstance(failed, dict):
        return {}
    if not all(_row_number(k, rows) and isinstance(v, str) for k, v in failed.items()):
        return {}
    return meta


def _row_number(text: str, rows: int) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 12 and int(text) < rows


def _build(paths: Sequence[str], size: int, file: Path, num_workers: int, progress: Progress) -> dict[str, str]:
    """Decode every image into `file` (gaal_cli.foundation.files.write_file: aside, renamed when complete,
    the temporary file removed on any failure or Ctrl-C).

    The pixels are written with ordinary writes, image after image, never through a memory
    map: a full disk is then an error naming the folder, not a SIGBUS that kills the process.

    Raises:
        GaalError: the disk has too little room for the cache (checked first), or a write failed.
    """
    shape = (len(paths), 3, size, size)
    check_room(file.parent, math.prod(shape) + 4096, f"the {size}px image cache of {len(paths):,} images")
    failed: dict[str, str] = {}

    def write(fh) -> None:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
        blank = bytes(3 * size * size)
        loader = DataLoader(
            _Decoder(paths, size),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=lambda item: item,
            generator=torch.Generator(),  # never draw the workers' seed from the global RNG
        )
        with progress(f"image cache {size}px", len(paths)) as bar:
            for i, image, error in loader:  # in order, workers or not
                if error is None:
                    fh.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
                else:
                    fh.write(blank)
                    failed[str(i)] = error
                bar.advance()

    write_file(file, write)
    return failed


def check_room(folder: Path, needed: int, what: str) -> None:
    """Refuse to start writing `needed` bytes where the disk has less room.

    Raises:
        GaalError: names the folder, the bytes needed and the bytes free.
    """
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise GaalError(
            f"has {free / 2**20:,.1f} MiB free, but {what} needs {needed / 2**20:,.1f} MiB; free some space, or set "
            "data.cache=false to decode the images as they are read",
            source=str(folder),
        )


def _as_is(item):
    return item


class ImageTransform:
    """uint8 images (B, 3, H, W) to the float tensors the encoders take.

    Resizing runs where the batch is read. The rest (augmentation, scaling, normalisation) runs
    there too, or, after `on_device()`, wherever `finish` is called: the engine then moves uint8
    batches to the training device (a quarter of the bytes of float32) and finishes them there.

    Args:
        size: output side.
        augment: the MMCL/GAAL training augmentations (REFERENCE §2); training split only.
        normalize: 'imagenet' (mean/std, CelebA and SUN in GAAL) or 'none' ([0, 1], DVM in MMCL).
    """

    def __init__(self, size: int, augment: bool, normalize: str):
        self.size, self.augment, self.normalize = size, augment, normalize
        self._augment = RecipeAugmentation(size) if augment else None
        self.deferred = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = v2.functional.resize(images, [self.size, self.size], antialias=True)
        return images if self.deferred else self.finish(images)

    def on_device(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Leave everything after the resize to `finish`, called by the engine on the device.

        Returns:
            `finish`, the function that turns the uint8 batches into the encoders' floats.
        """
        self.deferred = True
        return self.finish

    def finish(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, size, size) to float on the same device: augmented, scaled, normalised."""
        out = self._augment(images) if self._augment is not None else images.float()
        out = out.div_(255.0)
        if self.normalize == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=out.device).view(1, 3, 1, 1)
            out = (out - mean) / std
        return out


class Draws(NamedTuple):
    """One batch's augmentation parameters, one row per image (see RecipeAugmentation.draw)."""

    jitter: torch.Tensor  # bool (B,): colour jitter applied
    factors: torch.Tensor  # (B, 3) brightness, contrast, saturation factors
    order: torch.Tensor  # long (B, 3): the order the three are applied in
    gray: torch.Tensor  # bool (B,): turned grey
    blurred: torch.Tensor  # long (K,): rows blurred
    sigma: torch.Tensor  # (K,) their blur widths
    boxes: torch.Tensor  # (B, 4) crop boxes x0, y0, x1, y1
    flipped: torch.Tensor  # long (F,): rows flipped

    def to(self, device: torch.device) -> Draws:
        """On `device`; a GPU gets them from pinned memory without waiting for the work queued before."""
        if device.type == "cpu":
            return self
        return Draws(*(t.pin_memory().to(device, non_blocking=True) for t in self))


class RecipeAugmentation:
    """MMCL's DVM training augmentations, drawn independently per image, in MMCL's order:
    ColorJitter(0.8, 0.8, 0.8) p=0.8, grayscale p=0.2, GaussianBlur(29, sigma 0.1-2) p=0.5,
    RandomResizedCrop(scale 0.6-1, ratio 3/4-4/3), horizontal flip p=0.5.

    Each step runs on the whole batch at once, with per-image parameters drawn as torchvision
    draws them (jitter factors in [0.2, 1.8] applied in a random order per image; the blur as
    two 1-D passes; the crop box by torchvision's ten-attempt rule, then bilinear resampling,
    which is what an antialiased resize does when it enlarges). Per-image torchvision calls
    cost ~3 ms an image on a CPU core, most of it in a 29x29 blur. The blur kernel shrinks to
    the largest odd size below the image side, since reflect padding needs an image wider than
    half the kernel. Crops come from the cached pixels at the training resolution rather than
    from the original file, so a crop is enlarged from fewer pixels than in MMCL.

    The parameters are always drawn on the CPU from torch's default generator (in the process
    that calls this: a loader worker, or the main process), and the pixels are worked on the
    images' own device, so a batch augmented on a GPU gets the draws it would get on the CPU.
    """

    JITTER = 0.8
    SCALE, RATIO = (0.6, 1.0), (3 / 4, 4 / 3)

    def __init__(self, size: int):
        self.size = size
        self.kernel = min(29, size - 1 if size % 2 == 0 else size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) to augmented float (B, 3, size, size) on the 0-255 scale, same device."""
        n, _, h, w = images.shape
        return self.apply(images, self.draw(n, h, w))

    def draw(self, n: int, h: int, w: int) -> Draws:
        """The parameters for `n` images of h x w, drawn on the CPU in a fixed order."""
        factors = torch.empty(n, 3).uniform_(1 - self.JITTER, 1 + self.JITTER)
        jitter = _draw(n, 0.8)
        order = torch.argsort(torch.rand(n, 3), dim=1)
        gray, blur = _draw(n, 0.2), _draw(n, 0.5)
        blurred = blur.nonzero().view(-1)
        sigma = torch.empty(len(blurred)).uniform_(0.1, 2.0)
        boxes = crop_boxes(n, h, w, self.SCALE, self.RATIO)
        flipped = _draw(n, 0.5).nonzero().view(-1)
        return Draws(jitter, factors, order, gray, blurred, sigma, boxes, flipped)

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Augment uint8 `images` with `draws`, on the images' device (float32, 0-255 scale)."""
        d = draws.to(images.device)
        x = images.float()
        x = torch.where(d.jitter.view(-1, 1, 1, 1), color_jitter(x, d.factors, d.order), x)
        x = torch.where(d.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if len(d.blurred):
            x[d.blurred] = gaussian_blur(x[d.blurred], self.kernel, d.sigma)
        x = resized_crop(x, d.boxes, self.size)
        x[d.flipped] = x[d.flipped].flip(-1)
        return x


def _draw(n: int, p: float) -> torch.Tensor:
    """Per-image coin flips (B,), True with probability `p`."""
    return torch.rand(n) < p


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (B, 1, H, W), the weights torchvision uses."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation (columns 0, 1, 2 of `factors`, one row per image),
    applied in the per-image `order` (a permutation of 0, 1, 2), clamped to [0, 255].

    Each is torchvision's blend f * x + (1 - f) * target, with target black, the mean luma, or
    the grey image.
    """
    n = len(x)
    for step in range(3):
        op = order[:, step].view(n, 1, 1, 1)
        f = factors.gather(1, order[:, step : step + 1]).view(n, 1, 1, 1)
        gray = grayscale(x)
        target = torch.where(op == 2, gray, torch.where(op == 1, gray.mean(dim=(2, 3), keepdim=True), 0.0))
        x = (f * x).add_((1 - f) * target).clamp_(0, 255)
    return x


def crop_boxes(n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """(n, 4) crop boxes x0, y0, x1, y1 by torchvision's RandomResizedCrop rule: the first of ten
    draws of area and log-uniform aspect ratio that fits, else the largest centred crop in `ratio`."""
    attempts = 10
    area = h * w * torch.empty(n, attempts).uniform_(*scale)
    aspect = torch.exp(torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    cw = torch.sqrt(area * aspect).round()
    ch = torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(fits.int(), dim=1)
    rows = torch.arange(n)
    cw, ch, found = cw[rows, first], ch[rows, first], fits[rows, first]
    side_ratio = w / h
    fw = float(w if side_ratio <= ratio[1] else round(h * ratio[1]))
    fh = float(h if side_ratio >= ratio[0] else round(w / ratio[0]))
    cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
    x0 = torch.where(found, torch.floor(torch.rand(n) * (w - cw + 1)), (w - cw) // 2)
    y0 = torch.where(found, torch.floor(torch.rand(n) * (h - ch + 1)), (h - ch) // 2)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box resampled bilinearly to size x size (one sample per output pixel).

    As torchvision's resized_crop when enlarging, except on the outermost output pixels, which
    interpolate with the pixels just outside the box instead of repeating the box's edge.
    """
    indexed = torch.cat([torch.arange(len(x), dtype=x.dtype, device=x.device)[:, None], boxes.to(x.dtype)], dim=1)
    return roi_align(x, indexed, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur float images (B, C, H, W), image i with `sigma[i]`, reflect-padded (as torchvision)."""
    n, c, h, w = images.shape
    half = kernel // 2
    t = torch.arange(-half, half + 1, dtype=images.dtype, device=images.device)
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
        ids: a stable name per row (see `gaal_cli.data.base.sample_ids`); None: none given.
    """

    def __init__(
        self,
        paths: Sequence[str],
        tabular: torch.Tensor,
        labels: torch.Tensor,
        transform: ImageTransform,
        cache: Path | None = None,
        cache_rows: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
    ):
        if not (len(paths) == len(tabular) == len(labels)) or (ids is not None and len(ids) != len(paths)):
            raise ValueError("paths, tabular, labels and ids differ in length")
        self.paths, self.tabular, self.labels = list(paths), tabular, labels
        self.ids = None if ids is None else list(ids)
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

    def defer_images(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Batches carry uint8 images from now on; see base.images_on_device."""
        return self.transform.on_device()
