"""TIP (gaal_cli/methods/tip.py): masked tabular reconstruction, its masking, the contrastive and
matching rules on hand-made cases, label-free pretraining, the fine-tuning stage, and a CLI run."""

import json
import math
from pathlib import Path

import pytest
import torch
from staging import enter_epoch, plan_for
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods.mmcl import clip_loss
from gaal_cli.methods.stages import build_stage_optimizer
from gaal_cli.methods.tip import (
    TableLayout,
    TabularTransformer,
    choose_masked_cells,
    hard_negatives,
    masked_reconstruction_loss,
)
from gaal_cli.sweeps.runner import load_sweep
from gaal_cli.training.engine import create_method, plan_method_stages

runner = CliRunner()
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# columns: continuous, categorical (3 categories), continuous, categorical (2 categories)
LAYOUT = TableLayout((1, 3, 1, 2))
TABLE = torch.tensor([[0.5, 2.0, -1.0, 1.0], [1.5, 0.0, 2.0, 0.0]])
MASKED = torch.tensor([[True, True, False, False], [False, False, True, True]])


def test_layout_of_the_hand_made_table():
    assert LAYOUT.continuous == [0, 2] and LAYOUT.categorical == [1, 3]
    assert LAYOUT.offsets == [0, 3] and LAYOUT.n_categories == 5


def test_masked_reconstruction_targets_on_a_hand_made_case():
    # categorical logits over all 5 categories, one row per categorical column (cols 1 and 3)
    cat_logits = torch.zeros(2, 2, 5)
    cat_logits[0, 0, 2] = 2.0  # row 0, col 1 (masked): code 2, offset 0 -> class 2
    cat_logits[1, 1, 3] = 1.0  # row 1, col 3 (masked): code 0, offset 3 -> class 3
    cat_logits[0, 1] = torch.tensor([9.0, -9, 9, -9, 9])  # row 0, col 3: unmasked, far off
    cat_logits[1, 0] = torch.tensor([-9.0, 9, 9, 9, 9])  # row 1, col 1: unmasked, far off
    # continuous predictions at cols 0 and 2
    con_pred = torch.tensor([[1.0, 100.0], [-50.0, 1.0]])  # the 100 and -50 are unmasked cells
    cat_logits.requires_grad_(True)
    con_pred.requires_grad_(True)

    loss = masked_reconstruction_loss(cat_logits, con_pred, TABLE, MASKED, LAYOUT)

    ce = (math.log(1 + 4 * math.exp(-2)) + math.log(1 + 4 * math.exp(-1))) / 2  # targets 2 and 3
    mse = ((1.0 - 0.5) ** 2 + (1.0 - 2.0) ** 2) / 2  # targets: the masked cells' values 0.5 and 2.0
    assert loss.item() == pytest.approx((ce + mse) / 2, rel=1e-6)

    loss.backward()  # unmasked cells contribute nothing
    assert torch.all(cat_logits.grad[0, 1] == 0) and torch.all(cat_logits.grad[1, 0] == 0)
    assert con_pred.grad[0, 1] == 0 and con_pred.grad[1, 0] == 0
    assert con_pred.grad[0, 0] != 0 and con_pred.grad[1, 1] != 0


def test_a_batch_without_masked_categorical_cells_reconstructs_the_continuous_ones_only():
    masked = torch.tensor([[True, False, False, False], [False, False, False, False]])
    loss = masked_reconstruction_loss(torch.zeros(2, 2, 5), torch.zeros(2, 2), TABLE, masked, LAYOUT)
    assert float(loss) == pytest.approx(0.5**2)


