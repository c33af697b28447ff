"""Each baseline's distinctive rule on a hand-computed case (part A of issue 3)."""

import math

import pytest
import torch
import torch.nn.functional as F
from staging import enter_epoch, plan_for

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods.di_mml import (
    certainty_gate,
    effective_only,
    gated_logits,
    nearest_centroid_hits,
    unidirectional_contrastive,
)
from gaal_cli.methods.mla import mla_alpha, projection_update
from gaal_cli.methods.mmpareto import combine, min_norm_weight, pareto_weight
from gaal_cli.methods.ogm_ge import modulate, ogm_coefficients
from gaal_cli.training.engine import create_method


def approx(x):
    return pytest.approx(x, rel=1e-5)


def setup(tiny, method, *extra):
    config = load_config(overrides=[*tiny, f"method={method}", *extra])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    model = create_method(config, data)
    batch = next(iter(make_loader(data.train, 32, shuffle=True, seed=0)))
    return model, batch


class GradRecorder(torch.optim.SGD):
    """SGD that keeps a copy of every parameter's gradient at each step()."""

    def __init__(self, method, lr=1e-3):
        super().__init__([p for p in method.parameters() if p.requires_grad], lr=lr)
        self.names = {p: n for n, p in method.named_parameters()}
        self.records = []

    def step(self, closure=None):
        self.records.append(
            {self.names[p]: p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None}
        )
        return super().step(closure)


# ---------------------------------------------------------------- OGM-GE


def test_ogm_coefficient_slows_only_the_dominant_modality():
    labels = torch.tensor([0, 1])
    image = torch.zeros(2, 2)  # p(y) = 0.5 twice: s_I = 1
    tabular = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]])  # p(y) = 0.75 twice: s_T = 1.5
    k_i, k_t, rho = ogm_coefficients(image, tabular, labels, alpha=0.5)
    assert float(rho) == approx(2 / 3)
    assert float(k_i) == 1.0
    assert float(k_t) == approx(1 - math.tanh(0.5 * 1.5))
    k_i, k_t, _ = ogm_coefficients(tabular, image, labels, alpha=0.5)
    assert float(k_i) == approx(1 - math.tanh(0.75)) and float(k_t) == 1.0


def test_ogm_modulate_scales_and_conv_only_skips_non_conv():
    conv = torch.nn.Parameter(torch.zeros(2, 1, 3, 3))
    linear = torch.nn.Parameter(torch.zeros(4, 3))
    conv.grad, linear.grad = torch.ones_like(conv), torch.full_like(linear, 2.0)
    modulate([conv, linear], torch.tensor(0.25), noise=False, conv_only=True)
    assert torch.equal(conv.grad, torch.full_like(conv, 0.25)) and torch.equal(
        linear.grad, torch.full_like(linear, 2.0)
    )
    torch.manual_seed(0)
    g = torch.randn(1000)
    p = torch.nn.Parameter(torch.zeros(1000))
    p.grad = g.clone()
    modulate([p], torch.tensor(0.5), noise=True, conv_only=False)
    noise = p.grad - 0.5 * g
    assert abs(float(noise.std()) - float(g.std())) < 0.1 * float(g.std())  # GE: N(0, std(g)^2)


def test_ogm_step_scales_the_dominant_encoder_gradient_inside_the_window(tiny):
    grads = {}
    for active in (True, False):
        method, batch = setup(tiny, "ogm_ge", "methods.ogm_ge.ge=false", "methods.ogm_ge.alpha=0.7")
        method.train()
        method.on_epoch_start(1 if active else 99)
        opt = GradRecorder(method)
        stats = method.train_step(batch, opt)
        grads[active] = opt.records[0]
    k = {"image": float(stats["coef_k_image"]), "tabular": float(stats["coef_k_tabular"])}
    assert k == {"image": 1.0, "tabular": 1.0}  # outside the window nothing is modulated
    method, batch = setup(tiny, "ogm_ge", "methods.ogm_ge.ge=false", "methods.ogm_ge.alpha=0.7")
    method.train()
    method.on_epoch_start(1)
    stats = method.train_step(batch, GradRecorder(method))
    k = {"image": float(stats["coef_k_image"]), "tabular": float(stats["coef_k_tabular"])}
    assert min(k.values()) < 1.0 and max(k.values()) == 1.0
    for name, g in grads[False].items():
        encoder = name.split(".")[1] if name.startswith("encoders.") else None
        scale = k.get(encoder, 1.0)
        assert torch.allclose(grads[True][name], scale * g, atol=1e-6), name


# ---------------------------------------------------------------- MMPareto


