"""Runs that need another run's checkpoint (gaal_cli.runs.dependencies), starting weights (model.weights,
model.pretrained), and the rules of KD and FMR on hand-computed cases."""

import hashlib
import json
import math

import pytest
import timm
import torch
from fake_runs import fake_checkpoint

from gaal_cli.config import load_config
from gaal_cli.data import build_data
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.fmr import fmr_loss, fmr_target
from gaal_cli.methods.kd import kd_loss
from gaal_cli.models.encoders import ImageEncoder, TabularEncoder
from gaal_cli.runs.dependencies import read_dependency, required_dependency
from gaal_cli.training.engine import create_method, train
from gaal_cli.training.trained_run import evaluate_checkpoint, load_dependencies

CPU = torch.device("cpu")


# ---------------------------------------------------------------- the methods' rules


def test_kd_loss_at_a_temperature_on_a_hand_computed_case():
    # T = 2: the teacher's logits (0, 2 ln 3) soften to (1/4, 3/4); the student's (0, 0) to (1/2, 1/2)
    teacher = torch.tensor([[0.0, 2 * math.log(3)]])
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    label = torch.tensor([1])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    hard = math.log(2)  # CE of a uniform prediction over 2 classes
    total, parts = kd_loss(student, teacher, label, temperature=2.0, alpha=0.5)
    assert float(parts["soft"].detach()) == pytest.approx(kl)
    assert float(parts["hard"].detach()) == pytest.approx(hard)
    assert float(total.detach()) == pytest.approx(0.5 * hard + 0.5 * 2.0**2 * kl)
    # the T^2 factor: d(T^2 KL)/dz_s = T (p_s^T - p_t^T); for the class-1 logit 2 (1/2 - 3/4)
    total.backward()
    soft_grad_class1 = 0.5 * 2.0 * (0.5 - 0.75)
    hard_grad_class1 = 0.5 * (0.5 - 1.0)
    assert float(student.grad[0, 1]) == pytest.approx(soft_grad_class1 + hard_grad_class1)


def test_fmr_regression_target_and_loss_on_a_hand_computed_case():
    # one continuous column and one categorical column of 3 categories; no hidden layer
    fixed = TabularEncoder((1, 3), hidden=[], feature_dim=2)
    with torch.no_grad():
        fixed.mlp[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]]))
        fixed.mlp[0].bias.copy_(torch.tensor([0.5, -1.0]))
    table = torch.tensor([[2.0, 2.0]])  # value 2, category 2 -> one-hot input (2, 0, 0, 1)
    target = fmr_target(fixed, table)
    assert target.tolist() == [[2.5, 2.0]] and not target.requires_grad
    predicted = torch.tensor([[1.5, 2.0]])  # squared errors (1, 0): mean 0.5
    logits, label = torch.zeros(1, 4), torch.tensor([0])
    total, parts = fmr_loss(logits, label, predicted, target, weight=2.0)
    assert float(parts["mse"]) == pytest.approx(0.5)
    assert float(total) == pytest.approx(math.log(4) + 2.0 * 0.5)


def test_fmr_regression_pulls_the_estimate_to_the_fixed_features(tiny, teacher_checkpoint):
    """After the same steps, v^ = R(u) is far closer to the fixed model's features with the
    regression term than without it (lambda = 0)."""
    from gaal_cli.data import make_loader
    from gaal_cli.training.engine import build_optimizer

    final = {}
    for weight in (0.0, 1.0):
        fmr = ["method=fmr", f"methods.fmr.fixed_model={teacher_checkpoint}", f"methods.fmr.regression_weight={weight}"]
        config = load_config(overrides=[*tiny, *fmr])
        data = build_data(config.data, 0)
        torch.manual_seed(0)
        method = create_method(config, data, load_dependencies(config, data, CPU))
        optimizer, _ = build_optimizer(method, config.train)
        batch = next(iter(make_loader(data.train, 32, shuffle=False)))
        method.train()
        final[weight] = [float(method.train_step(batch, optimizer)["loss_regression"]) for _ in range(40)][-1]
    assert final[1.0] < final[0.0] / 2


# ---------------------------------------------------------------- loading another run


def test_dependency_is_loaded_frozen_and_checked_against_the_data(tiny, teacher_checkpoint, tmp_path):
    config = load_config(overrides=[*tiny, "method=kd", f"methods.kd.teacher={teacher_checkpoint}"])
    data = build_data(config.data, 0)
    dep = load_dependencies(config, data, CPU)["methods.kd.teacher"]
    assert dep.sha256 == hashlib.sha256(teacher_checkpoint.read_bytes()).hexdigest()
    assert not dep.model.training and not any(p.requires_grad for p in dep.model.parameters())
    saved = torch.load(teacher_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in dep.model.state_dict().items())

    other = fake_checkpoint(tmp_path / "five.pt", "concat", ["data.synthetic.num_classes=5"])
    config = load_config(overrides=[*tiny, "method=kd", f"methods.kd.teacher={other}"])
    with pytest.raises(GaalError, match=r"5 classes, this run's data has 10") as err:
        load_dependencies(config, data, CPU)
    assert "methods.kd.teacher" in str(err.value) and str(other) in str(err.value)


