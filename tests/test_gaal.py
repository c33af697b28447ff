import copy
import math

import pytest
import torch
import torch.nn.functional as F

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods import surgery
from gaal_cli.training import engine
from gaal_cli.training.engine import build_optimizer, create_method, track_best, train


class RecordingAdam(torch.optim.Adam):
    """Adam that records, at each step, which parameters carry a gradient and the head's grads."""

    def __init__(self, params, method, **kw):
        super().__init__(params, **kw)
        self.method = method
        self.records = []

    def step(self, closure=None):
        # zero-initialised residual BN scales give exact zeros on step one, so test presence
        names = {n for n, p in self.method.named_parameters() if p.grad is not None}
        assert all(torch.isfinite(p.grad).all() for p in self.method.parameters() if p.grad is not None)
        head = [p.grad.clone() for p in self.method.head.parameters()]
        self.records.append((names, head))
        return super().step(closure)


def setup(tiny, *extra):
    config = load_config(overrides=tiny + list(extra))
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data)
    batch = next(iter(make_loader(data.train, 32, shuffle=True, seed=0)))
    return config, method, batch


def group(names, prefix):
    return {n for n in names if n.startswith(prefix)}


def test_each_phase_updates_exactly_its_encoder_and_the_head(tiny):
    _, method, batch = setup(tiny)
    method.train()
    opt = RecordingAdam(method.parameters(), method, lr=1e-3)
    method.train_step(batch, opt)
    assert len(opt.records) == 2
    all_image = {n for n, _ in method.named_parameters() if n.startswith("encoders.image")}
    all_table = {n for n, _ in method.named_parameters() if n.startswith("encoders.tabular")}
    (first, _), (second, _) = opt.records
    assert group(first, "encoders.image") == all_image and not group(first, "encoders.tabular")
    assert group(second, "encoders.tabular") == all_table and not group(second, "encoders.image")
    assert group(first, "head") == group(second, "head") == {"head.weight", "head.bias"}


def test_head_step_uses_eq5_with_hard_sample_guidance(tiny):
    """Recompute g and g_p by hand (closed-form CE gradient of a linear head) and check g~."""
    _, method, batch = setup(tiny, "methods.gaal.epsilon=0.3", "methods.gaal.lambda_tabular=0.25")
    method.train()
    with torch.no_grad():
        u_i = method.encoders.image(batch.image)
        u_t = method.encoders.tabular(batch.tabular)
    w, b = method.head.weight.detach().clone(), method.head.bias.detach().clone()

    def head_grad(u, y):
        p = F.softmax(u @ w.T + b, -1)
        d = (p - F.one_hot(y, p.shape[1])) / len(y)
        return torch.cat([(d.T @ u).reshape(-1), d.sum(0)])

    y = batch.label
    g = head_grad(u_i, y)
    hard = surgery.top_uncertain(u_t @ w.T + b, 0.25)
    g_p = head_grad(u_t[hard], y[hard])
    expected = surgery.align(g, g_p, 0.3)

    torch.manual_seed(0)
    opt = RecordingAdam(method.parameters(), method, lr=1e-3)
    method.train_step(batch, opt)
    got = surgery.flatten(opt.records[0][1])
    assert torch.allclose(got, expected, atol=1e-5)
    assert float(g_p @ got) >= 0.3 - 1e-4


def test_without_cgs_the_head_gets_its_plain_gradient(tiny):
    _, method, batch = setup(tiny, "methods.gaal.cgs=false", "methods.gaal.epsilon=5.0")
    method.train()
    opt = RecordingAdam(method.parameters(), method, lr=1e-3)
    stats = method.train_step(batch, opt)
    assert float(stats["surgery_image"]) == 0.0
    # with eps=5 the surgery would always fire; with cgs off the recorded gradient is plain CE
    method2 = setup(tiny, "methods.gaal.epsilon=5.0")[1]
    method2.train()
    opt2 = RecordingAdam(method2.parameters(), method2, lr=1e-3)
    stats2 = method2.train_step(batch, opt2)
    assert float(stats2["surgery_image"]) == 1.0
    assert not torch.allclose(surgery.flatten(opt.records[0][1]), surgery.flatten(opt2.records[0][1]))


