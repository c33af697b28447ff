"""Loader throughput, images per second: without and with the image cache, and with the images'
augmentation/scaling in the loader (workers) or on the training device (data.augment_on).

    python benchmarks/loader.py                       # 512 JPEGs of 300x300 (resized_DVM size) at 128 px
    python benchmarks/loader.py --n 2048 --workers 2 --augment

Writes a folder of random JPEGs and a table, then times a pass over the training split (64 % of
the rows), each batch brought to the device as float images ready for the encoder:
- decoding every JPEG per batch (data.cache=false), finished in the loader;
- from the memory-mapped cache (after building it, timed separately), finished in the loader;
- from the cache, the loader handing over uint8 batches (pinned on CUDA) that are finished on
  the device (data.augment_on=device): augmentation parameters drawn on the CPU, pixels there.
Nothing here is part of the test suite.

The device is CUDA when there is one (--device), else the CPU: there the 'device' path is the
main process doing the augmentation with torch's thread count, against the loader workers
(single-threaded each) doing it in parallel; which wins depends on the cores, not on a GPU.

With --augment and --workers 0 the per-image augmentations run in the main process with
torch's default thread count, which on a busy machine can be ten times slower than with
OMP_NUM_THREADS=1; loader workers run single-threaded and do not have that problem.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gaal_cli.config import DataConfig
from gaal_cli.data import build_data, images_on_device, make_loader
from gaal_cli.training.engine import resolve_device


def write_folder(root: Path, n: int, side: int) -> Path:
    rng = np.random.default_rng(0)
    lines = ["image,label,x"]
    base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    for i in range(n):
        shifted = np.roll(base, i, axis=1) // 2 + rng.integers(0, 128, (1, 1, 3), dtype=np.uint8)
        Image.fromarray(shifted).save(root / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg,{i % 4},{rng.normal():.3f}")
    table = root / "table.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def one_pass(cfg: DataConfig, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(seconds to build the dataset, images per second over the train split, on `device`).

    The loader runs two passes and the second is timed, so worker start-up is left out.
    """
    t0 = time.perf_counter()
    data = build_data(cfg, 0)
    built = time.perf_counter() - t0
    finish = images_on_device(data.train, cfg.augment_on, device)
    loader = make_loader(
        data.train, batch_size, shuffle=True, seed=0, num_workers=cfg.num_workers, pin_memory=device.type == "cuda"
    )

    def drain() -> int:
        seen = 0
        for batch in loader:
            images = batch.image.to(device, non_blocking=True)
            if finish is not None:
                images = finish(images)
            seen += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen

    drain()
    t0 = time.perf_counter()
    seen = drain()
    return built, seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="number of images")
    parser.add_argument("--side", type=int, default=300, help="side of the JPEGs on disk")
    parser.add_argument("--size", type=int, default=128, help="training resolution")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="apply the DVM training augmentations")
    parser.add_argument("--device", default="auto", help="where the device path runs: auto, cpu, cuda, cuda:N")
    args = parser.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        table = write_folder(Path(tmp), args.n, args.side)
        cfg = dict(name=str(table), target="label", image_column="image", image_size=args.size,
                   num_workers=args.workers, augment=args.augment)  # fmt: skip
        _, direct = one_pass(DataConfig(**cfg, cache=False, augment_on="loader"), args.batch, device)
        build, _ = one_pass(DataConfig(**cfg, cache=True, augment_on="loader"), args.batch, device)
        _, cached = one_pass(DataConfig(**cfg, cache=True, augment_on="loader"), args.batch, device)
        _, on_device = one_pass(DataConfig(**cfg, cache=True, augment_on="device"), args.batch, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU: the main process"
    print(f"{args.n} JPEGs {args.side}x{args.side} -> {args.size}px, batch {args.batch}, workers {args.workers}, "
          f"augment {args.augment}, device {device}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"  decode every batch        : {direct:8.1f} images/s")
    print(f"  cached, loader finishes   : {cached:8.1f} images/s   (cache built once in {build:.1f} s)")
    print(f"  cached, device finishes   : {on_device:8.1f} images/s   (on {where})")
    print(f"  cache speed-up            : {cached / direct:8.1f}x")
    print(f"  device / loader           : {on_device / cached:8.2f}x")


if __name__ == "__main__":
    main()
