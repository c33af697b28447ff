"""The GPU paths: bf16 autocast, channels_last, torch.compile, GAAL's surgery under autocast, a
one-process NCCL group, and the augmentation on the device.

Every CUDA case is skipped on a machine without a GPU. The bf16 and surgery checks also run on
the CPU, where bf16 autocast exists too, so their logic is exercised on every machine.

Tolerances, and why:
- bf16 against fp32 training: bf16 keeps 8 significant bits (a relative rounding of 2^-8, 0.4 %,
  per operation); on the tiny config the first step's loss agrees within 1 % and each of the six
  steps within 5 % (the two runs drift apart as their weights do).
- channels_last and torch.compile against eager: the same float32 arithmetic in another memory
  layout or fused, so only the order of the sums differs; TF32 is switched off for these
  comparisons (cuDNN uses it for float32 convolutions by default, 10 significant bits), and the
  six per-step losses agree within 1e-3 relative.
- the augmentation on the GPU against the CPU with the same draws: float32 sums in another order,
  within 1e-4 on the [0, 1] scale (TF32 off: the blur is a convolution).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from raw_datasets import make_table

from gaal_cli.config import load_config
from gaal_cli.data import make_loader
from gaal_cli.data.images import ImageTransform
from gaal_cli.methods.gaal import Gaal
from gaal_cli.training.engine import autocast, device_batch, setup, train

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def step_losses(tmp_path, name: str, overrides: list[str]) -> list[float]:
    """Train the config and return the loss of every training step (steps.jsonl)."""
    train(load_config(overrides=overrides), tmp_path / name, show_progress=False)
    lines = (tmp_path / name / "steps.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture
def no_tf32(monkeypatch):
    """Plain float32 convolutions and matrix products on the GPU, for comparisons of arithmetic."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["concat", "gaal"])
def test_bf16_training_matches_fp32(tmp_path, tiny, device, method):
    common = [*tiny, f"train.device={device}", f"method={method}"]
    fp32 = step_losses(tmp_path, "fp32", [*common, "train.bf16=false"])
    bf16 = step_losses(tmp_path, "bf16", [*common, "train.bf16=true"])
    assert len(fp32) == len(bf16) == 6
    assert bf16[0] == pytest.approx(fp32[0], rel=1e-2)
    assert bf16 == pytest.approx(fp32, rel=5e-2)
    assert bf16 != fp32, "bf16 autocast should change the arithmetic at all"


@needs_cuda
@pytest.mark.parametrize("method", ["concat", "gaal"])
def test_channels_last_gives_the_losses_of_the_default_layout(tmp_path, tiny, no_tf32, method):
    common = [*tiny, "train.device=cuda", f"method={method}"]
    eager = step_losses(tmp_path, "contiguous", [*common, "train.channels_last=false"])
    channels_last = step_losses(tmp_path, "channels_last", [*common, "train.channels_last=true"])
    assert channels_last == pytest.approx(eager, rel=1e-3)


def has_c_compiler() -> bool:
    return any(shutil.which(name) for name in (os.environ.get("CC", "cc"), "gcc", "clang"))


