"""data.augment_on: the end of the image pipeline (augmentation, scaling, normalisation) in the loader
or on the training device. On a CPU the 'device' is the CPU, so the two paths must agree exactly:
the draws are the same and so is the arithmetic. The CUDA side is in tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch
from raw_datasets import make_table

from gaal_cli.config import DataConfig, load_config
from gaal_cli.data import build_data, images_on_device, make_loader
from gaal_cli.data.images import ImageTransform, RecipeAugmentation
from gaal_cli.training.engine import setup, train


@pytest.mark.parametrize("normalize", ["none", "imagenet"])
def test_a_deferred_transform_finishes_to_the_loader_path_s_images(normalize):
    images = torch.randint(0, 256, (12, 3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(3)
    in_loader = ImageTransform(16, augment=True, normalize=normalize)(images)
    deferred = ImageTransform(16, augment=True, normalize=normalize)
    finish = deferred.on_device()
    torch.manual_seed(3)
    handed_over = deferred(images)
    assert handed_over.dtype == torch.uint8 and handed_over.shape == (12, 3, 16, 16), "resized, not finished"
    assert torch.equal(finish(handed_over), in_loader)


def test_augmentation_draws_then_applies_the_same_per_image_parameters():
    images = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8)
    augment = RecipeAugmentation(16)
    torch.manual_seed(7)
    whole = augment(images)
    torch.manual_seed(7)
    draws = augment.draw(9, 16, 16)
    assert len(draws.blurred) == len(draws.sigma) and draws.boxes.shape == (9, 4)
    assert torch.equal(augment.apply(images, draws), whole)


def test_auto_finishes_on_a_gpu_only_and_loader_never_defers():
    def split():
        return build_data(DataConfig(synthetic={"n_train": 10, "n_val": 10, "n_test": 10}, image_size=8), 0).train

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    kept = split()
    assert images_on_device(kept, "auto", cpu) is None and kept[[0, 1]].image.dtype == torch.float32
    assert images_on_device(split(), "loader", cuda) is None
    for where, device in (("auto", cuda), ("device", cpu)):
        deferred = split()
        finish = images_on_device(deferred, where, device)
        raw = deferred[[0, 1]].image
        assert raw.dtype == torch.uint8 and finish(raw).dtype == torch.float32


def user_table_config(tmp_path, where: str):
    table = make_table(tmp_path / "user", n=36)
    return load_config(
        overrides=[
            f"data.name={table}", "data.target=species", "data.image_column=photo", "data.image_size=16",
            "data.batch_size=8", "data.augment=true", f"data.augment_on={where}", "model.feature_dim=8",
            "model.tabular_hidden=[8]", "model.dropout=0.3", "train.epochs=2", "train.device=cpu",
        ]
    )  # fmt: skip


def test_training_with_augmentation_on_the_device_matches_the_loader_path(tmp_path):
    """Same seed, same draws (both in the main process here), same arithmetic: same run."""
    session = setup(user_table_config(tmp_path, "device"))
    assert session.finish_images is not None
    batch = next(iter(make_loader(session.data.train, 8, shuffle=True)))
    assert batch.image.dtype == torch.uint8, "the loader hands over uint8 images"
    assert setup(user_table_config(tmp_path, "auto")).finish_images is None, "a CPU run keeps the loader path"

    reports = {where: train(user_table_config(tmp_path, where), tmp_path / where, show_progress=False)
               for where in ("loader", "device")}  # fmt: skip
    assert reports["device"]["metrics"] == reports["loader"]["metrics"]
    steps = {where: (tmp_path / where / "steps.jsonl").read_text() for where in reports}
    assert steps["device"] == steps["loader"]