def test_mmpareto_min_norm_weight_by_hand():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    gamma = min_norm_weight(g1, g2)  # (g2.g2 - g1.g2) / |g1 - g2|^2 = (2 + 1) / 5
    assert float(gamma) == approx(0.6)
    point = gamma * g1 + (1 - gamma) * g2
    assert abs(float(torch.dot(g1 - g2, point))) < 1e-6  # the min-norm point is orthogonal to g1 - g2
    assert float(min_norm_weight(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0]))) == approx(0.999)
    assert float(min_norm_weight(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]))) == approx(0.001)
    w, cos = pareto_weight(g1, torch.tensor([1.0, 1.0]))
    assert float(w) == 0.5 and float(cos) > 0
    w, cos = pareto_weight(g1, g2)
    assert float(w) == approx(0.6) and float(cos) < 0


def test_mmpareto_combination_and_rescaling_by_hand():
    g_mm, g_u, w = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor(0.6)
    new = torch.tensor([0.4, 0.8])  # 2(0.6)[1, 0] + 2(0.4)[-1, 1]
    assert torch.allclose(combine(g_mm, g_u, w, "none", 1.0), new)
    ratio = 1.0 / math.sqrt(0.8)  # |g_mm + g_u| = |[0, 1]| = 1 > |new|
    assert torch.allclose(combine(g_mm, g_u, w, "up_only", 1.5), 1.5 * ratio * new)
    assert torch.allclose(combine(g_mm, g_u, w, "always", 1.0), ratio * new)
    big = torch.tensor([4.0, 0.0])  # |new| = 4 > |g_mm + g_u| = 2: up_only keeps new, always shrinks it
    assert torch.allclose(combine(big, -big / 2, torch.tensor(0.5), "up_only", 1.0), big - big / 2)
    assert torch.allclose(combine(big, torch.zeros(2), torch.tensor(0.5), "always", 1.0), big)


def test_mmpareto_step_applies_the_rule_to_each_encoder(tiny):
    method, batch = setup(tiny, "mmpareto", "methods.mmpareto.rescale=none", "methods.mmpareto.magnitude=1.0")
    method.train()
    params = [p for p in method.encoders.tabular.parameters()]
    u_i, u_t = method.encoders.image(batch.image), method.encoders.tabular(batch.tabular)
    loss_mm = F.cross_entropy(method.head(torch.cat([u_i, u_t], 1)), batch.label)
    loss_u = F.cross_entropy(method.heads["tabular"](u_t), batch.label)
    g_mm = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_mm, params, retain_graph=True)])
    g_u = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_u, params)])
    w, _ = pareto_weight(g_mm, g_u)
    opt = GradRecorder(method)
    stats = method.train_step(batch, opt)
    got = torch.cat(
        [opt.records[0][n].reshape(-1) for n, _ in method.encoders.tabular.named_parameters(prefix="encoders.tabular")]
    )
    assert float(stats["w_mm_tabular"]) == approx(float(w))
    assert torch.allclose(got, 2 * w * g_mm + 2 * (1 - w) * g_u, atol=1e-5)


# ---------------------------------------------------------------- MLA


def test_mla_projection_update_by_hand():
    P = projection_update(torch.eye(2), torch.tensor([[1.0, 0.0]]), alpha=0.1)
    assert torch.allclose(P, torch.tensor([[1 / 11, 0.0], [0.0, 1.0]]))
    r = torch.tensor([[1.0, 2.0]])
    P = projection_update(torch.eye(2), r, alpha=0.5)  # k = r^T, r k = 5
    assert torch.allclose(P, torch.eye(2) - r.T @ r / 5.5)
    r = torch.tensor([[1.0, 1.0]])  # k = r^T: scalar r k = 2, official outer k r = all ones
    assert torch.allclose(projection_update(torch.eye(2), r, 0.1), torch.eye(2) - torch.ones(2, 2) / 2.1)
    assert torch.allclose(projection_update(torch.eye(2), r, 0.1, outer=True), torch.eye(2) - torch.ones(2, 2) / 1.1)
    assert mla_alpha(0, 10) == approx(0.1) and mla_alpha(5, 10) == approx(0.1**1.5)
    assert mla_alpha(3, None) == approx(0.1)