def test_predict_averages_logits_and_handles_missing_tabular(tiny):
    _, method, batch = setup(tiny)
    method.eval()
    with torch.no_grad():
        p = method.predict(batch.image, batch.tabular)
        assert torch.allclose(p.multi, (p.image + p.tabular) / 2)
        q = method.predict(batch.image, None)
        assert q.tabular is None and torch.allclose(q.multi, p.image)


def test_concat_slices_sum_to_fused_logits(tiny):
    _, method, batch = setup(tiny, "method=concat")
    method.eval()
    with torch.no_grad():
        p = method.predict(batch.image, batch.tabular)
        u = torch.cat([method.encoders.image(batch.image), method.encoders.tabular(batch.tabular)], 1)
        assert torch.allclose(p.multi, method.head(u), atol=1e-5)


def test_optimizer_from_config(tiny):
    config, method, _ = setup(tiny, "train.optimizer=sgd", "train.scheduler=cosine")
    opt, sched = build_optimizer(method, config.train)
    assert isinstance(opt, torch.optim.SGD)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)


# ---------------------------------------------------------------- Algorithm 1, by hand


def algorithm_1_step(encoders, head, x, y, optimizer, lam, eps, official, dots):
    """One batch of Algorithm 1, written from the paper's equations, not from gaal_cli.methods.surgery.

    Per turn m (image, then tabular): CE of psi(u_m) gives encoder m's gradient and g (eq. 1);
    the other modality's predictions are recomputed now (line 8), their entropy (eq. 6) picks
    the top-lambda hard samples (eq. 7), whose mean CE gives g_p (eq. 8); g~ = g + v g_p with
    v = max(0, (eps - g_p.g) / ||g_p||^2) (eq. 5); one optimiser step. `official` swaps in the
    official code's int(lambda B), GEM weight v = max(0.75, -g_p.g / (||g_p||^2 + 1e-3)) when
    g_p.g < 0, and torch 1.12's zero gradients on the idle encoder once it has had one.
    """
    head_params = list(head.parameters())
    for m, o in (("image", "tabular"), ("tabular", "image")):
        own = list(encoders[m].parameters())
        grads = torch.autograd.grad(F.cross_entropy(head(encoders[m](x[m])), y), own + head_params)
        g = torch.cat([t.reshape(-1) for t in grads[len(own) :]])
        with torch.no_grad():
            u_other = encoders[o](x[o])
        logits = head(u_other)
        p = F.softmax(logits.detach(), dim=1)
        uncertainty = -(p * torch.log(p)).sum(1)
        k = max(1, int(lam[o] * len(y))) if official else math.ceil(lam[o] * len(y))
        hard = torch.argsort(uncertainty, descending=True)[:k]
        hard_grads = torch.autograd.grad(F.cross_entropy(logits[hard], y[hard]), head_params)
        g_p = torch.cat([t.reshape(-1) for t in hard_grads])
        dot = float(g_p @ g)
        dots[m].append(dot)
        if official:
            v = max(0.75, -dot / float(g_p @ g_p + 1e-3)) if dot < 0 else 0.0
        else:
            v = max(0.0, (eps - dot) / float(g_p @ g_p))
        g_tilde = (g + v * g_p).split([t.numel() for t in head_params])
        for param, grad in zip(own + head_params, list(grads[: len(own)]) + list(g_tilde)):
            param.grad = grad.reshape(param.shape).clone()
        for param in encoders[o].parameters():
            param.grad = torch.zeros_like(param) if official and param.grad is not None else None
        optimizer.step()
        if not official:
            optimizer.zero_grad(set_to_none=True)


