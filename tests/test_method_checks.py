"""`gaal check-method` fails a method that breaks the rules every built-in keeps (the built-ins
pass it: tests/test_resume.py; a plugin passes it: tests/test_plugin_example.py)."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.methods import (
    Method,
    MethodSettings,
    Predictions,
    accuracy,
    cross_entropy,
    fuse_missing,
    register_method,
    registry,
)
from gaal_cli.training.method_checks import check_method, difference

runner = CliRunner()


class ForgetfulSettings(MethodSettings):
    pass


class Forgetful(Method):
    """Late fusion whose fused logits carry a learned-by-counting offset kept in a plain attribute:
    neither its state_dict nor its resume_state holds it, so a resumed run starts it from zero."""

    def __init__(self, encoders, num_classes, settings):
        super().__init__(encoders, num_classes, settings)
        self.heads = nn.ModuleDict({m: nn.Linear(encoders.feature_dim, num_classes) for m in ("image", "tabular")})
        self.offset = torch.zeros(num_classes)  # not a buffer: lost by a checkpoint

    def predict(self, image, tabular):
        u_i, u_t = self.encode(image, tabular)
        z_i = self.heads["image"](u_i) if u_i is not None else None
        z_t = self.heads["tabular"](u_t) if u_t is not None else None
        return Predictions(fuse_missing(z_i, z_t, lambda: z_i + z_t + self.offset), z_i, z_t)

    def train_step(self, batch, optimizer):
        optimizer.zero_grad(set_to_none=True)
        preds = self.predict(batch.image, batch.tabular)
        loss = sum(cross_entropy(z, batch.label) for z in preds)
        loss.backward()
        optimizer.step()
        self.offset += 0.1 * torch.nn.functional.one_hot(batch.label, self.num_classes).float().mean(0)
        return {"loss": loss.detach(), "acc": accuracy(preds.multi.detach(), batch.label)}


class NeedsBoth(Forgetful):
    """Keeps its offset as a buffer (resumes fine) but crashes when the table is missing."""

    def __init__(self, encoders, num_classes, settings):
        super().__init__(encoders, num_classes, settings)
        del self.offset
        self.register_buffer("offset", torch.zeros(num_classes))

    def predict(self, image, tabular):
        if tabular is None:
            raise ValueError("needs the table")
        return super().predict(image, tabular)


@pytest.fixture
def broken(monkeypatch):
    """Both methods registered for this test only."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    register_method("forgetful", ForgetfulSettings)(Forgetful)
    register_method("needs_both", ForgetfulSettings)(NeedsBoth)


def verdicts(checks):
    return {c.name: c.passed for c in checks}


def test_a_method_that_does_not_save_its_state_fails_the_resume_check_only(tmp_path, broken):
    checks = check_method("forgetful", tmp_path, quick=True)
    assert verdicts(checks) == {
        "trains": True,
        "resumes": False,
        "repeats": True,
        "stages": True,
        "missing modality": True,
        "healthy": True,
    }
    resumes = next(c for c in checks if c.name == "resumes")
    assert "differs from the uninterrupted one" in resumes.reason


def test_a_method_that_crashes_without_a_modality_fails_that_check_through_the_cli(tmp_path, broken):
    result = runner.invoke(app, ["check-method", "needs_both", "--quick", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("FAIL  missing modality") and "needs the table" in line for line in lines)
    assert sum(line.startswith("PASS") for line in lines) == 5
    assert "needs_both: 5 of 6 checks passed" in result.output


def test_check_method_refuses_bad_input_with_exit_2(tmp_path):
    result = runner.invoke(app, ["check-method", "concatt", "--quick"])
    assert result.exit_code == 2 and "did you mean 'concat'" in result.output
    result = runner.invoke(app, ["check-method", "concat", "--set", "methods.concat.nope=1"])
    assert result.exit_code == 2 and "methods.concat.nope" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    result = runner.invoke(app, ["check-method", "concat", "--out", str(tmp_path / "full")])
    assert result.exit_code == 2 and "not an empty folder" in result.output


def test_difference_names_the_first_leaf_that_differs():
    assert difference({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.0}]}) is None
    assert difference({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.5}]}) == "a[1].b: 2.0 vs 2.5"
    assert difference({"w": torch.ones(2)}, {"w": torch.tensor([1.0, 1.5])}) == "w: the tensors differ"
    assert difference([1, 2], [1]) == "records: 2 vs 1 entries"
