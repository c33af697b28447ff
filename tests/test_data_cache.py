"""The image cache (built once, reused, invalidated by the source or the resolution) and the split."""

import os
import pickle

import numpy as np
import pandas as pd
import torch
from raw_datasets import make_table, write_jpeg
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from gaal_cli.config import DataConfig
from gaal_cli.data import build_data, make_loader
from gaal_cli.data.images import (
    RecipeAugmentation,
    color_jitter,
    crop_boxes,
    decode,
    ensure_cache,
    gaussian_blur,
    resized_crop,
)
from gaal_cli.data.problems import Problems


def photos(tmp_path, n=6):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"p{i}.jpg"
        write_jpeg(path, (40 * i, 100, 200 - 30 * i), rng, size=24)
        paths.append(str(path))
    return paths


def cache(paths, size, folder):
    problems = Problems("t", [f"row {i}" for i in range(len(paths))])
    file = ensure_cache(paths, size, folder, problems)
    return file, problems


def test_cache_holds_the_decoded_pixels_and_is_reused(tmp_path):
    paths = photos(tmp_path)
    file, problems = cache(paths, 16, tmp_path / "cache")
    pixels = np.load(file, mmap_mode="r")
    assert pixels.shape == (6, 3, 16, 16) and pixels.dtype == np.uint8 and not problems.bad
    for i, path in enumerate(paths):
        assert np.array_equal(pixels[i], decode(path, 16))
    built = file.stat().st_mtime_ns
    cache(paths, 16, tmp_path / "cache")
    assert file.stat().st_mtime_ns == built


def test_cache_rebuilt_when_an_image_changes_or_the_resolution_does(tmp_path):
    paths = photos(tmp_path)
    file, _ = cache(paths, 16, tmp_path / "cache")
    before = np.load(file).copy()
    write_jpeg(tmp_path / "p2.jpg", (255, 255, 0), np.random.default_rng(1), size=24)
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cache(paths, 16, tmp_path / "cache")
    after = np.load(file)
    assert np.array_equal(after[2], decode(paths[2], 16)) and not np.array_equal(after[2], before[2])
    assert np.array_equal(after[[0, 1, 3, 4, 5]], before[[0, 1, 3, 4, 5]])

    other, _ = cache(paths[:4], 16, tmp_path / "cache")  # another list of images: rebuilt
    assert np.load(other).shape[0] == 4
    bigger, _ = cache(paths, 20, tmp_path / "cache")
    assert np.load(bigger).shape == (6, 3, 20, 20)


def test_cache_remembers_images_that_failed_to_decode(tmp_path):
    paths = photos(tmp_path)
    data = (tmp_path / "p3.jpg").read_bytes()
    (tmp_path / "p3.jpg").write_bytes(data[:150])
    for _ in range(2):  # built, then reused: the failure is reported both times
        _, problems = cache(paths, 16, tmp_path / "cache")
        assert list(problems.bad) == [3] and "unreadable image" in problems.bad[3][0]


def table_data(tmp_path, **kw):
    table = make_table(tmp_path / "user", n=24)
    return build_data(DataConfig(name=str(table), target="species", image_column="photo", image_size=16, **kw), 0)


def test_cached_and_uncached_batches_are_equal(tmp_path):
    cached, direct = table_data(tmp_path), table_data(tmp_path, cache=False)
    assert cached.info["image_cache"] and direct.info["image_cache"] is None
    rows = [3, 0, 2]
    a, b = cached.test[rows], direct.test[rows]
    assert torch.equal(a.image, b.image) and torch.equal(a.tabular, b.tabular) and torch.equal(a.label, b.label)
    assert a.image.dtype == torch.float32 and 0 <= a.image.min() and a.image.max() <= 1


def test_split_is_picklable_and_works_in_loader_workers(tmp_path):
    data = table_data(tmp_path)
    clone = pickle.loads(pickle.dumps(data.val))
    assert clone._pixels is None
    data.val[[0]]  # opens the memory map in this process
    assert pickle.loads(pickle.dumps(data.val))._pixels is None
    in_process = torch.cat([b.image for b in make_loader(data.val, 2, shuffle=False)])
    loader = DataLoader(data.val, sampler=[[0, 1], [2]], batch_size=None, num_workers=1)
    in_worker = torch.cat([b.image for b in loader])
    assert torch.equal(in_process[:3], in_worker)