def test_masking_chooses_round_rate_cells_per_row_and_hides_their_values():
    torch.manual_seed(0)
    masked = choose_masked_cells(64, 9, 0.5)
    assert masked.sum(1).tolist() == [4] * 64  # round(4.5) = 4, as the official Python round
    assert len({tuple(row.tolist()) for row in masked}) > 1  # drawn per row

    encoder = TabularTransformer(LAYOUT, dim=8, layers=2, heads=2, dropout=0.0).eval()
    changed = TABLE.clone()
    changed[0, 1], changed[1, 2] = 0.0, -3.0  # values of masked cells (categorical and continuous)
    with torch.no_grad():
        assert torch.allclose(encoder(TABLE, MASKED), encoder(changed, MASKED), atol=1e-6)
        changed[0, 2] = 5.0  # an unmasked cell is seen
        assert not torch.allclose(encoder(TABLE, MASKED), encoder(changed, MASKED), atol=1e-4)
        # masked cells are hidden from the other tokens' attention: CLS and unmasked cells ignore them
        before = encoder(TABLE, MASKED)
        encoder.mask_token.add_(torch.randn_like(encoder.mask_token))
        after = encoder(TABLE, MASKED)
    seen = torch.cat([torch.zeros(2, 1, dtype=torch.bool), ~MASKED], dim=1)
    assert torch.allclose(before[seen], after[seen], atol=1e-6)
    assert not torch.allclose(before[~seen], after[~seen], atol=1e-4)


def test_contrastive_loss_on_a_hand_computed_case():
    z = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # orthogonal pairs: S = I / tau after normalising
    loss, s = clip_loss(z, z.clone(), 0.5, 0.3)
    assert torch.allclose(s, torch.eye(2) / 0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)  # both directions alike


def test_hard_negatives_are_other_pairs_drawn_by_similarity():
    torch.manual_seed(0)
    # the matched pair is the most similar; among the others one is far more similar than the other
    s = torch.tensor([[9.0, 8.0, -8.0], [-8.0, 9.0, 8.0], [8.0, -8.0, 9.0]])
    drawn = torch.stack([hard_negatives(s) for _ in range(200)])
    assert not (drawn == torch.arange(3)).any()  # never the matched pair itself
    assert (drawn == torch.tensor([1, 2, 0])).float().mean() > 0.99  # weight ∝ softmax + 1e-4


def build(tiny, *extra):
    config = load_config(overrides=[*tiny, "method=tip", *extra])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data)
    return method, config, data


def grads_after_a_step(method, config, data, planned, label_free):
    optimizer, _ = build_stage_optimizer(method, planned, config.train)
    method.train()
    enter_epoch(method, plan_for(method, 2), planned.start)
    batch = next(iter(make_loader(data.train, 32, shuffle=True, seed=0)))
    if label_free:
        batch = batch._replace(label=None)  # as the engine hands it in a label-free stage
    before = {n: t.detach().clone() for n, t in method.state_dict().items()}
    optimizer.zero_grad(set_to_none=True)
    stats = method.train_step(batch, optimizer)
    assert all(math.isfinite(float(v)) for v in stats.values()), stats
    return {n for n, p in method.named_parameters() if p.grad is not None}, before, stats


def test_pretraining_never_reads_labels_and_leaves_the_classifier_alone(tiny):
    method, config, data = build(tiny)
    pretrain, _ = plan_for(method, 2)
    assert not pretrain.stage.labels and not pretrain.stage.selects
    touched, before, stats = grads_after_a_step(method, config, data, pretrain, label_free=True)
    assert {"loss_itc", "loss_itm", "loss_mtr", "itm_acc"} <= set(stats)
    assert not any(n.startswith("classifier.") for n in touched)
    assert any(n.startswith("tabular.") for n in touched) and any(n.startswith("predictor.") for n in touched)
    assert not any(n.startswith("encoders.tabular.") for n in touched)  # TIP's transformer replaces the MLP
    assert torch.equal(before["classifier.weight"], method.classifier.weight)


@pytest.mark.parametrize("finetune", ["trainable", "frozen"])
def test_finetuning_trains_the_fused_classifier(tiny, finetune):
    method, config, data = build(tiny, f"methods.tip.finetune={finetune}")
    _, stage = plan_for(method, 2)
    touched, before, _ = grads_after_a_step(method, config, data, stage, label_free=False)
    assert "classifier.weight" in touched
    assert not any(n.startswith(("projection.", "itm_head.", "predictor.")) for n in touched)
    assert any(n.startswith("tabular.") for n in touched) == (finetune == "trainable")
    assert any(n.startswith("encoders.image.backbone.") for n in touched) == (finetune == "trainable")
    if finetune == "frozen":  # linear probing: the pretrained network does not move, BN statistics included
        kept = {n: t for n, t in method.state_dict().items() if not n.startswith("classifier.")}
        assert all(torch.equal(before[n], t) for n, t in kept.items())
        assert not method.encoders.image.backbone.training and not method.tabular.training


