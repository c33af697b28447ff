"""ReconBoost, LFM, IGM, DGL and ARL: smoke tests, their distinctive rules on hand-computed
cases, and one tiny CLI run each."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from staging import enter_epoch, plan_for
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods.arl import ScaleGrad, arl_weights
from gaal_cli.methods.dgl import dgl_loss
from gaal_cli.methods.igm import batch_mean_second_moment, entropy_weighted, flat_transform, sam_perturbation
from gaal_cli.methods.lfm import alpha_schedule, js_divergence, lfm_loss
from gaal_cli.methods.reconboost import boost_weights
from gaal_cli.training.engine import create_method

runner = CliRunner()


class RecordingAdam(torch.optim.Adam):
    """Adam that records, at each step, the gradient of every parameter that has one."""

    def __init__(self, method):
        super().__init__(method.parameters(), lr=1e-3)
        self.method = method
        self.records = []

    def step(self, closure=None):
        self.records.append({n: p.grad.clone() for n, p in self.method.named_parameters() if p.grad is not None})
        return super().step(closure)


def setup(tiny, name, *extra):
    config = load_config(overrides=tiny + [f"method={name}", *extra])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data)
    method.train()
    batches = list(make_loader(data.train, 32, shuffle=True, seed=0))
    return method, batches


def names(method, *prefixes):
    return {n for n, p in method.named_parameters() if p.requires_grad and n.startswith(prefixes)}


def run_steps(method, batches, epochs):
    """One training step per listed epoch of a run of max(epochs) epochs; returns the optimiser."""
    opt = RecordingAdam(method)
    plan = plan_for(method, max(epochs))
    for epoch, batch in zip(epochs, batches):
        enter_epoch(method, plan, epoch)
        method.train_step(batch, opt)
    return opt


def assert_finite(records):
    # zero-initialised residual BN scales give exact zeros at step one: test presence, not size
    for record in records:
        assert all(torch.isfinite(g).all() for g in record.values())


# --- smoke: two steps, every parameter that should learn gets a finite gradient -------------


@pytest.mark.parametrize("name", ["dgl", "arl", "lfm"])
def test_joint_methods_train_every_parameter_each_step(tiny, name):
    method, batches = setup(tiny, name, f"methods.{name}.grad_cosine=true")
    opt = run_steps(method, batches, epochs=[1, 1])
    assert_finite(opt.records)
    every = names(method, "")
    assert all(set(r) == every for r in opt.records)


def test_reconboost_first_stage_trains_the_image_learner_only(tiny):
    method, batches = setup(
        tiny, "reconboost", "methods.reconboost.stage_epochs=1", "methods.reconboost.rectify_epochs=1"
    )
    opt = run_steps(method, batches, epochs=[1, 2])
    assert_finite(opt.records)
    boost, rectify = (set(r) for r in opt.records)
    assert boost == names(method, "encoders.image", "head")
    # stage 0's ensemble holds the image learner only: the tabular encoder is not in it yet
    assert rectify == names(method, "encoders.image", "head", "boost_rate")


def test_reconboost_second_stage_rectifies_both_encoders(tiny):
    method, batches = setup(
        tiny, "reconboost", "methods.reconboost.stage_epochs=1", "methods.reconboost.rectify_epochs=1"
    )
    opt = run_steps(method, batches + batches, epochs=[1, 2, 3, 4])
    assert_finite(opt.records)
    boost, rectify = (set(r) for r in opt.records[2:])
    assert boost == names(method, "encoders.tabular", "head")
    assert rectify == names(method, "")
    assert method.members() == ["image", "tabular"]


def test_igm_stages_alternate_and_cover_every_parameter(tiny):
    method, batches = setup(tiny, "igm")
    opt = run_steps(method, batches, epochs=[1, 2])
    assert_finite(opt.records)
    image_step, tabular_step = (set(r) for r in opt.records)
    assert image_step == names(method, "encoders.image", "heads.image")
    assert tabular_step == names(method, "encoders.tabular", "heads.tabular")


# --- distinctive rules, hand-computed -----------------------------------------------------


def test_reconboost_sample_weights():
    # other modality's probabilities: [1/4, 3/4] (logits 0, ln 3) for both samples
    other = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    labels = torch.tensor([1, 0])
    w = boost_weights(other, labels, num_classes=2, w1=5.0, w2=1.0)
    assert torch.allclose(w, torch.tensor([5 - 0.75, 5 - 0.25]))
    # before the other modality is in the ensemble: q = 1 / C
    w0 = boost_weights(None, labels, num_classes=4, w1=5.0, w2=2.0)
    assert torch.allclose(w0, torch.full((2,), 5 - 2 / 4))


def test_reconboost_step_loss_is_the_weighted_ce(tiny):
    method, batches = setup(
        tiny, "reconboost", "methods.reconboost.stage_epochs=1", "methods.reconboost.rectify_epochs=0"
    )
    method.eval()  # deterministic features for the recomputation (no batch statistics)
    batch = batches[0]
    plan = plan_for(method, 2)
    enter_epoch(method, plan, 1)
    enter_epoch(method, plan, 2)  # stage 1: tabular boosts, weighted by the image learner
    with torch.no_grad():
        q = F.softmax(method.encode("image", batch.image), -1).gather(1, batch.label[:, None]).squeeze(1)
        ce = F.cross_entropy(method.encode("tabular", batch.tabular), batch.label, reduction="none")
    stats = method.train_step(batch, RecordingAdam(method))
    assert float(stats["weight_mean"]) == pytest.approx(float((5 - q).mean()), abs=1e-5)
    assert float(stats["loss"]) == pytest.approx(float(((5 - q) * ce).mean()), rel=1e-5)


def test_js_divergence_matches_hand_values():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.8, 0.2]])
    m = (p + q) / 2
    by_hand = 0.5 * sum(
        a * math.log(a / c) + b * math.log(b / c) for a, b, c in zip(p[0].tolist(), q[0].tolist(), m[0].tolist())
    )
    assert float(js_divergence(p.log(), q.log())) == pytest.approx(by_hand, rel=1e-6)
    # disjoint supports: ln 2; identical: 0; symmetric
    far = torch.tensor([[0.0, -40.0]]), torch.tensor([[-40.0, 0.0]])
    assert float(js_divergence(*far)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(js_divergence(p.log(), p.log())) == pytest.approx(0.0, abs=1e-7)
    assert float(js_divergence(q.log(), p.log())) == pytest.approx(by_hand, rel=1e-6)


def test_lfm_loss_and_alpha_schedule():
    o_i, o_t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    loss, ce, js = lfm_loss(o_i, o_t, y, alpha=0.75)
    ce_hand = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.5)))  # CE of the mean logits (1, 0.5)
    assert float(ce) == pytest.approx(ce_hand, rel=1e-6)
    assert float(loss) == pytest.approx(0.75 * ce_hand + 0.25 * float(js), rel=1e-6)
    # the official direction: the CE weight starts low and rises (0.2 / 0.30 / 0.54 at 0-based 0 / 20 / 100)
    assert [round(alpha_schedule(e, 0.2, 140.0), 3) for e in (1, 21, 101)] == [0.2, 0.3, 0.533]
    # the matching weight halves every half-life
    assert 1 - alpha_schedule(11, 0.2, 10.0) == pytest.approx(0.4)


def test_igm_flat_transform_from_a_known_covariance():
    angle = 0.3
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    cov = rotation @ torch.diag(torch.tensor([4.0, 1.0, 0.0])) @ rotation.T
    tau = 0.4
    # eigenvalues 4, 1, 0: scales exp(-tau * 4/4), exp(-tau * 1/4), exp(0)
    expected = rotation @ torch.diag(torch.tensor([math.exp(-tau), math.exp(-tau / 4), 1.0])) @ rotation.T
    assert torch.allclose(flat_transform(cov, tau), expected, atol=1e-6)
    assert torch.equal(flat_transform(torch.eye(3) * 2, tau), torch.eye(3))  # no sharper direction


def test_igm_covariance_of_batch_means_and_sam_radius():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    # means of rows (1,2) and (3,4): (2, 0) and (0, 3)
    assert torch.equal(batch_mean_second_moment(x, 2), torch.tensor([[4.0, 0.0], [0.0, 9.0]]))
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    eps = sam_perturbation(grads, rho=0.5)
    assert torch.allclose(torch.cat([e.reshape(-1) for e in eps]), torch.tensor([0.3, 0.0, 0.0, 0.4]))
    per_tensor = sam_perturbation(grads, rho=0.5, per_tensor=True)
    assert all(float(e.norm()) == pytest.approx(0.5) for e in per_tensor)


def test_igm_tabular_head_gradient_is_right_multiplied_by_the_image_T(tiny):
    method, batches = setup(tiny, "igm", "methods.igm.rho=0")
    run_steps(method, batches[:2], epochs=[1, 1])  # last epoch of the image stage: covariance accumulates
    cov = method.cov_image_0.clone()
    assert cov.abs().sum() > 0
    enter_epoch(method, plan_for(method, 2), 2)  # tabular stage: T_image computed from that covariance
    assert torch.allclose(method.flat_image_0, flat_transform(cov, 0.4), atol=1e-6)
    assert not torch.allclose(method.flat_image_0, torch.eye(len(cov)))

    batch = batches[2]
    method.eval()  # fixed batch-norm statistics so the hand recomputation sees the same features
    layers = method.linears("tabular")
    loss = F.cross_entropy(method.heads["tabular"](method.encoders.tabular(batch.tabular)), batch.label)
    plain = torch.autograd.grad(loss, [layer.weight for layer in layers])
    opt = RecordingAdam(method)
    stats = method.train_step(batch, opt)
    assert float(stats["gm"]) == 1.0
    for i, g in enumerate(plain):
        got = opt.records[0][f"heads.tabular.{[0, 2, 3][i]}.weight"]
        assert torch.allclose(got, g @ getattr(method, f"flat_image_{i}"), atol=1e-6)


def test_igm_sam_uses_the_gradient_at_the_perturbed_head_and_restores_it(tiny):
    import copy

    method, batches = setup(tiny, "igm", "methods.igm.rho=0.5", "methods.igm.gm=false")
    method.eval()
    batch = batches[0]
    method.on_epoch_start(1)
    head = method.heads["image"]
    before = [p.detach().clone() for p in head.parameters()]
    u = method.encoders.image(batch.image).detach()
    loss = F.cross_entropy(head(u), batch.label)
    g = torch.autograd.grad(loss, list(head.parameters()))
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    shifted = copy.deepcopy(head)
    with torch.no_grad():
        for p, gi in zip(shifted.parameters(), g):
            p.add_(0.5 * gi / norm)
    expected = torch.autograd.grad(F.cross_entropy(shifted(u), batch.label), list(shifted.parameters()))

    seen = {}

    class Snapshot(RecordingAdam):
        def step(self, closure=None):
            seen["weights"] = [p.detach().clone() for p in head.parameters()]
            return super().step(closure)

    opt = Snapshot(method)
    method.train_step(batch, opt)
    for (name, _), want in zip(head.named_parameters(), expected):
        assert torch.allclose(opt.records[0][f"heads.image.{name}"], want, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(seen["weights"], before))


def test_igm_entropy_weighted_fusion():
    confident, unsure = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    h = torch.tensor([float(F.softmax(confident, -1).mul(F.log_softmax(confident, -1)).sum().neg()), math.log(2)])
    lam = F.softmax(-h, 0)
    p = lam[0] * F.softmax(confident, -1) + lam[1] * F.softmax(unsure, -1)
    assert torch.allclose(entropy_weighted([confident, unsure]).exp(), p, atol=1e-6)


def test_dgl_gradient_routing(tiny):
    method, batches = setup(tiny, "dgl", "methods.dgl.alpha=4")
    method.eval()  # same features in the recomputation and in the step
    batch = batches[0]
    enc = [p for p in method.encoders.parameters() if p.requires_grad]
    head = list(method.head.parameters())
    u_i, u_t = method.encoders.image(batch.image), method.encoders.tabular(batch.tabular)
    d = method.encoders.feature_dim
    w, b = method.head.weight, method.head.bias
    l_i = F.cross_entropy(u_i @ w[:, :d].T + b, batch.label)
    l_t = F.cross_entropy(u_t @ w[:, d:].T + b, batch.label)
    l_f = F.cross_entropy(torch.cat([u_i, u_t], 1) @ w.T + b, batch.label)
    expected_enc = torch.autograd.grad(4 * (l_i + l_t), enc, retain_graph=True)
    expected_head = torch.autograd.grad(l_f, head, retain_graph=True)
    total, _ = dgl_loss(method.head, u_i, u_t, batch.label, alpha=4.0)
    got_enc = torch.autograd.grad(total, enc, retain_graph=True)
    got_head = torch.autograd.grad(total, head)
    for got, want in zip(got_enc + got_head, expected_enc + expected_head):
        assert torch.allclose(got, want, atol=1e-6)

    opt = RecordingAdam(method)
    method.train_step(batch, opt)
    record = opt.records[0]
    named_enc = [n for n, p in method.named_parameters() if p.requires_grad and n.startswith("encoders")]
    for n, want in zip(named_enc, expected_enc):
        assert torch.allclose(record[n], want, atol=1e-6)
    assert torch.allclose(record["head.weight"], expected_head[0], atol=1e-6)


def test_arl_weights_are_inverse_to_the_entropy():
    image = torch.zeros(3, 4)  # uniform over 4 classes: H = ln 4
    tabular = torch.tensor([[0.0, 0.0, -1e9, -1e9]]).repeat(3, 1)  # uniform over 2: H = ln 2
    # normalised entropies (2/3, 1/3); w proportional to (3/2, 3) -> (1/3, 2/3)
    assert torch.allclose(arl_weights(image, tabular, floor=0.0), torch.tensor([1 / 3, 2 / 3]))
    # floor 0.4 lifts 1/3 to 0.4: w proportional to (1.5, 2.5)
    assert torch.allclose(arl_weights(image, tabular, floor=0.4), torch.tensor([0.375, 0.625]))


def test_arl_scales_each_encoder_output_gradient(tiny):
    x = torch.ones(2, 3, requires_grad=True)
    ScaleGrad.apply(x, torch.tensor(1.25)).sum().backward()
    assert torch.equal(x.grad, torch.full((2, 3), 1.25))

    method, batches = setup(tiny, "arl", "methods.arl.warmup_epochs=0")
    method.on_epoch_start(1)
    stats = method.train_step(batches[0], RecordingAdam(method))
    assert float(stats["w_image"] + stats["w_tabular"]) == pytest.approx(1.0)
    assert float(stats["w_image"]) != pytest.approx(0.5)
    code, _ = setup(tiny, "arl", "methods.arl.weights=code", "methods.arl.warmup_epochs=0")
    stats = code.train_step(batches[0], RecordingAdam(code))
    assert float(stats["w_image"]) == float(stats["w_tabular"]) == 0.5


# --- one tiny CLI run each ----------------------------------------------------------------


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.mark.parametrize(
    "name, extra, logged",
    [
        ("reconboost", ["methods.reconboost.stage_epochs=1", "methods.reconboost.rectify_epochs=1"], "weight_mean"),
        ("lfm", [], "alpha"),
        ("igm", [], "sam_loss"),
        ("dgl", [], "loss_image"),
        ("arl", [], "w_image"),
    ],
)
def test_cli_train_end_to_end(tmp_path, tiny, name, extra, logged):
    out = tmp_path / name
    result = runner.invoke(app, ["train", "-m", name, "--out", str(out), "-q", *sets(tiny + extra)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == name
    assert set(report["metrics"]["test"]) == {"multi", "image", "tabular"}
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert any(logged in s for s in steps)
    assert all(math.isfinite(s["loss"]) for s in steps)


def test_arl_scales_nothing_during_the_official_warm_up(tiny):
    method, batches = setup(tiny, "arl")
    assert method.settings.warmup_epochs == 6  # official: scaling from 0-based epoch 6
    x = torch.randn(4, 16)  # tiny features are 16 wide
    for epoch, scaled in ((6, False), (7, True)):
        method.on_epoch_start(epoch)
        w = method.weights(x, x)
        assert bool((w == 0).all()) != scaled


def test_lfm_learnable_weights_start_at_the_official_split_and_learn(tiny):
    method, batches = setup(tiny, "lfm", "methods.lfm.schedule=learnable", "methods.lfm.alpha_lr=0.5")
    method.on_epoch_start(1)
    assert torch.allclose(method.weights(), torch.tensor([0.05, 0.95]))
    w = method.weights()
    method.eval()  # the same features for the hand-computed gradient
    logits = {m: method.heads[m](getattr(method.encoders, m)(getattr(batches[0], m))) for m in ("image", "tabular")}
    _, ce, js = lfm_loss(logits["image"], logits["tabular"], batches[0].label, w[0])
    params = [p for p in method.parameters() if p.requires_grad]
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    g_js = torch.autograd.grad(js, params, allow_unused=True)
    opt = RecordingAdam(method)
    stats = method.train_step(batches[0], opt)
    name = {p: n for n, p in method.named_parameters()}
    for p, a, b in zip(params, g_ce, g_js):
        want = w[0] * (0 if a is None else a) + w[1] * (0 if b is None else b)
        assert torch.allclose(opt.records[0][name[p]], torch.as_tensor(want).expand_as(p), atol=1e-6)
    # the CE term's score (1) is at least the matching term's (a cosine): the CE weight never falls
    assert float(method.weights()[0]) >= 0.05 and float(stats["cos_ce_match"]) <= 1.0