def test_augmentation_only_on_the_training_split(tmp_path):
    data = table_data(tmp_path, augment=True)
    assert data.train.transform.augment and not data.val.transform.augment and not data.test.transform.augment
    torch.manual_seed(0)
    assert not torch.equal(data.train[[0, 1]].image, data.train[[0, 1]].image)
    assert torch.equal(data.val[[0, 1]].image, data.val[[0, 1]].image)


def test_imagenet_normalisation_option(tmp_path):
    raw = table_data(tmp_path).test[[0]].image
    normed = table_data(tmp_path, normalize="imagenet").test[[0]].image
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normed, (raw - mean) / std, atol=1e-6)


def test_relative_paths_resolve_against_the_table_folder(tmp_path, monkeypatch):
    table = make_table(tmp_path / "user", n=24)
    frame = pd.read_csv(table)
    monkeypatch.chdir(tmp_path)
    data = build_data(DataConfig(name="user/table.csv", target="species", image_column="photo", image_size=16), 0)
    assert len(data.train) + len(data.val) + len(data.test) == len(frame)


def test_batched_blur_matches_torchvision_per_image():
    images = torch.rand(3, 3, 32, 32) * 255
    sigmas = [0.1, 1.0, 2.0]
    expected = torch.stack([F.gaussian_blur(images[i], [29, 29], [s, s]) for i, s in enumerate(sigmas)])
    assert torch.allclose(gaussian_blur(images, 29, torch.tensor(sigmas)), expected, atol=1e-3)


def test_batched_colour_jitter_matches_torchvision_per_image():
    images = torch.rand(3, 3, 8, 8) * 255
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for op in range(3):
        factors = torch.ones(3, 3)
        factors[:, op] = torch.tensor([0.3, 1.0, 1.7])
        order = torch.tensor([[op, (op + 1) % 3, (op + 2) % 3]] * 3)
        expected = torch.stack([adjust[op](images[i] / 255, float(factors[i, op])) for i in range(3)]) * 255
        assert torch.allclose(color_jitter(images, factors, order), expected, atol=1e-3), op


def test_batched_crop_matches_torchvision_resized_crop():
    images = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [3.0, 2.0, 13.0, 10.0]])  # x0, y0, x1, y1
    out = resized_crop(images, boxes, 16)
    assert torch.equal(out[0], images[0])
    expected = F.resized_crop(images[1], top=2, left=3, height=8, width=10, size=[16, 16], antialias=False)
    # equal inside; on the outermost pixels torchvision clamps to the crop, roi_align reads past it
    assert torch.allclose(out[1][:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)
    torch.manual_seed(0)
    boxes = crop_boxes(500, 64, 64, (0.6, 1.0), (3 / 4, 4 / 3))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes.min() >= 0 and boxes.max() <= 64
    assert (w * h / 64**2).min() > 0.58 and (w / h).min() > 0.72 and (w / h).max() < 1.38


def test_recipe_augmentation_draws_per_image():
    torch.manual_seed(0)
    same = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(6, 3, 16, 16)
    out = RecipeAugmentation(16)(same)
    assert out.shape == (6, 3, 16, 16) and out.min() >= 0 and out.max() <= 255
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 6


def test_same_seed_same_metrics_whether_the_cache_exists_or_not(tmp_path):
    """The cache build must not move the random streams the model and training draw from."""
    from gaal_cli.config import load_config
    from gaal_cli.training.engine import train

    table = make_table(tmp_path / "user", n=36)
    config = load_config(
        overrides=[
            f"data.name={table}", "data.target=species", "data.image_column=photo", "data.image_size=16",
            "data.batch_size=8", "model.feature_dim=8", "model.tabular_hidden=[8]", "model.dropout=0.3",
            "train.epochs=2", "train.device=cpu",
        ]
    )  # fmt: skip
    cache_files = lambda: sorted(p for p in (tmp_path / "user").rglob("images_16.npy"))  # noqa: E731
    built = train(config, tmp_path / "built", show_progress=False)
    assert cache_files(), "the first run should have built the image cache"
    reused = train(config, tmp_path / "reused", show_progress=False)
    assert built["metrics"] == reused["metrics"]
