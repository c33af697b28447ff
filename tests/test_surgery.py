import numpy as np
import pytest
import quadprog
import torch

from gaal_cli.methods import surgery

HEAD_SIZE = 256 * 10 + 10  # default CPU head: Linear(256, 10)


def qp_align(g: np.ndarray, g_p: np.ndarray, eps: float) -> np.ndarray:
    """min ||x - g||^2 / 2 s.t. g_p.x >= eps, by a generic dense QP solver."""
    n = len(g)
    # factorized=True: the identity is passed as its own inverse Cholesky factor
    return quadprog.solve_qp(np.eye(n), g, g_p[:, None], np.array([eps]), factorized=True)[0]


@pytest.mark.parametrize("eps", [0.0, 0.05, 1.0])
def test_align_matches_generic_qp_solver(eps):
    gen = torch.Generator().manual_seed(0)
    for trial in range(3):
        g = torch.randn(HEAD_SIZE, generator=gen, dtype=torch.float64)
        g_p = torch.randn(HEAD_SIZE, generator=gen, dtype=torch.float64)
        if trial == 0:
            g = g - 2 * (g @ g_p) / (g_p @ g_p) * g_p - 0.3 * g_p  # force a conflict
        expected = qp_align(g.numpy(), g_p.numpy(), eps)
        got = surgery.align(g, g_p, eps).numpy()
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-6
        assert g_p.numpy() @ got >= eps - 1e-9


def test_align_leaves_aligned_gradient_unchanged():
    g_p = torch.randn(HEAD_SIZE, dtype=torch.float64)
    g = g_p + 0.1 * torch.randn(HEAD_SIZE, dtype=torch.float64)
    assert torch.equal(surgery.align(g, g_p, eps=0.0), g)


def test_align_conflicting_gradient_meets_margin_exactly():
    g_p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g = torch.tensor([-2.0, 3.0], dtype=torch.float64)
    out = surgery.align(g, g_p, eps=0.5)
    assert torch.allclose(out, torch.tensor([0.5, 3.0], dtype=torch.float64))


def test_align_is_safe_when_guidance_is_zero():
    g = torch.randn(50)
    out = surgery.align(g, torch.zeros(50), eps=0.1)
    assert torch.equal(out, g)
    assert torch.isfinite(out).all()


def test_align_keeps_dtype_and_device():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        g, g_p = torch.randn(10, dtype=dtype), torch.randn(10, dtype=dtype)
        out = surgery.align(g, g_p, 0.1)
        assert out.dtype == dtype and out.device == g.device


def test_gem_weight_matches_official_dual_qp():
    gen = torch.Generator().manual_seed(1)
    margin, qp_eps = 0.75, 1e-3
    for _ in range(5):
        g = torch.randn(HEAD_SIZE, generator=gen, dtype=torch.float64)
        g_p = torch.randn(HEAD_SIZE, generator=gen, dtype=torch.float64)
        if g @ g_p >= 0:
            g = -g
        # GEM's dual: min_v v^2 (g_p.g_p + qp_eps) / 2 + v g_p.g  s.t. v >= margin
        P = np.array([[float(g_p @ g_p) + qp_eps]])
        q = -np.array([float(g_p @ g)])
        v = quadprog.solve_qp(P, q, np.eye(1), np.array([margin]))[0][0]
        assert float(surgery.gem_weight(g, g_p, margin, qp_eps)) == pytest.approx(v, rel=1e-9)
    aligned = torch.ones(5, dtype=torch.float64)
    assert float(surgery.gem_weight(aligned, aligned)) == 0.0


def test_top_uncertain_returns_highest_entropy_samples():
    logits = torch.tensor(
        [
            [10.0, 0.0, 0.0],  # confident
            [0.0, 0.0, 0.0],  # uniform: highest entropy
            [2.0, 1.0, 0.0],
            [5.0, 5.0, 0.0],
            [0.1, 0.0, 0.1],  # nearly uniform
            [8.0, 0.0, 1.0],
        ]
    )
    idx = surgery.top_uncertain(logits, 0.5)
    assert sorted(idx.tolist()) == [1, 3, 4] or sorted(idx.tolist()) == [1, 2, 4]
    h = surgery.entropy(logits)
    chosen = set(idx.tolist())
    assert min(h[list(chosen)]) >= max(h[[i for i in range(6) if i not in chosen]])
    assert surgery.top_uncertain(logits, 1.0).numel() == 6
    assert surgery.top_uncertain(logits, 0.01).tolist() == [1]


def test_entropy_matches_definition():
    logits = torch.randn(7, 4)
    p = logits.softmax(-1)
    assert torch.allclose(surgery.entropy(logits), -(p * p.log()).sum(-1), atol=1e-6)


def test_flatten_roundtrip():
    tensors = [torch.randn(3, 4), torch.randn(4)]
    flat = surgery.flatten(tensors)
    assert flat.shape == (16,)
    for a, b in zip(surgery.unflatten(flat, tensors), tensors):
        assert torch.equal(a, b)