def test_unfinished_foreign_or_missing_dependencies_are_clear_errors(tmp_path, teacher_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(teacher_checkpoint.read_bytes())  # best epoch so far, no DONE
    with pytest.raises(GaalError, match="unfinished"):
        read_dependency(run, "methods.kd.teacher")
    with pytest.raises(GaalError, match="no such run folder"):
        read_dependency(tmp_path / "nope", "methods.kd.teacher")
    pickled = tmp_path / "object.pt"
    torch.save({"model": {}, "config": {}, "extra": ImageEncoder("test_resnet", 8)}, pickled)  # needs code to load
    with pytest.raises(GaalError, match="plain data"):
        read_dependency(pickled, "methods.kd.teacher")
    with pytest.raises(GaalError, match="methods.kd.teacher=RUN_FOLDER"):
        required_dependency({}, "teacher", "kd")  # kd without a teacher


def test_init_from_starts_the_encoders_from_another_run(tiny, teacher_checkpoint):
    config = load_config(overrides=[*tiny, "method=gaal", f"model.init_from={teacher_checkpoint}"])
    data = build_data(config.data, 0)
    method = create_method(config, data, load_dependencies(config, data, CPU))
    saved = torch.load(teacher_checkpoint, weights_only=True)["model"]
    mine = method.state_dict()
    encoder_keys = [k for k in saved if k.startswith("encoders.")]
    assert encoder_keys and all(torch.equal(mine[k], saved[k]) for k in encoder_keys)

    config = load_config(overrides=[*tiny, "model.feature_dim=8", f"model.init_from={teacher_checkpoint}"])
    with pytest.raises(GaalError, match="does not fit"):
        create_method(config, data, load_dependencies(config, data, CPU))


def test_kd_run_records_its_teacher_and_evaluates_without_it(tiny, tmp_path):
    teacher = fake_checkpoint(tmp_path / "teacher.pt", "tabular")
    config = load_config(overrides=[*tiny, "train.epochs=1", "method=kd", f"methods.kd.teacher={teacher}"])
    report = train(config, tmp_path / "kd", show_progress=False)
    record = report["dependencies"]["methods.kd.teacher"]
    assert record["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert record["path"] == str(teacher) and record["method"] == "tabular"
    assert json.loads((tmp_path / "kd" / "report.json").read_text())["inputs_at_test"] == ["image"]
    assert set(report["metrics"]["test"]) == {"multi", "image"}  # no tabular head: image-only at test
    teacher.unlink()  # a student needs no teacher at test time
    metrics, _ = evaluate_checkpoint(tmp_path / "kd")
    assert metrics["image"]["acc"] == pytest.approx(report["metrics"]["test"]["image"]["acc"])


# ---------------------------------------------------------------- starting weights of the image backbone


def test_weights_from_a_timm_state_dict_and_from_a_gaal_checkpoint(tmp_path, teacher_checkpoint):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=1000)  # a classifier that the encoder drops
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    encoder = ImageEncoder("test_resnet", 16, weights=str(tmp_path / "timm.pth"))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, expected[k]) for k, v in encoder.backbone.state_dict().items())

    encoder = ImageEncoder("test_resnet", 16, weights=str(teacher_checkpoint))
    saved = torch.load(teacher_checkpoint, weights_only=True)["model"]
    prefix = "encoders.image.backbone."
    assert all(torch.equal(v, saved[prefix + k]) for k, v in encoder.backbone.state_dict().items())
    with pytest.raises(GaalError, match="model.weights"):
        ImageEncoder("resnet18", 16, weights=str(teacher_checkpoint))


def test_pretrained_weights_offline_are_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # an offline host with an empty cache; the hub is never contacted
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(GaalError, match="cannot get timm.s pretrained weights for .test_resnet.") as err:
        ImageEncoder("test_resnet", 16, pretrained=True)
    assert "model.pretrained" in str(err.value) and "model.weights=PATH" in str(err.value)


def test_an_interrupted_run_whose_teacher_changed_starts_over(tiny, tmp_path):
    teacher = fake_checkpoint(tmp_path / "teacher.pt", "concat")
    config = load_config(overrides=[*tiny, "train.epochs=3", "method=kd", f"methods.kd.teacher={teacher}"])
    out = tmp_path / "kd"
    with pytest.raises(KeyboardInterrupt):
        train(config, out, show_progress=False, interrupt_after=1)
    first_epoch = (out / "metrics.jsonl").read_text().splitlines()[0]

    state = torch.load(teacher, weights_only=True)  # the teacher is retrained meanwhile
    state["model"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, teacher)
    report = train(config, out, show_progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert lines[0] != first_epoch, "epoch 1 was trained again against the new teacher"
    assert report["dependencies"]["methods.kd.teacher"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
