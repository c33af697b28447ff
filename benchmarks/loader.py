"""Loader throughput, images per second, with and without the image cache.

    python benchmarks/loader.py                       # 512 JPEGs of 300x300 (resized_DVM size) at 128 px
    python benchmarks/loader.py --n 2048 --workers 2 --augment

Writes a folder of random JPEGs and a table, then times a pass over the training split
(64 % of the rows):
once decoding every JPEG per batch (data.cache=false), once from the memory-mapped cache
(after building it, timed separately). Nothing here is part of the test suite.

With --augment and --workers 0 the per-image augmentations run in the main process with
torch's default thread count, which on a busy machine can be ten times slower than with
OMP_NUM_THREADS=1; loader workers run single-threaded and do not have that problem.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gaal_cli.config import DataConfig
from gaal_cli.data import build_data, make_loader


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


def one_pass(cfg: DataConfig, batch_size: int) -> tuple[float, float]:
    """(seconds to build the dataset, images per second over the train split).

    The loader runs two passes and the second is timed, so worker start-up is left out.
    """
    t0 = time.perf_counter()
    data = build_data(cfg, 0)
    built = time.perf_counter() - t0
    loader = make_loader(data.train, batch_size, shuffle=True, seed=0, num_workers=cfg.num_workers)
    for _ in loader:
        pass
    t0 = time.perf_counter()
    seen = sum(len(batch.label) for batch in loader)
    return built, seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="number of images")
    parser.add_argument("--side", type=int, default=300, help="side of the JPEGs on disk")
    parser.add_argument("--size", type=int, default=128, help="training resolution")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="apply the DVM training augmentations")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        table = write_folder(Path(tmp), args.n, args.side)
        cfg = dict(name=str(table), target="label", image_column="image", image_size=args.size,
                   num_workers=args.workers, augment=args.augment)  # fmt: skip
        _, direct = one_pass(DataConfig(**cfg, cache=False), args.batch)
        build, _ = one_pass(DataConfig(**cfg, cache=True), args.batch)
        _, cached = one_pass(DataConfig(**cfg, cache=True), args.batch)
    print(f"{args.n} JPEGs {args.side}x{args.side} -> {args.size}px, batch {args.batch}, workers {args.workers}, "
          f"augment {args.augment}")  # fmt: skip
    print(f"  decode every batch : {direct:8.1f} images/s")
    print(f"  cached (memmap)    : {cached:8.1f} images/s   (cache built once in {build:.1f} s)")
    print(f"  speed-up           : {cached / direct:8.1f}x")


if __name__ == "__main__":
    main()
