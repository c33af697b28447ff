"""Every registered method: two CPU steps, finite gradients on every parameter that should learn,
and diagnostics that are cosines. Predictions with a modality missing are `gaal check-method`'s
check, run on every trained built-in in tests/test_resume.py."""

import math

import pytest
import torch
from fake_runs import dependency_overrides

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods import METHODS
from gaal_cli.training.engine import build_optimizer, create_method
from gaal_cli.training.trained_run import load_dependencies


class Recorder:
    """Wraps the engine's optimiser; at each step() records which parameters carry a gradient."""

    def __init__(self, optimizer, method):
        self.optimizer, self.method, self.names = optimizer, method, set()
        self.steps = 0

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        for name, p in self.method.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
                self.names.add(name)
        self.steps += 1
        return self.optimizer.step(closure)

    def __getattr__(self, attr):
        return getattr(self.optimizer, attr)


def build(name, tiny, teacher):
    """The method on tiny data; one that needs another run's checkpoint gets the fake teacher."""
    config = load_config(overrides=[*tiny, f"method={name}", *dependency_overrides(name, teacher)])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data, load_dependencies(config, data, torch.device("cpu")))
    optimizer, _ = build_optimizer(method, config.train)
    return method, Recorder(optimizer, method), data


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_steps_give_finite_gradients_to_every_learning_parameter(name, tiny, teacher_checkpoint):
    method, recorder, data = build(name, tiny, teacher_checkpoint)
    method.train()
    method.on_epoch_start(1)
    loader = make_loader(data.train, 32, shuffle=True, seed=0)
    for _, batch in zip(range(2), loader):
        stats = method.train_step(batch, recorder)
        assert {"loss", "acc"} <= set(stats)
        assert all(v.dim() == 0 and math.isfinite(float(v)) for v in stats.values()), stats
    assert recorder.steps >= 2
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    missing = trainable - method.idle_parameters() - recorder.names
    assert not missing, f"{name}: no gradient reached {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_grad_cosine_diagnostics_are_cosines(name, tiny, teacher_checkpoint):
    overrides = [f"method={name}", f"methods.{name}.grad_cosine=true", *dependency_overrides(name, teacher_checkpoint)]
    config = load_config(overrides=[*tiny, *overrides])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data, load_dependencies(config, data, torch.device("cpu")))
    optimizer, _ = build_optimizer(method, config.train)
    method.train()
    method.on_epoch_start(1)
    stats = method.train_step(next(iter(make_loader(data.train, 32, shuffle=True, seed=0))), optimizer)
    for key, value in stats.items():
        assert math.isfinite(float(value)), key
        if key.startswith("cos_"):
            assert -1.0 - 1e-6 <= float(value) <= 1.0 + 1e-6, key
