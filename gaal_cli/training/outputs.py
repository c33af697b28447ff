"""What a method hands back to the engine, checked as it arrives.

A method may come from another package (gaal_cli.methods.plugins): its `train_step` and `predict`
are third-party code. What they return is checked where the engine first uses it, so a wrong
type is one paragraph naming the method and what was expected, not a traceback from deep inside
the engine; and a model whose outputs became NaN or infinite stops the run naming where, as a
non-finite training loss does (gaal_cli.training.engine.check_finite_loss), instead of finishing
as a run that scores at chance.
"""

from __future__ import annotations

from typing import Any

import torch

from gaal_cli.foundation.errors import GaalError

HEADS = ("multi", "image", "tabular")


def method_name(method: Any) -> str:
    cls = type(method)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_step_stats(stats: Any, method: Any) -> None:
    """`train_step`'s statistics: a mapping from name to a one-element tensor, `loss` among them.

    Raises:
        GaalError: names the method and the first statistic that is not one.
    """
    if not isinstance(stats, dict) or "loss" not in stats:
        got = type(stats).__name__ if not isinstance(stats, dict) else f"keys {sorted(map(str, stats))[:8]}"
        raise GaalError(
            f"{method_name(method)}.train_step returned {got}; expected a dict of 0-d tensors with a 'loss'",
            field="train_step",
        )
    for key, value in stats.items():
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise GaalError(
                f"{method_name(method)}.train_step returned {got} as its statistic {str(key)!r}; "
                "expected a 0-d tensor (e.g. loss.detach())",
                field="train_step",
            )


class NoHeadError(GaalError):
    """`predict` returned None for every head: the method makes no claim on these inputs (DAFT,
    for one, with a modality missing)."""


def check_batch_predictions(preds: Any, method: Any, rows: int) -> dict[str, torch.Tensor]:
    """`predict`'s output for a batch of `rows`: the heads that are not None, each (rows, classes).

    Raises:
        GaalError: not the heads (multi, image, tabular), no head at all, or a head of the wrong shape.
    """
    fields = getattr(preds, "_asdict", None)
    heads = fields() if callable(fields) else None
    if not isinstance(heads, dict) or set(heads) != set(HEADS):
        raise GaalError(
            f"{method_name(method)}.predict returned {type(preds).__name__}; expected "
            "Predictions(multi, image, tabular) of logits (None where a head has none)",
            field="predict",
        )
    given = {head: logits for head, logits in heads.items() if logits is not None}
    if not given:
        raise NoHeadError(f"{method_name(method)}.predict returned no head at all (all None)", field="predict")
    for head, logits in given.items():
        expected = (rows, getattr(method, "num_classes", None))
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != rows:
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise GaalError(
                f"{method_name(method)}.predict returned {got} for its {head} head; "
                f"expected logits of shape {expected}",
                field="predict",
            )
    return given


#: what a training run says when its model's outputs stop being finite
TRAINING_ADVICE = (
    "The run stopped there, without saving that epoch; lower train.lr, or look for extreme values in the data, "
    "then rerun (the run folder keeps the epochs before it; the same config resumes after them)"
)


def check_finite_logits(logits: dict[str, torch.Tensor], where: str, advice: str = "") -> None:
    """Every head's logits finite.

    Raises:
        GaalError: names the head, how many values are not finite, and `where` (the split, the epoch).
    """
    for head, values in logits.items():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise GaalError(
                f"the model's {head} predictions hold {bad} NaN or infinite logit{'s' * (bad > 1)} of "
                f"{values.numel()} {where}: the model has diverged, and nothing computed from it would mean "
                f"anything. {advice}".rstrip()
            )