def test_mla_projects_the_second_turn_head_gradient(tiny):
    records = {}
    for projection in ("true", "false"):
        method, batch = setup(tiny, "mla", f"methods.mla.projection={projection}")
        method.train()
        method.on_epoch_start(1)
        if projection == "true":
            with torch.no_grad():
                r = method.encoders.tabular(batch.tabular).mean(0, keepdim=True)
        opt = GradRecorder(method)
        method.train_step(batch, opt)
        records[projection] = opt.records
    first_p, second_p = records["true"]
    first, second = records["false"]
    assert torch.equal(first_p["head.weight"], first["head.weight"])  # nothing to protect on turn one
    P = projection_update(torch.eye(r.shape[1]), r, 0.1)
    assert torch.allclose(second_p["head.weight"], second["head.weight"] @ P.T, atol=1e-6)
    assert torch.equal(second_p["head.bias"], second["head.bias"])
    assert "encoders.tabular.mlp.0.weight" in second_p and "encoders.image.backbone.conv1.weight" not in second_p


def test_mla_entropy_inference_weights_the_confident_modality(tiny):
    method, batch = setup(tiny, "mla", "methods.mla.inference=entropy")
    sure, unsure = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.1, 0.0]])
    fused = method.fuse(sure, unsure)
    assert fused[0, 0] > (sure[0, 0] + unsure[0, 0]) / 2


# ---------------------------------------------------------------- DI-MML


def test_di_mml_certainty_gate_by_hand():
    a = torch.log(torch.tensor([[0.8, 0.2]]))
    b = torch.log(torch.tensor([[0.5, 0.5]]))
    w = certainty_gate([a, b], temperature=1.0)
    expected = torch.softmax(torch.tensor([[0.8, 0.5]]), 1)
    assert torch.allclose(w, expected)
    assert torch.allclose(gated_logits([a, b], 1.0), expected[:, :1] * a + expected[:, 1:] * b)
    sharp = certainty_gate([a, b], temperature=0.01)
    assert float(sharp[0, 0]) > 0.99  # a low T2 picks the most certain prediction


def test_di_mml_nearest_centroid_hits_and_effective_dimensions_by_hand():
    centroids = torch.tensor([[0.0, 0.0], [1.0, 10.0], [float("inf"), float("inf")]])  # class 2 absent
    u = torch.tensor([[0.2, 6.0], [0.9, 4.0], [0.4, 9.0]])
    labels = torch.tensor([0, 1, 1])
    # dim 0: nearest classes 0, 1, 0 -> hits 2; dim 1: nearest 1, 0, 1 -> hits 1
    assert nearest_centroid_hits(u, labels, centroids).tolist() == [2, 1]
    hits = {"image": torch.tensor([5, 1, 5, 1]), "tabular": torch.tensor([5, 5, 1, 1])}
    only = effective_only(hits)
    assert only["image"].tolist() == [False, False, True, False]
    assert only["tabular"].tolist() == [False, True, False, False]


def test_di_mml_contrastive_term_is_unidirectional_on_its_dimensions():
    torch.manual_seed(0)
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 4, requires_grad=True)
    dims = torch.tensor([True, False, True, False])
    loss = unidirectional_contrastive(student, teacher, dims, temperature=1.0)
    s, t = student.detach()[:, dims], teacher.detach()[:, dims]
    assert float(loss) == approx(float(F.cross_entropy(s @ t.T, torch.arange(6))))
    gs, gt = torch.autograd.grad(loss, [student, teacher], allow_unused=True)
    assert gt is None or torch.all(gt == 0)  # the teacher is detached
    assert torch.all(gs[:, ~dims] == 0) and gs[:, dims].abs().sum() > 0
    assert float(unidirectional_contrastive(student, teacher, torch.zeros(4, dtype=torch.bool), 1.0)) == 0.0


def test_di_mml_finds_its_dimensions_from_the_two_epochs_before_the_contrast_starts(tiny):
    method, batch = setup(tiny, "di_mml", "methods.di_mml.contrast_start_epoch=3")
    method.train()
    opt = GradRecorder(method)
    for epoch in (1, 2):
        method.on_epoch_start(epoch)
        stats = method.train_step(batch, opt)
        assert float(stats["loss_duc"]) == 0.0 and not method.dims_ready
    method.on_epoch_start(3)
    assert method.dims_ready
    assert not bool((method.image_only & method.tabular_only).any())
    stats = method.train_step(batch, opt)
    if bool(method.image_only.any() or method.tabular_only.any()):
        assert float(stats["loss_duc"]) > 0


