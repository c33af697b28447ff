"""Scoring a method on a split: the device, bf16 autocast, each head's logits in row order, and
their metrics. Training (gaal_cli.training.engine, on the validation split each epoch) and a trained
run read later (gaal_cli.training.trained_run: `gaal eval`, `gaal predict`) go through the same
`predict_split`, so a prediction is what evaluation scored.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch

from gaal_cli.config import Config
from gaal_cli.data import make_loader
from gaal_cli.data.base import SplitDataset, sample_ids
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.base import Method
from gaal_cli.methods.metrics import classification_metrics
from gaal_cli.runs.predictions_file import write_predictions
from gaal_cli.runs.run_predictions import config_hash, dataset_identity
from gaal_cli.training.outputs import check_batch_predictions, check_finite_logits


def resolve_device(spec: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is taken as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise GaalError(
            f"'{spec}' is not a device (expected auto, cpu, cuda or cuda:N)", field="train.device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GaalError("CUDA was asked for but no CUDA device is available", field="train.device")
    return device


@contextmanager
def _onednn_off():
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device`, or nothing.

    On the CPU, oneDNN is switched off inside the context: its AMX bf16 kernels (Intel Xeon of
    the Sapphire Rapids generation and later) give a NaN loss within three steps on the tiny test
    config (torch 2.14.1, measured on such a host; with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, or
    oneDNN off, the same run trains), while ATen's own bf16 kernels train. Float32 runs keep oneDNN.
    """
    if not bf16:
        return nullcontext()
    stack = ExitStack()
    if device.type == "cpu":
        stack.enter_context(_onednn_off())
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    return stack


@torch.no_grad()
def evaluate(
    method: Method,
    split: SplitDataset,
    device: torch.device,
    batch_size: int,
    *,
    missing: str | None = None,
    bf16: bool = False,
    where: str = "on the split evaluated",
    advice: str = "",
) -> dict[str, dict[str, float]]:
    """Metrics of each head (multi / image / tabular) on a split.

    Args:
        missing: 'tabular' or 'image' to evaluate with that modality absent at test time.
        where, advice: said when the logits are not finite (see `predict_split`).
    """
    logits, y = predict_split(method, split, device, batch_size, missing=missing, bf16=bf16, where=where, advice=advice)
    return score_heads(logits, y)


def score_heads(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, dict[str, float]]:
    """The metrics of each head's logits (`predict_split`'s output) against `labels`."""
    return {head: classification_metrics(out, labels) for head, out in logits.items()}


def predict_test(
    method: Method, split: SplitDataset, device: torch.device, config: Config, advice: str = ""
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each head's test logits and the labels, without the modality `data.test_missing` names, as
    the run's config evaluates them: a run's test metrics and its predictions file (written at the
    end of training or later by `gaal eval --write-predictions`) both come from these."""
    absent = config.data.test_missing
    missing = absent if absent != "none" else None
    batch = config.data.eval_batch_size
    where = "on the test split (best checkpoint)"
    return predict_split(
        method, split, device, batch, missing=missing, bf16=config.train.bf16, where=where, advice=advice
    )


def predictions_meta(config: Config, made_by: dict[str, Any] | None = None) -> dict:
    """What a predictions file records of the run that wrote it: `gaal compare` and `gaal report`
    check each against the run's own files (gaal_cli.runs.run_predictions). `made_by`: the run's
    provenance (report.json's), whose code, host and behaviour the header repeats."""
    resolved = config.resolved()
    made_by = made_by or {}
    return {
        **({"provenance": {k: made_by[k] for k in ("code", "host", "behaviour") if k in made_by}} if made_by else {}),
        "method": config.method,
        "seed": config.seed,
        "dataset": config.data.name,
        "test_missing": config.data.test_missing,
        "config_sha256": config_hash(resolved),
        "data": dataset_identity(resolved),
    }


def save_predictions(
    path, split: SplitDataset, logits: dict[str, torch.Tensor], labels: torch.Tensor, meta: dict
) -> None:
    """Write `predict_split`'s output on `split` as a predictions file (gaal_cli.runs.predictions_file),
    each sample named by `sample_ids`: the same logits the metrics were computed from, so the
    file's accuracy per head is the reported one.

    Raises:
        GaalError: logits not finite or beyond float16's range (see `write_predictions`).
    """
    heads = {head: out.numpy() for head, out in logits.items()}
    write_predictions(path, sample_ids(split), labels.numpy(), heads, meta)


@torch.no_grad()
def predict_split(
    method: Method,
    split: SplitDataset,
    device: torch.device,
    batch_size: int,
    *,
    missing: str | None = None,
    bf16: bool = False,
    where: str = "on the split predicted",
    advice: str = "",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits of each head the method defines (float32, on the CPU, in row order) and the labels.

    `evaluate` and `gaal predict` both go through here, so a prediction is what evaluation scored.
    What the method returns is checked (gaal_cli.training.outputs): the heads of each batch, and
    every logit finite.

    Args:
        missing: 'tabular' or 'image' to predict with that modality absent.
        where: where the logits were computed, named when they are not finite ("on the validation
            split after epoch 3"); `advice` follows it.

    Raises:
        GaalError: the method returned no heads or heads of the wrong shape, or a non-finite logit.
    """
    method.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    labels = []
    for batch in make_loader(split, batch_size, shuffle=False):
        batch = batch.to(device)
        image = None if missing == "image" or "image" not in method.modalities else batch.image
        table = None if missing == "tabular" or "tabular" not in method.modalities else batch.tabular
        with autocast(device, bf16):
            preds = method.predict(image, table)
        for head, logits in check_batch_predictions(preds, method, len(batch.label)).items():
            collected.setdefault(head, []).append(logits.float().cpu())
        labels.append(batch.label.cpu())
    logits = {head: torch.cat(chunks) for head, chunks in collected.items()}
    check_finite_logits(logits, where, advice)
    return logits, torch.cat(labels)
