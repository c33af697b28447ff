"""CHARMS: the transport plan, its cost and its masks on hand-computed cases, attribute heads
that read only their matched channels, and one tiny CLI run whose plan is recomputed."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data
from gaal_cli.methods.charms import kmeans, plan_masks, sinkhorn, transport_cost
from gaal_cli.training.engine import create_method

runner = CliRunner()


def uniform(n):
    return torch.full((n,), 1 / n)


def test_sinkhorn_plan_on_a_2x2_cost_is_the_hand_computed_entropic_plan():
    # cost [[0, 1], [1, 0]], marginals (1/2, 1/2): by symmetry P = [[p, q], [q, p]] with
    # p + q = 1/2 and p / q = exp(1 / eps), so p = 1/2 * e^(1/eps) / (1 + e^(1/eps))
    eps = 0.5
    plan = sinkhorn(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), uniform(2), uniform(2), eps, 1000)
    p = 0.5 * math.exp(1 / eps) / (1 + math.exp(1 / eps))
    assert torch.allclose(plan, torch.tensor([[p, 0.5 - p], [0.5 - p, p]]), atol=1e-6)


def test_sinkhorn_plan_on_a_3x2_cost_tends_to_the_exact_plan_and_its_support_gives_the_masks():
    # three attributes, two groups. <P, C> = const - 1.1 P11 + 0.9 P21 once the marginals fix the
    # rest, so the exact plan sends attribute 1 to group 1, attribute 2 to group 2 and splits 3
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    plan = sinkhorn(cost, uniform(3), uniform(2), 0.01, 5000)
    exact = torch.tensor([[1 / 3, 0.0], [0.0, 1 / 3], [1 / 6, 1 / 6]])
    assert torch.allclose(plan, exact, atol=1e-4)
    assert torch.allclose(plan.sum(1), uniform(3), atol=1e-5) and torch.allclose(plan.sum(0), uniform(2), atol=1e-5)
    # channels 0 and 3 form group 0, channels 1 and 2 group 1
    masks = plan_masks(plan, torch.tensor([0, 1, 1, 0]), threshold=0.01)
    assert torch.equal(masks, torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]]))


def test_transport_cost_compares_sample_similarity_matrices():
    # attribute values (1, 0) over two samples: unit norm already, similarity [[1, 0], [0, 0]];
    # group activations (1, 1): scaled to (1, 1)/sqrt 2, similarity all 1/2 -> cost 4 * (1/2)^2 = 1;
    # group activations (3, 0) scale to (1, 0): the attribute's own similarity -> cost 0
    attribute = torch.tensor([[[1.0], [0.0]]])
    groups = torch.tensor([[[1.0], [1.0]], [[3.0], [0.0]]])
    assert torch.allclose(transport_cost(attribute, groups), torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_kmeans_groups_channels_that_fire_alike():
    channels = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 10.0], [10.0, 10.1], [0.1, 0.0]])
    labels = kmeans(channels, 2)
    assert labels[0] == labels[1] == labels[4] and labels[2] == labels[3] and labels[0] != labels[2]


@pytest.fixture
def charms(tiny):
    config = load_config(overrides=[*tiny, "method=charms"])
    torch.manual_seed(0)
    data = build_data(config.data, 0)
    return create_method(config, data, {}), data


def test_an_attribute_head_reads_only_its_matched_channels(charms):
    method, data = charms
    d, c = method.masks.shape
    assert d == len(data.schema.field_lengths)
    masks = torch.zeros(d, c)
    masks[0, :3] = 1  # attribute 0 reads channels 0..2 only
    masks[1:, 3:] = 1
    method.masks.copy_(masks)
    pooled = torch.randn(4, c)
    other = pooled.clone()
    other[:, 3:] += 5.0  # change every channel attribute 0 does not read
    with torch.no_grad():
        before, after = method.attribute_predictions(pooled), method.attribute_predictions(other)
        assert torch.equal(before[0], after[0])
        assert all(not torch.allclose(b, a) for b, a in zip(before[1:], after[1:]))
        other[:, 0] += 5.0  # a channel it reads
        assert not torch.allclose(method.attribute_predictions(other)[0], before[0])


def test_cli_run_recomputes_the_plan_and_predicts_from_the_image_alone(tmp_path, tiny):
    out = tmp_path / "charms"
    extra = ["train.epochs=3", "methods.charms.refresh_every=1", "methods.charms.transport_samples=40"]
    extra.append("methods.charms.stage_optimizer=null")  # train.*'s Adam: the best checkpoint is a planned epoch
    args = [arg for o in tiny + extra for arg in ("--set", o)]
    result = runner.invoke(app, ["train", "-m", "charms", "--out", str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["inputs_at_test"] == ["image"] and set(report["metrics"]["test"]) == {"multi", "image"}
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert steps[0]["mask_density"] == 1.0  # every attribute reads every channel before the first plan
    assert steps[-1]["mask_density"] < 1.0
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    d = state["plan"].shape[0]
    assert torch.allclose(state["plan"].sum(1), torch.full((d,), 1 / d), atol=1e-4)


def test_exact_plan_on_a_hand_made_case_is_poTs_and_its_support_gives_the_masks():
    import ot

    from gaal_cli.methods.charms import exact_plan

    cost = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    a, b = uniform(2), uniform(3)
    plan = exact_plan(cost, a, b)
    # by hand: row 0 fills column 0 and gives the rest of its mass (1/6) to column 1; row 1 likewise
    by_hand = torch.tensor([[1 / 3, 1 / 6, 0.0], [0.0, 1 / 6, 1 / 3]])
    assert torch.allclose(plan, by_hand, atol=1e-12)
    pot = torch.as_tensor(ot.emd(a.double().numpy(), b.double().numpy(), cost.double().numpy()), dtype=plan.dtype)
    assert torch.equal(plan, pot)
    labels = torch.tensor([0, 1, 2, 2])  # channels' groups
    assert plan_masks(plan, labels, None).tolist() == [[1, 1, 0, 0], [0, 1, 1, 1]]


def test_default_transport_is_exact_and_the_optimiser_is_the_official_one(charms):
    method, _ = charms
    s = method.settings
    assert s.transport == "exact" and s.patience == 5
    spec = s.stage_optimizer
    assert (spec.kind, spec.lr, spec.momentum, spec.weight_decay) == ("sgd", 1e-3, 0.1, 1e-5)
    assert (spec.milestones, spec.gamma) == ((5, 10, 15, 20), 0.5)
    (stage,) = type(method).stages(s, 6)
    assert stage.optimizer == spec and stage.patience == 5