def test_a_missing_table_is_a_table_of_masked_cells_and_a_missing_image_has_no_prediction(tiny):
    method, _, data = build(tiny)
    method.eval()
    batch = data.test[list(range(6))]
    with torch.no_grad():
        missing = method.predict(batch.image, None)
        tokens, _ = method.image_features(batch.image)
        all_masked = torch.ones_like(batch.tabular, dtype=torch.bool)
        h = method.fused(tokens, batch.tabular, all_masked)[:, 0]
    assert missing.image is None and missing.tabular is None
    assert torch.allclose(missing.multi, method.classifier(h), atol=1e-5)
    assert method.predict(None, batch.tabular) == (None, None, None)


def test_cli_train_pretrains_without_labels_then_fine_tunes(tmp_path, tiny):
    out = tmp_path / "tip"
    args = [arg for o in tiny for arg in ("--set", o)]
    result = runner.invoke(app, ["train", "-m", "tip", "--out", str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    stages = [(s["name"], s["epochs"], s["labels"], s["selects"]) for s in report["stages"]]
    assert stages == [("pretrain", 1, False, False), ("finetune", 1, True, True)]
    assert report["best_epoch"] == 2  # only a fine-tuned epoch can be the model
    assert set(report["metrics"]["test"]) == {"multi"}
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert any("loss_mtr" in s for s in steps) and all(math.isfinite(s["loss"]) for s in steps)


def test_projection_heads_are_lightly_1_2_22s_simclr_head_layer_by_layer(tiny):
    """lightly 1.2.22 (TIP's environment.yaml) builds SimCLRProjectionHead(input, hidden, output) from
    the blocks (input, hidden, no batch norm, ReLU) and (hidden, output, no batch norm, none), each
    Linear with a bias because there is no batch norm."""
    method, config, _ = build(tiny)
    d, dim = config.model.feature_dim, config.method_settings().dim
    for name, width in (("image", d), ("tabular", dim)):
        head = list(method.projection[name])
        assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear], name
        assert (head[0].in_features, head[0].out_features) == (width, width)
        assert (head[2].in_features, head[2].out_features) == (width, 128)
        assert head[0].bias is not None and head[2].bias is not None


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_finetuning_corrupts_the_table_exactly_when_it_augments_the_image(tiny, rate):
    method, _, data = build(tiny, f"methods.tip.finetune_augmentation_rate={rate}")
    method.train()
    batch = data.train[list(range(16))]
    torch.manual_seed(0)
    image, table = method.finetune_view(batch.image, batch.tabular)
    changed_images = (image != batch.image).flatten(1).any(1)
    changed_tables = (table != batch.tabular).any(1)
    assert bool(changed_images.all()) == (rate == 1.0) and not bool(changed_images.any()) == (rate == 0.0)
    assert bool(changed_tables.any()) == (rate == 1.0)
    assert not bool((changed_tables & ~changed_images).any())  # a table changes only with its image


@pytest.mark.parametrize("dataset", ["dvm", "sun", "celeba"])
def test_the_paper_scale_row_fine_tunes_as_the_official_config_frozen_with_min_delta_2e_4(dataset, tmp_path):
    """Issue 27: config_dvm_TIP.yaml's `finetune_strategy: frozen` and trainers/evaluate.py's
    EarlyStopping(min_delta=0.0002, patience 10): the fine-tuning stage trains the classifier alone."""
    (run,) = [
        r for r in load_sweep(EXPERIMENTS / f"table1_tip_{dataset}.yaml", results=tmp_path).runs if r.seed == 2022
    ]
    config = run.config
    assert config.method_settings().finetune == "frozen"
    assert (config.train.min_delta, config.train.patience) == (2e-4, 10)
    pretrain, finetune = plan_method_stages(config)
    assert (pretrain.epochs, finetune.name, finetune.epochs) == (500, "finetune", 500)
    assert finetune.stage.trains == ("classifier.",)
