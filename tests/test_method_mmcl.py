"""MMCL: the contrastive loss on a hand-computed case, SCARF corruption, the pretraining view,
label-free pretraining, the probe stage, and one tiny CLI run."""

import json
import math

import pytest
import torch
from staging import enter_epoch, plan_for
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.mmcl import PretrainAugmentation, augment_view, clip_loss, scarf_corrupt
from gaal_cli.training.engine import create_method

runner = CliRunner()


def setup(tiny, *extra):
    config = load_config(overrides=[*tiny, "method=mmcl", *extra])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data)
    method.train()
    return method, next(iter(make_loader(data.train, 32, shuffle=True, seed=0)))


def test_clip_loss_by_hand():
    # unit image embeddings; the tables' second row is (3, 4), i.e. (0.6, 0.8) once normalised
    z_image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_table = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # S = [[1, 0.6], [0, 0.8]] / 0.5 = [[2, 1.2], [0, 1.6]]
    rows = (math.log(1 + math.exp(1.2 - 2)) + math.log(1 + math.exp(0 - 1.6))) / 2  # image -> table
    cols = (math.log(1 + math.exp(0 - 2)) + math.log(1 + math.exp(1.2 - 1.6))) / 2  # table -> image
    loss, logits = clip_loss(z_image, z_table, temperature=0.5, lambda_image=0.25)
    assert torch.allclose(logits, torch.tensor([[2.0, 1.2], [0.0, 1.6]]))
    assert float(loss) == pytest.approx(0.25 * rows + 0.75 * cols, rel=1e-6)


def test_scarf_replaces_the_chosen_fraction_with_values_of_the_same_column():
    n, d = 8, 10
    table = (100 * torch.arange(d)[None] + torch.arange(n)[:, None]).float()  # column j holds 100 j + row
    torch.manual_seed(0)
    changed = 0
    for rate, k in [(0.3, 3), (0.35, 3), (0.5, 5)]:  # int(D * rate) fields per row
        corrupted, mask = scarf_corrupt(table, rate)
        assert mask.sum(1).tolist() == [k] * n
        assert torch.equal(corrupted[~mask], table[~mask])
        column = torch.arange(d).expand(n, d)
        drawn = corrupted[mask]
        assert torch.equal(torch.div(drawn, 100, rounding_mode="floor"), column[mask].float())
        assert ((drawn % 100) < n).all()  # some row of the batch
        changed += int((corrupted != table).sum())
    assert changed > 0  # values really come from other rows


def test_pretraining_view_keeps_unaugmented_images_and_the_normalisation():
    torch.manual_seed(0)
    pixels = torch.rand(4, 3, 16, 16)
    normalised = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    augmentation = PretrainAugmentation(16)
    assert torch.allclose(augment_view(normalised, 0.0, "imagenet", augmentation), normalised, atol=1e-5)
    assert torch.allclose(augment_view(pixels, 0.0, "none", augmentation), pixels, atol=1e-6)
    view = augment_view(pixels, 1.0, "none", augmentation)
    assert view.shape == pixels.shape and not torch.allclose(view, pixels)
    assert view.min() >= -1e-5 and view.max() <= 1 + 1e-5  # colour jitter clamps on the pixel scale


def test_pretraining_never_reads_a_label_and_trains_encoders_and_projections(tiny):
    method, batch = setup(tiny)
    plan = plan_for(method, 2)
    assert [(p.name, p.stage.labels, p.stage.selects) for p in plan] == [
        ("pretrain", False, False),
        ("probe", True, True),
    ]
    enter_epoch(method, plan, 1)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    stats = method.train_step(batch._replace(label=None), opt)  # what the engine hands a label-free stage
    assert 0 <= float(stats["acc"]) <= 1 and math.isfinite(float(stats["loss"]))
    learned = {n for n, p in method.named_parameters() if p.grad is not None}
    assert any(n.startswith("encoders.image.") for n in learned)
    assert any(n.startswith("encoders.tabular.") for n in learned)
    assert any(n.startswith("project.") for n in learned)
    assert not any(n.startswith("head.") for n in learned)


@pytest.mark.parametrize("finetune", ["frozen", "trainable"])
def test_probe_trains_the_head_on_the_image_encoder(tiny, finetune):
    method, batch = setup(tiny, f"methods.mmcl.finetune={finetune}")
    plan = plan_for(method, 2)
    enter_epoch(method, plan, 2)
    assert plan[1].stage.trains == (("head.",) if finetune == "frozen" else ("head.", "encoders.image."))
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    method.train_step(batch, opt)
    learned = {n for n, p in method.named_parameters() if p.grad is not None}
    assert any(n.startswith("head.") for n in learned)
    assert not any(n.startswith(("project.", "encoders.tabular.")) for n in learned)
    assert any(n.startswith("encoders.image.") for n in learned) == (finetune == "trainable")
    assert method.encoders.image.training == (finetune == "trainable")


def test_normalised_images_with_image_normalize_none_are_refused(tiny):
    method, batch = setup(tiny)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    with pytest.raises(GaalError, match="image_normalize"):
        method.train_step(batch._replace(image=batch.image - 0.5, label=None), opt)


def test_cli_train_pretrains_without_labels_then_reports_the_image_column(tmp_path, tiny):
    out = tmp_path / "mmcl"
    extra = ["train.epochs=2", "methods.mmcl.pretrain_epochs=1", "methods.mmcl.probe_epochs=1"]
    args = ["train", "-m", "mmcl", "--out", str(out), "-q", *[a for o in tiny + extra for a in ("--set", o)]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [(s["name"], s["labels"], s["selects"]) for s in report["stages"]] == [
        ("pretrain", False, False),
        ("probe", True, True),
    ]
    assert set(report["metrics"]["test"]) == {"multi", "image"}
    assert report["metrics"]["test"]["image"] == report["metrics"]["test"]["multi"]


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_probe_sees_images_augmented_at_its_own_rate(tiny, rate):
    method, batch = setup(tiny, f"methods.mmcl.probe_augmentation_rate={rate}")
    plan = plan_for(method, 2)
    enter_epoch(method, plan, 2)
    seen = []
    method.encoders.image.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    method.train_step(batch, torch.optim.SGD(method.parameters(), lr=0.0))
    assert torch.equal(seen[0], batch.image) == (rate == 0.0)


def test_default_pretraining_warms_up_then_anneals_at_resnet18s_rate():
    from gaal_cli.methods.mmcl import MmclSettings

    spec = MmclSettings().pretrain_optimizer
    assert (spec.lr, spec.warmup_epochs, spec.cosine) == (3e-4, 10, True)
    assert MmclSettings().probe_augmentation_rate == 0.8