def point_tabular_against_image(method, batch):
    """Make the tabular features the negative of the image features' mean, so g_p.g < 0."""
    with torch.no_grad():
        mean_image = method.encoders.image(batch.image).mean(0)
        last = method.encoders.tabular.mlp[-1]
        last.weight.mul_(0.1)
        last.bias.copy_(-3 * mean_image)


OFFICIAL = ["methods.gaal.projection=gem", "methods.gaal.hard_count=floor", "methods.gaal.idle_step=true"]


def compare_with_algorithm_1(tiny, optimizer, *, eps=0.0, conflict=False, official=False, extra=()):
    """Max |theta_gaal - theta_reference| after one epoch (3 batches) from the same start."""
    settings = [f"train.optimizer={optimizer}", f"methods.gaal.epsilon={eps}", "methods.gaal.lambda_tabular=0.3"]
    config = load_config(overrides=[*tiny, *settings, *(OFFICIAL if official else []), *extra])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data).train()
    batches = list(make_loader(data.train, 32, shuffle=True, seed=0))
    if conflict:
        point_tabular_against_image(method, batches[0])
    reference = copy.deepcopy(method)
    opt, _ = build_optimizer(method, config.train)
    ref_opt, _ = build_optimizer(reference, config.train)
    encoders = {"image": reference.encoders.image, "tabular": reference.encoders.tabular}
    lam = {"image": 0.5, "tabular": 0.3}
    dots = {"image": [], "tabular": []}
    for batch in batches:
        method.train_step(batch, opt)
        x = {"image": batch.image, "tabular": batch.tabular}
        algorithm_1_step(encoders, reference.head, x, batch.label, ref_opt, lam, eps, official, dots)
    with torch.no_grad():
        gap = max(float((a - b).abs().max()) for a, b in zip(method.parameters(), reference.parameters()))
    return gap, dots


@pytest.mark.parametrize(
    ("optimizer", "eps", "conflict", "official"),
    [
        ("adam", 0.0, True, False),
        ("sgd", 0.0, True, False),
        ("adam", 0.3, False, False),
        ("sgd", 0.3, False, False),
        ("adam", 0.0, True, True),
    ],
    ids=["adam-conflict", "sgd-conflict", "adam-margin", "sgd-margin", "official-adam-conflict"],
)
def test_full_steps_match_a_hand_written_algorithm_1(tiny, optimizer, eps, conflict, official):
    gap, dots = compare_with_algorithm_1(tiny, optimizer, eps=eps, conflict=conflict, official=official)
    assert gap <= 1e-5
    if conflict:  # the surgery fired in both turns (g_p.g < 0), so g_p shaped the steps
        assert any(d < 0 for d in dots["image"]) and any(d < 0 for d in dots["tabular"])


@pytest.mark.parametrize(
    ("official", "broken"),
    [
        (False, "methods.gaal.guidance=stale"),
        (True, "methods.gaal.guidance=stale"),
        (True, "methods.gaal.idle_step=false"),
        (True, "methods.gaal.hard_count=ceil"),
        (True, "methods.gaal.projection=closed_form"),
    ],
)
def test_the_comparison_catches_each_departure(tiny, official, broken):
    """Each behaviour the reference pins down moves the weights well past the 1e-5 bound."""
    gap, _ = compare_with_algorithm_1(tiny, "adam", conflict=True, official=official, extra=[broken])
    assert gap > 1e-4


@pytest.mark.parametrize("settings", [[], OFFICIAL], ids=["paper", "official"])
def test_guidance_forwards_leave_batchnorm_statistics_alone(tiny, settings):
    """Each encoder's running statistics count each batch once, as in joint training."""
    _, method, batch = setup(tiny, *settings)
    method.train()
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    for _ in range(2):
        method.train_step(batch, opt)
    norms = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(int(m.num_batches_tracked) == 2 for m in norms)


