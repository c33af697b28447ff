import pytest
import torch

from gaal_cli.methods.metrics import auroc, balanced_accuracy, classification_metrics, macro_f1


def test_macro_f1_hand_computed():
    y = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: 0
    assert macro_f1(pred, y, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_auroc_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # pairs (pos, neg): (0.35,0.1)=1 (0.35,0.4)=0 (0.8,*)=2 (0.4,0.1)=1 (0.4,0.4)=0.5 -> 4.5/6
    assert auroc(scores, labels) == pytest.approx(4.5 / 6)
    assert auroc(scores, torch.zeros(5, dtype=torch.long)) is None


def test_binary_metrics_include_auroc():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    out = classification_metrics(logits, torch.tensor([0, 1, 1, 1]))
    assert out["acc"] == 0.75 and "auroc" in out
    assert "auroc" not in classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


def test_balanced_accuracy_hand_computed():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 1])
    # recall: class 0 3/4, class 1 1/2, class 2 0/1 -> mean 5/12 (accuracy would be 4/7)
    assert balanced_accuracy(pred, y, 4) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    logits = torch.nn.functional.one_hot(pred, 4).float()
    out = classification_metrics(logits, y)
    assert out["bal_acc"] == pytest.approx(5 / 12) and out["acc"] == pytest.approx(4 / 7)
