"""The interface every training method implements (the registry that names them: registry.py).

A method owns the two encoders and whatever heads it needs. The engine hands it one batch and
the optimiser; the method runs its own forward/backward passes and optimiser steps (an
alternating method steps twice per batch) and returns scalar diagnostics as 0-d tensors, so
the engine synchronises with the device only when it logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from gaal_cli.data.base import Batch
from gaal_cli.foundation.distributed import Comm
from gaal_cli.methods.metrics import accuracy  # noqa: F401  (methods import it from here)
from gaal_cli.methods.registry import register_method  # noqa: F401  (methods import it from here)
from gaal_cli.methods.stages import WHOLE_RUN, PlannedStage, Stage
from gaal_cli.models.encoders import Encoders

#: the two modalities, in the order methods iterate over them
MODALITIES = ("image", "tabular")


class MethodSettings(BaseModel):
    """Base of each method's own settings block (`methods.<name>` in the YAML).

    `dependency_fields` names the settings that point at another run's checkpoint (a teacher,
    a fixed model): the engine loads them (gaal_cli.runs.dependencies) and hands them to the
    method's constructor as `dependencies={field: Dependency}`; sweeps train them first.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    dependency_fields: ClassVar[tuple[str, ...]] = ()
    #: settings that bring what the method does only after some epochs (a warm-up, a plan
    #: refreshed every few epochs, mining) into the four epochs of its behaviour trace
    #: (gaal_cli/training/behaviour.py), which applies them over a run's settings: without them a
    #: change to that later code would not change the method's behaviour hash
    trace_settings: ClassVar[dict[str, Any]] = {}

    grad_cosine: bool = Field(
        False,
        description="log per-encoder cosines between unimodal and multimodal gradients every step "
        "(costs extra backward passes; Fig. 1a)",
    )


class Predictions(NamedTuple):
    """Logits of one batch: fused, image-only and tabular-only (None where not defined)."""

    multi: torch.Tensor | None
    image: torch.Tensor | None
    tabular: torch.Tensor | None


class Method(nn.Module):
    """Base class: holds the encoders; subclasses add heads and the training step."""

    #: which modalities the method uses ("image", "tabular"); unimodal methods use one.
    modalities: tuple[str, ...] = ("image", "tabular")
    #: collectives for data-parallel runs; set by the engine (see gaal_cli/foundation/distributed.py)
    comm: Comm = Comm()
    #: the stage the current epoch belongs to; set by the engine before every epoch
    stage: PlannedStage | None = None

    def __init__(self, encoders: Encoders, num_classes: int, settings: MethodSettings):
        super().__init__()
        self.encoders = encoders
        self.num_classes = num_classes
        self.settings = settings

    def train_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One training step on `batch`, including backward passes and optimiser steps."""
        raise NotImplementedError

    def predict(self, image: torch.Tensor | None, tabular: torch.Tensor | None) -> Predictions:
        """Logits for evaluation; a modality passed as None is missing at test time."""
        raise NotImplementedError

    def encode(
        self, image: torch.Tensor | None, tabular: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Features of the modalities present (None stays None: missing at test time)."""
        u_i = self.encoders.image(image) if image is not None else None
        u_t = self.encoders.tabular(tabular) if tabular is not None else None
        return u_i, u_t

    @classmethod
    def stages(cls, settings: MethodSettings, epochs: int) -> Sequence[Stage]:
        """The stages this method trains in, in order (see gaal_cli/methods/stages.py).

        A function of the settings alone, so that experiment files can be checked without data.

        Args:
            epochs: train.epochs, for a method whose stages repeat to fill the run.

        The default is one stage over the whole run with the run's optimiser.
        """
        return WHOLE_RUN

    def on_stage_start(self, stage: PlannedStage) -> None:
        """Hook called once when a stage begins (not again when a run resumes inside it)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods whose rule depends on the epoch (modulation windows, warm-ups)."""

    def resume_state(self) -> dict[str, Any]:
        """What the method keeps across batches and epochs outside its state_dict, for resuming.

        Plain data and tensors only (resume files load with weights_only=True).
        """
        return {}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what `resume_state` returned."""

    def idle_parameters(self) -> set[str]:
        """Names of trainable parameters this method leaves untouched in its current stage.

        A staged method (e.g. a fusion head trained only in a later stage) lists them here so
        the smoke test can check that every other trainable parameter receives a gradient.
        """
        return set()


# per-class loss weights (train.class_weights) for the training steps the engine runs inside
# `weighted_classes`; every method's `cross_entropy` picks them up without knowing about them
_CLASS_WEIGHTS: ContextVar[torch.Tensor | None] = ContextVar("class_weights", default=None)


@contextmanager
def weighted_classes(weights: torch.Tensor | None) -> Iterator[None]:
    """Inside the block, `cross_entropy` weights each sample by its class (None: unweighted)."""
    token = _CLASS_WEIGHTS.set(weights)
    try:
        yield
    finally:
        _CLASS_WEIGHTS.reset(token)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; inside `weighted_classes`, the class-weighted mean."""
    return nn.functional.cross_entropy(logits.float(), labels, weight=_CLASS_WEIGHTS.get())


def fuse_missing(image: torch.Tensor | None, tabular: torch.Tensor | None, fused: Callable[[], torch.Tensor]):
    """The fused prediction, falling back to the one modality present when the other is missing."""
    if image is None:
        return tabular
    if tabular is None:
        return image
    return fused()