# ---------------------------------------------------------------- official-code mode


def test_hard_count_floor_keeps_int_lambda_b():
    assert surgery.n_selected(32, 0.3) == 10 and surgery.n_selected(32, 0.3, "floor") == 9
    assert surgery.n_selected(100, 0.29, "floor") == 28  # int() of the float product, as the official code
    assert surgery.n_selected(3, 0.3, "floor") == 1  # at least one


class SnapshotAdam(torch.optim.Adam):
    """Adam that records, per step, how far the tabular encoder moved and its gradients' sizes."""

    def __init__(self, params, method, **kw):
        super().__init__(params, **kw)
        self.method = method
        self.records = []

    def step(self, closure=None):
        tabular = list(self.method.encoders.tabular.parameters())
        before = [p.detach().clone() for p in tabular]
        grads = [None if p.grad is None else float(p.grad.abs().max()) for p in tabular]
        out = super().step(closure)
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(tabular, before))
        self.records.append((moved, grads))
        return out


@pytest.mark.parametrize("idle_step", [True, False])
def test_idle_encoder_takes_the_optimiser_step_once_it_has_had_a_gradient(tiny, idle_step):
    _, method, batch = setup(tiny, f"methods.gaal.idle_step={str(idle_step).lower()}")
    method.train()
    opt = SnapshotAdam(method.parameters(), method, lr=1e-3, weight_decay=1e-4)
    method.train_step(batch, opt)
    method.train_step(batch, opt)
    (first, first_grads), _, (third, third_grads), _ = opt.records
    # batch 1, image turn: the tabular encoder never had a gradient, so torch skips it
    assert first == 0.0 and all(g is None for g in first_grads)
    if idle_step:  # batch 2, image turn: a zero gradient, yet weight decay and momentum move it
        assert all(g == 0.0 for g in third_grads) and third > 0
    else:
        assert third == 0.0 and all(g is None for g in third_grads)


def test_min_delta_resets_patience_only_on_a_large_enough_gain():
    scores = [0.5, 0.5001, 0.5001, 0.5004]
    for min_delta, stale in [(2e-4, [0, 1, 2, 0]), (0.0, [0, 0, 1, 0])]:
        best = {"score": -1.0, "epoch": 0, "stale": 0}
        seen = [(track_best(best, s, epoch, min_delta), best["stale"]) for epoch, s in enumerate(scores, 1)]
        assert [b for b, _ in seen] == [True, True, False, True], "the best checkpoint follows any gain"
        assert [n for _, n in seen] == stale
        assert best["epoch"] == 4


def test_min_delta_ends_a_run_whose_gains_stay_below_it(tiny, tmp_path, monkeypatch):
    """Validation gains 0.1 every epoch; with min_delta 0.15 and patience 1 epoch 2 ends the run."""
    scores = iter([0.5, 0.6, 0.7, 0.8])
    monkeypatch.setattr(engine, "monitored", lambda metrics, head: next(scores))
    config = load_config(overrides=[*tiny, "train.epochs=4", "train.patience=1", "train.min_delta=0.15"])
    report = train(config, tmp_path / "run", show_progress=False)
    assert report["epochs_run"] == 2
    assert report["best_epoch"] == 2, "the best checkpoint still follows the gain below min_delta"


def test_idle_step_survives_a_resume(tiny):
    """Weights and optimiser state reloaded (every .grad None again) continue as if never stopped."""
    config, method, batch = setup(tiny, *OFFICIAL)
    method.train()
    opt, _ = build_optimizer(method, config.train)
    method.train_step(batch, opt)
    resumed = setup(tiny, *OFFICIAL)[1].train()
    resumed.load_state_dict(method.state_dict())
    resumed_opt, _ = build_optimizer(resumed, config.train)
    resumed_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no shared tensors
    method.train_step(batch, opt)
    resumed.train_step(batch, resumed_opt)
    for (name, a), b in zip(method.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
