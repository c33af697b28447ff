"""MFH (gaal_cli/methods/mfh.py): Algorithm 1's overlap tag, the channels kept, the frozen
teacher's target, and a tiny run through both stages, on hand-computed cases."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from fake_runs import fake_checkpoint
from staging import enter_epoch, plan_for

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.mfh import freeze_channels, kept_channels, min_max, permuted_channel_distances
from gaal_cli.methods.stages import build_stage_optimizer
from gaal_cli.sweeps.runner import load_sweep
from gaal_cli.training.engine import create_method, plan_method_stages, train
from gaal_cli.training.trained_run import evaluate_checkpoint, load_dependencies

CPU = torch.device("cpu")
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# the teacher's head g(u) = W u + b: class 0 reads channel 0, class 1 channels 1 and 2
W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
B = torch.tensor([0.5, -0.5])
FEATURES = torch.tensor([[2.0, 1.0, 1.0], [0.0, 2.0, 4.0]])  # g: [[2.5, 1.5], [0.5, 5.5]]
REFERENCE = torch.tensor([[3.5, 1.5], [0.5, 5.5]])  # agrees with g but for sample 0, class 0 (by 1)


def head(u):
    return u @ W.T + B


def test_overlap_tag_of_each_channel_on_a_hand_computed_case():
    swap = torch.tensor([[1, 0], [1, 0], [1, 0]])  # every channel swapped between the two samples
    # swapping channel k moves the logits its weights touch by +-(u_1k - u_0k):
    #   k=0: class 0 by -2 / +2 -> differences to the reference (-3, 0), (2, 0): (9 + 4) / 4
    #   k=1: class 1 by +1 / -1 -> (-1, 1), (0, -1): 3 / 4
    #   k=2: class 1 by +3 / -3 -> (-1, 3), (0, -3): 19 / 4
    distances = permuted_channel_distances(FEATURES, REFERENCE, head, swap)
    assert distances.tolist() == pytest.approx([13 / 4, 3 / 4, 19 / 4])
    # each channel has its own permutation: channel 1 left in place gives the unpermuted MSE, 1 / 4
    own = permuted_channel_distances(FEATURES, REFERENCE, head, torch.tensor([[1, 0], [0, 1], [1, 0]]))
    assert own.tolist() == pytest.approx([13 / 4, 1 / 4, 19 / 4])


def test_the_channels_with_the_lowest_tags_are_frozen():
    tag = min_max(torch.tensor([13 / 4, 3 / 4, 19 / 4]))
    assert tag.tolist() == pytest.approx([10 / 16, 0.0, 1.0])  # (x - 3/4) / (19/4 - 3/4)
    assert kept_channels(tag, 0.5).tolist() == [True, False, True]  # floor(1.5) = 1 frozen: channel 1
    assert kept_channels(tag, 0.7).tolist() == [False, False, True]  # floor(2.1) = 2: channels 1 and 0
    assert kept_channels(tag, 0.0).all()
    assert min_max(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]  # every channel tied: no division by 0


def test_the_target_depends_on_the_kept_channels_only():
    keep = torch.tensor([True, False, True])
    frozen = freeze_channels(FEATURES, keep)
    assert frozen.tolist() == [[2.0, 1.5, 1.0], [0.0, 1.5, 4.0]]  # channel 1 at its batch mean 1.5
    assert torch.allclose(head(frozen), torch.tensor([[2.5, 2.0], [0.5, 5.0]]))
    # the frozen channel's values move (same batch mean): the target does not; a kept one's do: it does
    moved = FEATURES.clone()
    moved[:, 1] = torch.tensor([3.0, 0.0])
    assert torch.equal(freeze_channels(moved, keep), frozen)
    moved = FEATURES.clone()
    moved[:, 2] = torch.tensor([4.0, 1.0])
    assert not torch.equal(head(freeze_channels(moved, keep)), head(frozen))


def build(tiny, teacher, reference, *extra):
    fields = [f"methods.mfh.teacher={teacher}", f"methods.mfh.reference={reference}"]
    config = load_config(overrides=[*tiny, "method=mfh", *fields, *extra])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    return create_method(config, data, load_dependencies(config, data, CPU)), data


def test_the_tag_stage_trains_nothing_and_the_distil_stage_distils_the_frozen_teacher(tiny, tmp_path):
    teacher = fake_checkpoint(tmp_path / "teacher.pt", "tabular")
    reference = fake_checkpoint(tmp_path / "reference.pt", "image")
    method, data = build(tiny, teacher, reference, "methods.mfh.permutations=2")
    plan = plan_for(method, 2)
    assert [(p.name, p.epochs, p.stage.labels, p.stage.selects) for p in plan] == [
        ("overlap_tag", 1, False, False),
        ("distil", 1, True, True),
    ]
    before = {k: v.clone() for k, v in method.state_dict().items() if not k.startswith(("tag_", "overlap", "keep"))}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    enter_epoch(method, plan, 1)
    batches = list(make_loader(data.train, 32, shuffle=True, seed=0))
    for batch in batches:
        method.train_step(batch._replace(label=None), optimizer)  # label-free: it reads no label
    assert all(torch.equal(method.state_dict()[k], v) for k, v in before.items())
    assert float(method.tag_terms) == 2 * len(batches)

    enter_epoch(method, plan, 2)
    tag, keep = method.overlap_tag, method.keep
    assert float(tag.min()) == 0.0 and float(tag.max()) == 1.0
    assert int(keep.sum()) == 16 - 12  # feature_dim 16, floor(0.75 * 16) frozen
    assert float(tag[keep].min()) >= float(tag[~keep].max())  # the highest tags are kept

    batch = batches[0]
    tabular_run = method.teacher.model
    features = tabular_run.encoders.tabular(batch.tabular)
    frozen = torch.where(keep, features, features.mean(dim=0))
    with torch.no_grad():
        assert torch.allclose(method.teacher_logits(batch.tabular), tabular_run.head(frozen))
    stats = method.train_step(batch, optimizer)
    assert {"loss", "acc", "kl_soft", "teacher_acc"} <= set(stats)
    assert method.encoders.image.parameters().__next__().grad is not None


def test_a_teacher_without_a_tabular_prediction_is_refused(tiny, tmp_path):
    image_run = fake_checkpoint(tmp_path / "image.pt", "image")
    with pytest.raises(GaalError, match="methods.mfh.teacher"):
        build(tiny, image_run, image_run)
    tabular_run = fake_checkpoint(tmp_path / "tabular.pt", "tabular")
    with pytest.raises(GaalError, match="methods.mfh.reference"):
        build(tiny, tabular_run, tabular_run)


def test_mfh_run_through_both_stages(tiny, tmp_path):
    teacher = fake_checkpoint(tmp_path / "teacher.pt", "tabular")
    reference = fake_checkpoint(tmp_path / "reference.pt", "image")
    fields = [f"methods.mfh.teacher={teacher}", f"methods.mfh.reference={reference}", "methods.mfh.permutations=1"]
    config = load_config(overrides=[*tiny, "train.epochs=3", "method=mfh", *fields])
    report = train(config, tmp_path / "mfh", show_progress=False)
    assert [s["name"] for s in report["stages"]] == ["overlap_tag", "distil"]
    # the tag stage measures and trains nothing: run health expects no gradient there
    assert [s["encoders"] for s in report["stages"]] == [[], ["image"]]
    assert not [f for f in report["health"] if f["name"] == "encoder_not_training"]
    assert set(report["dependencies"]) == {"methods.mfh.teacher", "methods.mfh.reference"}
    assert report["best_epoch"] >= 2  # the tag epoch is never the best checkpoint
    assert json.loads((tmp_path / "mfh" / "report.json").read_text())["inputs_at_test"] == ["image"]
    saved = torch.load(tmp_path / "mfh" / "checkpoint.pt", weights_only=True)["model"]
    assert int(saved["keep"].sum()) == 4 and float(saved["overlap_tag"].max()) == 1.0


def build_own_reference(tiny, tmp_path, *extra):
    teacher = fake_checkpoint(tmp_path / "teacher.pt", "tabular")
    fields = [f"methods.mfh.teacher={teacher}", "methods.mfh.permutations=1", *extra]
    config = load_config(overrides=[*tiny, "method=mfh", *fields])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    method = create_method(config, data, load_dependencies(config, data, CPU))
    return method, data, plan_for(method, 7)


def test_without_a_reference_run_mfh_trains_teacher_and_reference_together_and_distils_that_teacher(tiny, tmp_path):
    """RAVDESS's path (ravdess/utils/helper.py train_network_for_overlap_tag, main_overlap_tag.py
    eval_overlap_tag): teacher and reference learn CE + CE + MSE between their logits, and the
    teacher the tag ranks and the student learns from is that jointly trained one, not the run
    it started from (which stays as it was)."""
    method, data, plan = build_own_reference(tiny, tmp_path)
    assert [(p.name, p.epochs, p.stage.labels, p.stage.selects) for p in plan] == [
        ("reference", 5, True, False),
        ("overlap_tag", 1, False, False),
        ("distil", 1, True, True),
    ]
    assert plan[0].stage.trains == ("reference_net.", "joint_teacher.")
    enter_epoch(method, plan, 1)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable - method.idle_parameters()} == {"reference_net", "joint_teacher"}
    before = {k: v.clone() for k, v in method.state_dict().items()}
    run_before = {k: v.clone() for k, v in method.teacher.model.state_dict().items()}
    optimizer = torch.optim.SGD([p for n, p in method.named_parameters() if n in trainable], lr=0.1)
    batches = list(make_loader(data.train, 32, shuffle=True, seed=0))
    stats = method.train_step(batches[0], optimizer)
    assert {"reference_ce", "teacher_ce", "agreement_mse"} <= set(stats)
    moved = {k.split(".")[0] for k, v in method.state_dict().items() if not torch.equal(before[k], v)}
    assert moved == {"reference_net", "joint_teacher"}
    assert all(torch.equal(method.teacher.model.state_dict()[k], v) for k, v in run_before.items())

    enter_epoch(method, plan, 6)
    for batch in batches:
        method.train_step(batch._replace(label=None), optimizer)
    enter_epoch(method, plan, 7)
    batch, keep, joint = batches[0], method.keep, method.joint_teacher
    with torch.no_grad():
        features = joint.encoders.tabular(batch.tabular)
        expected = joint.head(torch.where(keep, features, features.mean(dim=0)))
        run_features = method.teacher.model.encoders.tabular(batch.tabular)
        from_run = method.teacher.model.head(torch.where(keep, run_features, run_features.mean(dim=0)))
        target = method.teacher_logits(batch.tabular)
    assert torch.allclose(target, expected)
    assert not torch.allclose(target, from_run)  # the old path distilled the run it started from


def test_a_frozen_teacher_leaves_only_the_reference_learning(tiny, tmp_path):
    """`joint_teacher: false`: the reference learns CE + MSE to the frozen teacher's logits."""
    method, data, plan = build_own_reference(tiny, tmp_path, "methods.mfh.joint_teacher=false")
    assert method.joint_teacher is None and plan[0].stage.trains == ("reference_net.",)
    enter_epoch(method, plan, 1)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert all(n.startswith("reference_net.") for n in trainable - method.idle_parameters())
    before = {k: v.clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.SGD([p for n, p in method.named_parameters() if n.startswith("reference_net.")], lr=0.1)
    batch = next(iter(make_loader(data.train, 32, shuffle=True, seed=0)))
    stats = method.train_step(batch, optimizer)
    assert {"reference_ce", "agreement_mse"} <= set(stats) and "teacher_ce" not in stats
    moved = {k for k, v in method.state_dict().items() if not torch.equal(before[k], v)}
    assert moved and all(k.startswith("reference_net.") for k in moved)
    with torch.no_grad():
        logits = method.reference_net["head"](method.reference_net["encoder"](batch.image))
    assert torch.allclose(method.reference_logits(batch.image), logits)
    enter_epoch(method, plan, 6)
    method.train_step(batch._replace(label=None), optimizer)
    assert float(method.tag_terms) == 1


def test_a_joint_teacher_run_is_saved_with_its_copy_and_evaluates_without_the_teacher_weights(tiny, tmp_path):
    teacher = fake_checkpoint(tmp_path / "teacher.pt", "tabular")
    fields = [f"methods.mfh.teacher={teacher}", "methods.mfh.permutations=1", "methods.mfh.reference_epochs=1"]
    config = load_config(overrides=[*tiny, "train.epochs=3", "method=mfh", *fields])
    report = train(config, tmp_path / "mfh", show_progress=False)
    assert [s["name"] for s in report["stages"]] == ["reference", "overlap_tag", "distil"]
    saved = torch.load(tmp_path / "mfh" / "checkpoint.pt", weights_only=True)["model"]
    original = torch.load(teacher, weights_only=True)["model"]
    copy = {k[len("joint_teacher.") :]: v for k, v in saved.items() if k.startswith("joint_teacher.")}
    assert copy.keys() == original.keys()
    assert any(not torch.equal(copy[k], original[k]) for k in copy)  # the copy learnt in stage `reference`
    metrics, _ = evaluate_checkpoint(tmp_path / "mfh")  # rebuilt from records: no teacher weights, no copy
    assert 0.0 <= metrics["image"]["acc"] <= 1.0


@pytest.mark.parametrize("dataset", ["dvm", "sun", "celeba"])
def test_the_paper_scale_plan_trains_every_stage_with_a_constant_sgd_at_1e_2(dataset, tmp_path):
    """Issue 27: the official RAVDESS optimiser (helper.py `train_network_for_overlap_tag`,
    main_overlap_tag.py `eval_overlap_tag`: SGD 1e-2, momentum 0.9, no weight decay, no
    scheduler), built fresh for the joint reference stage and for the distillation, not the
    run's Adam with StepLR(10), which leaves a 100-epoch stage at 1e-3 x 0.1^9."""
    path = EXPERIMENTS / f"table1_missing_{dataset}.yaml"
    (run,) = [r for r in load_sweep(path, results=tmp_path).runs if r.config.method == "mfh" and r.seed == 2022]
    plan = plan_method_stages(run.config)
    assert [(p.name, p.epochs) for p in plan] == [("reference", 100), ("overlap_tag", 1), ("distil", 100)]
    probe = torch.nn.Linear(1, 1)
    for planned in plan:
        everything = dataclasses.replace(planned, stage=dataclasses.replace(planned.stage, trains=()))
        optimizer, scheduler = build_stage_optimizer(probe, everything, run.config.train)
        assert isinstance(optimizer, torch.optim.SGD), planned.name
        group = optimizer.param_groups[0]
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-2, 0.9, 0.0), planned.name
        for _ in range(planned.epochs):
            optimizer.step()
            scheduler.step()
        assert group["lr"] == 1e-2, f"{planned.name}: the rate must stay constant"
