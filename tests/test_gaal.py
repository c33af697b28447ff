import torch
import torch.nn.functional as F

from gaal_cli import surgery
from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.engine import build_optimizer, create_method


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
