"""Classification metrics on collected logits: accuracy, balanced accuracy, macro-F1 and (binary) AUROC."""

from __future__ import annotations

import pandas as pd
import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy as a 0-d tensor (no host sync: methods log it every step)."""
    return (logits.argmax(-1) == labels).float().mean()


def macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 over the classes that occur in the labels or the predictions."""
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    return f1[present].mean().item()


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present in the labels.

    Real label sets are imbalanced: a model that always answers the majority class scores a high
    accuracy but a balanced accuracy of 1 / (number of classes present).
    """
    support = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    present = support > 0
    return (hits[present] / support[present]).mean().item()


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve via the Mann-Whitney statistic (ties get average ranks)."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = torch.tensor(pd.Series(scores.double().numpy()).rank(method="average").to_numpy())
    rank_sum = ranks[labels.bool()].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """acc, bal_acc and f1 for any task; auroc as well when there are two classes."""
    logits, labels = logits.float().cpu(), labels.cpu()
    num_classes = logits.shape[-1]
    pred = logits.argmax(-1)
    out = {
        "acc": accuracy(logits, labels).item(),
        "bal_acc": balanced_accuracy(pred, labels, num_classes),
        "f1": macro_f1(pred, labels, num_classes),
    }
    if num_classes == 2:
        score = auroc(torch.softmax(logits, -1)[:, 1], labels)
        if score is not None:
            out["auroc"] = score
    return out