@needs_cuda
@pytest.mark.skipif(not has_c_compiler(), reason="torch.compile's Triton builds its launcher with a C compiler")
@pytest.mark.parametrize("method", ["concat", "gaal"])
def test_torch_compile_gives_the_losses_of_eager(tmp_path, tiny, no_tf32, method):
    common = [*tiny, "train.device=cuda", f"method={method}", "train.channels_last=false"]
    eager = step_losses(tmp_path, "eager", [*common, "train.compile=false"])
    compiled = step_losses(tmp_path, "compiled", [*common, "train.compile=true"])
    assert compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_gaal_surgery_under_bf16_autocast_works_on_float32_head_gradients(tiny, device, monkeypatch):
    """Autocast computes the head's logits in bf16, but the head's parameters, their gradients,
    g, g_p and the weight v of eq. 5 stay float32, and the surgery keeps its promise g_p.g~ >= eps."""
    epsilon = 0.05
    overrides = [*tiny, f"train.device={device}", "train.bf16=true", "method=gaal", f"methods.gaal.epsilon={epsilon}"]
    session = setup(load_config(overrides=overrides))
    seen, logit_dtypes = [], []
    original = Gaal.weight

    def recording(self, g, g_p):
        v = original(self, g, g_p)
        seen.append((g, g_p, v))
        return v

    monkeypatch.setattr(Gaal, "weight", recording)
    head = session.method.head
    head.register_forward_hook(lambda module, args, out: logit_dtypes.append(out.dtype))
    batch = device_batch(session, next(iter(make_loader(session.data.train, 32, shuffle=True))))
    session.method.train()
    with autocast(session.device, True):
        session.method.train_step(batch, session.optimizer)

    assert torch.bfloat16 in logit_dtypes, "the head did not run under bf16 autocast"
    assert len(seen) == 2, "one surgery per modality's turn"
    for g, g_p, v in seen:
        assert g.dtype == g_p.dtype == v.dtype == torch.float32
        aligned = float(g_p @ (g + v * g_p))
        assert aligned >= epsilon - 1e-4 * (float(g_p.norm() * g.norm()) + epsilon)
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in head.parameters())


@needs_cuda
@pytest.mark.parametrize("method", ["concat", "gaal"])
def test_one_process_nccl_group_trains_as_a_single_process(tmp_path, tiny, method):
    """A world of one over NCCL: the collectives gaal_cli.foundation.distributed uses run on CUDA tensors,
    and training steps with them (gradients averaged through NCCL) equal steps without them."""
    import torch.distributed as dist

    from gaal_cli.foundation.distributed import TorchComm

    overrides = [*tiny, "train.device=cuda", f"method={method}"]

    def three_steps(comm=None):
        session = setup(load_config(overrides=overrides))
        if comm is not None:  # what distributed.attach does for a world of several
            params = [p for group in session.optimizer.param_groups for p in group["params"]]
            session.method.comm = comm
            session.optimizer.register_step_pre_hook(lambda *_: comm.reduce_pending(params))
        batch = device_batch(session, next(iter(make_loader(session.data.train, 32, shuffle=True, seed=1))))
        session.method.train()
        for _ in range(3):
            session.method.train_step(batch, session.optimizer)
        return session.method.state_dict()

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl"
        comm = TorchComm()
        x = torch.arange(4.0, device="cuda")
        assert torch.equal(comm.all_gather(x), x) and torch.equal(comm.sum(x), x)
        comm.barrier()
        over_nccl = three_steps(comm)
    finally:
        dist.destroy_process_group()
    alone = three_steps()
    for name, value in alone.items():
        assert torch.allclose(over_nccl[name].float(), value.float(), atol=2e-5, rtol=1e-4), name


@needs_cuda
@pytest.mark.parametrize("normalize", ["none", "imagenet"])
def test_augmentation_on_the_gpu_matches_the_cpu_with_the_same_draws(no_tf32, normalize):
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    transform = ImageTransform(32, augment=True, normalize=normalize)
    finish = transform.on_device()
    torch.manual_seed(0)
    on_cpu = finish(transform(images))
    torch.manual_seed(0)
    on_gpu = finish(transform(images).pin_memory().to("cuda", non_blocking=True))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)


@needs_cuda
def test_training_with_augmentation_on_the_gpu_follows_the_loader_path(tmp_path, no_tf32):
    table = make_table(tmp_path / "user", n=36)
    common = [
        f"data.name={table}", "data.target=species", "data.image_column=photo", "data.image_size=16",
        "data.batch_size=8", "data.augment=true", "model.feature_dim=8", "model.tabular_hidden=[8]",
        "train.epochs=2", "train.device=cuda",
    ]  # fmt: skip
    assert setup(load_config(overrides=[*common, "data.augment_on=auto"])).finish_images is not None
    # both draw in the main process in the same order (no loader workers): only the arithmetic's device differs
    loader = step_losses(tmp_path, "loader", [*common, "data.augment_on=loader"])
    device = step_losses(tmp_path, "device", [*common, "data.augment_on=device"])
    assert device == pytest.approx(loader, rel=1e-3)
