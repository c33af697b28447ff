"""DMRNet and MMANet: their distinctive rules on hand-computed cases, and one CLI run each."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.dmrnet import combination_variances, gaussian_kl, hard_combination_loss
from gaal_cli.methods.mmanet import histogram_distances, mad_loss, mar_loss
from gaal_cli.methods.modality_dropout import BOTH, IMAGE_ONLY, TABULAR_ONLY, dropped_features, fused_features
from gaal_cli.methods.stages import build_stage_optimizer
from gaal_cli.sweeps.runner import load_sweep
from gaal_cli.training.engine import create_method, plan_method_stages
from gaal_cli.training.trained_run import load_dependencies

runner = CliRunner()
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def build(tiny, name, *overrides):
    config = load_config(overrides=[*tiny, f"method={name}", *overrides])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    return create_method(config, data, load_dependencies(config, data, torch.device("cpu"))), data


def ce(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


# --- modality dropout -------------------------------------------------------------------------


def test_dropped_modalities_are_zeroed_and_missing_ones_too():
    u_i, u_t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    h = fused_features(u_i, u_t, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert h.tolist() == [[1, 2, 0, 0], [0, 0, 7, 8]]
    assert fused_features(u_i, None, None).tolist() == [[1, 2, 0, 0], [3, 4, 0, 0]]


# --- DMRNet -----------------------------------------------------------------------------------


def test_dmrnet_kl_to_the_standard_normal():
    mu, std = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    # sample 1: 1/2 (1 + 1 - 0 - 1) + 1/2 (4 + 0 - ln 4 - 1); sample 2: 0
    first = 0.5 + 0.5 * (3 - math.log(4))
    assert gaussian_kl(mu, std).item() == pytest.approx(first / 2)


def test_dmrnet_hard_combination_loss_counts_only_its_samples_over_the_whole_batch():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ids = torch.tensor([IMAGE_ONLY, TABULAR_ONLY, IMAGE_ONLY, BOTH])
    assert hard_combination_loss(per_sample, ids, IMAGE_ONLY).item() == pytest.approx((1 + 3) / 4)
    assert hard_combination_loss(per_sample, ids, TABULAR_ONLY).item() == pytest.approx(2 / 4)


def test_dmrnet_variances_per_unimodal_combination():
    std = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 1.0], [9.0, 9.0]])
    ids = torch.tensor([IMAGE_ONLY, IMAGE_ONLY, TABULAR_ONLY, BOTH])
    # mean_k s^2 per sample: 1, 4, 5, 81; image only: (1 + 4) / 2; table only: 5
    assert combination_variances(std, ids).tolist() == pytest.approx([2.5, 5.0])
    assert combination_variances(std, torch.full((4,), BOTH)).tolist() == [0.0, 0.0]


def test_dmrnet_mines_the_higher_variance_combination_then_regularizes_it(tiny):
    method, data = build(tiny, "dmrnet", "methods.dmrnet.mining_epochs=2")
    method.variance_sums.copy_(torch.tensor([1.0, 3.0]))
    method.on_epoch_start(2)
    assert int(method.hard) == -1  # still mining
    method.on_epoch_start(3)
    assert int(method.hard) == TABULAR_ONLY
    method.variance_sums.copy_(torch.tensor([9.0, 0.0]))
    method.on_epoch_start(4)
    assert int(method.hard) == TABULAR_ONLY  # the verdict is final


def test_dmrnet_samples_in_training_and_predicts_from_the_mean(tiny):
    method, data = build(tiny, "dmrnet")
    batch = data.test[list(range(8))]
    method.eval()
    with torch.no_grad():
        u_i = method.encoders.image(batch.image)
        h = torch.cat([u_i, torch.zeros_like(u_i)], dim=1)
        expected = method.head(method.mu(h))
        got = method.predict(batch.image, None)
        assert torch.allclose(got.multi, expected) and torch.allclose(got.image, expected)
        assert torch.equal(method.predict(batch.image, None).multi, got.multi)  # no sampling at test
        method.train()
        mu, std = method.embedding(torch.cat([u_i, u_i], dim=1))
        assert (std > 0).all() and mu.shape == std.shape


# --- MMANet -----------------------------------------------------------------------------------


def test_mmanet_mad_weights_each_column_by_the_teachers_normalised_entropy():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    # G_s = [[1, 1], [1, 2]] row-normalised; G_t = I
    gs = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    gt = [[1.0, 0.0], [0.0, 1.0]]
    h = [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    w = [v / sum(h) for v in h]
    expected = sum((gs[i][j] - gt[i][j]) ** 2 * w[j] for i in range(2) for j in range(2))
    assert mad_loss(student, teacher, logits).item() == pytest.approx(expected, rel=1e-6)
    # a confident teacher on sample 2 leaves only column 1 (sample 1's similarities)
    confident = torch.tensor([[0.0, 0.0], [0.0, 60.0]])
    only_first = sum((gs[i][0] - gt[i][0]) ** 2 for i in range(2))
    assert mad_loss(student, teacher, confident).item() == pytest.approx(only_first, rel=1e-5)


def test_mmanet_mar_is_the_weak_combinations_cross_entropy_over_the_batch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    ids = torch.tensor([TABULAR_ONLY, IMAGE_ONLY, TABULAR_ONLY])
    expected = (ce([2.0, 0.0], 1) + ce([1.0, 1.0], 0)) / 3
    assert mar_loss(logits, labels, ids, TABULAR_ONLY).item() == pytest.approx(expected)


def test_mmanet_histogram_distance_is_kl_of_softmaxed_frequencies():
    histograms = torch.tensor([[4.0, 0.0], [2.0, 2.0], [1.0, 3.0]])  # image only, table only, both

    def softmax(q):
        e = [math.exp(v) for v in q]
        return [v / sum(e) for v in e]

    p_both = softmax([0.25, 0.75])
    expected = []
    for q in ([1.0, 0.0], [0.5, 0.5]):
        p = softmax(q)
        expected.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, p_both, strict=True)))
    assert histogram_distances(histograms).tolist() == pytest.approx(expected)


def test_mmanet_mines_then_regularizes_the_weak_combination(tiny, teacher_checkpoint):
    method, data = build(
        tiny,
        "mmanet",
        f"methods.mmanet.teacher={teacher_checkpoint}",
        "methods.mmanet.begin_epoch=3",
        "methods.mmanet.recipe=three_modality",
    )
    assert method.settings.weights == (30.0, 0.5)
    batch = data.train[list(range(16))]
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
    method.train()
    method.on_epoch_start(1)
    assert "loss_mad" not in method.train_step(batch, optimizer) and method.histograms.sum() == 0
    method.on_epoch_start(2)  # the one mining epoch: every combination predicts every sample
    method.train_step(batch, optimizer)
    assert method.histograms.sum(dim=1).tolist() == [16.0, 16.0, 16.0]
    counts = torch.zeros_like(method.histograms)
    counts[IMAGE_ONLY, 0], counts[TABULAR_ONLY, :2], counts[BOTH, :2] = 16, 8, 8  # image alone disagrees most
    method.histograms.copy_(counts)
    method.on_epoch_start(3)
    assert method.histograms.sum() == 0 and method.distances[0] > method.distances[1] == 0
    assert int(method.weak) == -1  # the verdict comes after begin_epoch
    method.on_epoch_start(4)
    assert int(method.weak) == IMAGE_ONLY
    stats = method.train_step(batch, optimizer)
    assert {"loss_mad", "loss_mar"} <= set(stats) and not method.idle_parameters()


def test_mmanet_two_modality_port_adds_mar_through_the_main_head_only_after_six_epochs(tiny, teacher_checkpoint):
    """The port (ECCV2024-DMRNet main_distillation.py l.164-167): MAD x0.5 from the start, MAR x0.01
    only when `epoch > 5` counting from 0 (here epochs 1-6 without it), and MAR's auxiliary output is
    the main classifier (fusion_modules.py: auxi_out = fc_out(output)): no regularizer head."""
    method, data = build(tiny, "mmanet", f"methods.mmanet.teacher={teacher_checkpoint}")
    assert method.settings.recipe == "two_modality" and method.settings.weights == (0.5, 0.01)
    assert method.regularizer is None and not any(n.startswith("regularizer") for n, _ in method.named_parameters())
    assert not method.head.bias.any()  # the port's weight_init: Xavier-normal weights, zero biases
    batch = data.train[list(range(16))]
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
    method.train()

    def step(epoch):
        method.on_epoch_start(epoch)
        torch.manual_seed(7)  # the same modality-dropout draw at every epoch
        stats = method.train_step(batch, optimizer)
        return stats, method.head.weight.grad.clone()

    for epoch in range(1, 7):
        stats, grad = step(epoch)
        assert "loss_mar" not in stats and method.histograms.sum() == 0, epoch  # no MAR, no mining
        assert float(stats["loss"]) == pytest.approx(float(stats["loss_ce"] + 0.5 * stats["loss_mad"]), rel=1e-6)
    stats, grad_mar = step(7)
    assert float(stats["loss"]) == pytest.approx(
        float(stats["loss_ce"] + 0.5 * stats["loss_mad"] + 0.01 * stats["loss_mar"]), rel=1e-6
    )
    # the extra gradient on the main head is exactly 0.01 x MAR's, MAR read from that head
    torch.manual_seed(7)
    ids, h = dropped_features(method.encoders, batch)
    method.head.weight.grad = None
    mar = mar_loss(method.head(h.detach()), batch.label, ids, (IMAGE_ONLY, TABULAR_ONLY))
    assert mar.item() == pytest.approx(float(stats["loss_mar"]), rel=1e-5) and mar.item() > 0
    (0.01 * mar).backward()
    assert torch.allclose(grad_mar - grad, method.head.weight.grad, atol=1e-6)
    assert method.regularized == (IMAGE_ONLY, TABULAR_ONLY) and not method.idle_parameters()


def test_mmanet_mar_counts_the_unimodal_samples_over_the_whole_batch():
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    ids = torch.tensor([IMAGE_ONLY, TABULAR_ONLY, BOTH])
    per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert mar_loss(logits, labels, ids, (IMAGE_ONLY, TABULAR_ONLY)).item() == pytest.approx(
        float(per_sample[:2].sum() / 3)
    )


@pytest.mark.parametrize("dataset", ["dvm", "sun", "celeba"])
def test_paper_scale_dmrnet_and_mmanet_train_with_their_codes_sgd_and_steplr_70(dataset, tmp_path):
    """audio-visual main.py l.298-299 and main_distillation.py l.291-292: SGD 1e-3, momentum 0.9,
    weight decay 1e-4, StepLR(70, 0.1), where the shared train.* of the file is Adam."""
    runs = load_sweep(EXPERIMENTS / f"table1_missing_{dataset}.yaml", results=tmp_path).runs
    for run in [r for r in runs if r.config.method in ("dmrnet", "mmanet") and r.seed == 2022]:
        (planned,) = plan_method_stages(run.config)
        optimizer, scheduler = build_stage_optimizer(torch.nn.Linear(1, 1), planned, run.config.train)
        group = optimizer.param_groups[0]
        assert isinstance(optimizer, torch.optim.SGD), run.label
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.9, 1e-4), run.label
        assert (scheduler.step_size, scheduler.gamma) == (70, 0.1), run.label
    assert run.config.train.optimizer == "adam"


def test_dmrnet_layers_start_as_the_codes_weight_init(tiny):
    method, _ = build(tiny, "dmrnet")
    for layer in (method.mu[0], method.log_var[0], method.head):
        assert not layer.bias.any()  # torch's default draws nonzero biases
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.detach().std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.25)


def test_mmanet_needs_a_multimodal_teacher(tiny, tmp_path):
    from fake_runs import fake_checkpoint

    with pytest.raises(GaalError, match="needs another run"):
        build(tiny, "mmanet")
    image_run = fake_checkpoint(tmp_path / "image.pt", "image")
    with pytest.raises(GaalError, match="multimodal"):
        build(tiny, "mmanet", f"methods.mmanet.teacher={image_run}")


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, extra, logged",
    [
        ("dmrnet", ["methods.dmrnet.mining_epochs=1"], "loss_hard"),
        ("mmanet", ["methods.mmanet.mar_after=2", "train.epochs=3"], "loss_mar"),
    ],
)
def test_cli_train_scores_the_image_alone(tmp_path, tiny, teacher_checkpoint, name, extra, logged):
    out = tmp_path / name
    teacher = [f"methods.mmanet.teacher={teacher_checkpoint}"] if name == "mmanet" else []
    sets = [a for o in [*tiny, *extra, *teacher, "data.test_missing=tabular"] for a in ("--set", o)]
    result = runner.invoke(app, ["train", "-m", name, "--out", str(out), "-q", *sets])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]["test"]) == {"multi", "image"}
    assert report["metrics"]["test"]["multi"] == report["metrics"]["test"]["image"]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert any(logged in s for s in steps) and all(math.isfinite(s["loss"]) for s in steps)