def test_di_mml_stage2_trains_only_the_fusion_head_and_gates_it_in(tiny):
    method, batch = setup(tiny, "di_mml", "methods.di_mml.stage1_epochs=1", "methods.di_mml.stage2_epochs=1")
    plan = plan_for(method, 2)
    method.train()
    enter_epoch(method, plan, 1)
    opt = GradRecorder(method)
    method.train_step(batch, opt)
    assert not any(n.startswith("fusion.") for n in opt.records[0])
    method.eval()
    with torch.no_grad():
        before = method.predict(batch.image, batch.tabular)
    method.train()
    enter_epoch(method, plan, 2)
    running = method.encoders.tabular.mlp[1].running_mean.clone()
    method.train_step(batch, opt)
    assert set(opt.records[1]) == {"fusion.weight", "fusion.bias"}
    assert torch.equal(method.encoders.tabular.mlp[1].running_mean, running)  # frozen encoders: eval mode
    method.eval()
    with torch.no_grad():
        after = method.predict(batch.image, batch.tabular)
        u = torch.cat([method.encoders.image(batch.image), method.encoders.tabular(batch.tabular)], 1)
        fusion = method.fusion(u)
    assert torch.equal(before.image, after.image) and not torch.allclose(before.multi, after.multi)
    assert torch.allclose(after.multi, gated_logits([after.image, after.tabular, fusion], 1.0), atol=1e-6)


# ---------------------------------------------------------------- DAFT, MF, unimodal


def test_daft_scale_shift_shapes_and_the_table_changes_image_features(tiny):
    method, batch = setup(tiny, "daft")
    method.eval()
    film = method.film
    stage_input = method.encoders.image.backbone.feature_info[-2]["num_chs"]
    width = sum(method.encoders.tabular.field_lengths)
    assert film.channels == stage_input
    assert film.aux[0].out_features == int((stage_input + width) / 7)
    table = method.encoders.tabular.one_hot(batch.tabular)
    fmap = torch.randn(len(table), stage_input, 2, 2)
    scale, shift = film.scale_shift(fmap, table)
    assert scale.shape == shift.shape == (len(table), stage_input, 1, 1)
    with torch.no_grad():
        plain = method.encoders.image(batch.image)
        a = method.logits(batch.image, batch.tabular)
        b = method.logits(batch.image, batch.tabular.flip(0))
        again = method.encoders.image(batch.image)
    assert not torch.allclose(a, b)  # same images, other tables: other predictions
    assert torch.equal(plain, again)  # outside DAFT's forward the hook leaves the encoder alone
    assert not any(p.requires_grad for p in method.encoders.tabular.parameters())


def test_max_fusion_takes_the_elementwise_maximum(tiny):
    method, batch = setup(tiny, "max")
    method.eval()
    with torch.no_grad():
        p = method.predict(batch.image, batch.tabular)
        u_i, u_t = method.encoders.image(batch.image), method.encoders.tabular(batch.tabular)
        assert torch.allclose(p.multi, method.head(torch.maximum(u_i, u_t)))
        assert p.image is None and p.tabular is None
        assert torch.allclose(method.predict(None, batch.tabular).multi, method.head(u_t))


def test_unimodal_methods_train_only_their_encoder(tiny):
    for modality, other in (("image", "tabular"), ("tabular", "image")):
        method, batch = setup(tiny, modality)
        method.train()
        opt = GradRecorder(method)
        method.train_step(batch, opt)
        assert any(n.startswith(f"encoders.{modality}") for n in opt.records[0])
        assert not any(n.startswith(f"encoders.{other}") for n in opt.records[0])
        assert method.modalities == (modality,)


def test_gaal_star_is_tested_on_the_image_alone(tmp_path, tiny):
    """data.test_missing=tabular (Table I's GAAL*): trained on both, the test metrics are the
    image-only prediction's and report.json says the test read the image alone."""
    from gaal_cli.runs.folder import RunFolder, load_state
    from gaal_cli.training.engine import evaluate, train

    config = load_config(overrides=[*tiny, "method=gaal", "data.test_missing=tabular"])
    report = train(config, tmp_path / "run", show_progress=False)
    assert report["inputs_at_test"] == ["image"]
    data = build_data(config.data, config.seed)
    method = create_method(config, data)
    method.load_state_dict(load_state(tmp_path / "run" / RunFolder.CHECKPOINT)["model"])
    alone = evaluate(method, data.split("test"), torch.device("cpu"), 512, missing="tabular")
    assert report["metrics"]["test"]["image"]["acc"] == pytest.approx(alone["image"]["acc"])
    assert "tabular" not in report["metrics"]["test"]  # nothing was scored from the table
    both = evaluate(method, data.split("test"), torch.device("cpu"), 512)
    assert report["metrics"]["val"].keys() == both.keys()  # validation keeps both modalities


def test_a_method_left_with_no_input_at_test_is_refused_before_anything_is_written(tmp_path, tiny):
    from gaal_cli.foundation.errors import GaalError
    from gaal_cli.training.engine import train

    config = load_config(overrides=[*tiny, "method=tabular", "data.test_missing=tabular"])
    with pytest.raises(GaalError, match="data.test_missing"):
        train(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
