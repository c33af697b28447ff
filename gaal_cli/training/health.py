"""Run health: named findings that say a run learned nothing, for every method, in one place.

A finished run can look like any other and still be dead: the scored head answers the majority
class, a contrastive pretraining never left its plateau, a teacher it distilled from was at
chance, an encoder never received a gradient. Each check here is a pure function of what a run
records (report.json, metrics.jsonl, steps.jsonl, its dependencies' report.json), so the engine
runs them at the end of every run (console warning + report.json `health`) and `gaal report`
runs them again on older run folders that have no `health` field. The thresholds are in one
place (`Thresholds`), each with why it is where it is.

A finding is a plain dict: `{"name": ..., "message": ..., "values": {the numbers that triggered
it}}`. A check whose inputs a run did not record (an older run folder: no class counts, no
feature spread, no per-step encoder gradient) is not a finding: it is listed under `unchecked`
with the reason, so "no finding" is never claimed for a check that was not made.

The measurements the engine adds so that every method is checkable (not only those that log
their own gradient norms) are here too: `GradientFlow` (the gradient each encoder receives,
summed over every backward pass of a step, on the device: no extra synchronisation), the
spread of each encoder's features over one validation batch, and the class counts per split.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gaal_cli.config import config_from_mapping
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods.registry import method_spec
from gaal_cli.runs.folder import RunFolder

MODALITIES = ("image", "tabular")


@dataclass(frozen=True)
class Thresholds:
    """Where each check draws its line."""

    # balanced accuracy at most this far above 1 / (classes present) counts as chance: a model that
    # answers one class sits exactly at chance, and a random guesser on ~1000 validation rows of 10
    # classes spreads about one point around it (binomial recall per class, averaged)
    chance_margin: float = 0.02
    # a contrastive (InfoNCE) loss within this fraction of ln(batch) is on its plateau: at ln(batch)
    # the similarity matrix says nothing about which pair belongs together. The committed plateau
    # runs sit within 0.4 % of it; 2 % below (0.1 nats at batch 128) means the positive pair already
    # gets about 10 % more probability than a uniform guess
    contrastive_fraction: float = 0.02
    # features whose spread over a validation batch (mean per-dimension std / RMS of the features)
    # is below this are one point for every sample: nothing downstream can tell samples apart.
    # A randomly initialised encoder spreads at ~0.1-1
    collapse_spread: float = 1e-3
    # steps.jsonl rounds to 6 decimals: a gradient norm that reads 0 there is below 5e-7, which no
    # optimiser step turns into learning; an encoder at it on every step of a stage's last epoch
    # has stopped training (or never started)
    zero_gradient: float = 0.0


THRESHOLDS = Thresholds()

#: every check, with the one line that explains it (the report's legend and the README use these)
CHECKS = {
    "majority_class": "validation accuracy of the scored head not above the majority-class rate",
    "chance_balanced_accuracy": "validation balanced accuracy of the scored head at chance (1 / classes)",
    "contrastive_plateau": "contrastive pretraining loss still within a small margin of ln(batch) at its stage's end",
    "dependency_at_chance": "a run it depends on (teacher, fixed model, initial weights) at chance on validation",
    "collapsed_features": "an encoder's features do not vary across a validation batch",
    "encoder_not_training": "an encoder its stage trains received no gradient in the stage's last epoch",
}

#: the per-step key of each method's contrastive loss in its label-free (pretraining) stage
CONTRASTIVE_LOSS = {"mmcl": "loss", "tip": "loss_itc"}


# ---------------------------------------------------------------- measurements (engine side)


class GradientFlow:
    """The gradient each encoder receives in a training step, whatever the method does.

    A hook on every trainable encoder parameter keeps the norm of its `.grad` after each
    accumulation (one small kernel, a 0-d tensor on the device), so an alternating method
    (several backward passes and optimiser steps per batch) is measured over all of them, and
    nothing waits for the device: the engine reads the values back with the epoch's other
    statistics.
    """

    def __init__(self, method: torch.nn.Module, modalities: Sequence[str]):
        self.norms: dict[str, list[torch.Tensor]] = {}
        self.devices: dict[str, torch.device] = {}
        self.handles = []
        for m in modalities:
            params = [p for p in getattr(method.encoders, m).parameters() if p.requires_grad]
            if not params:
                continue
            self.norms[m], self.devices[m] = [], params[0].device
            for p in params:
                self.handles.append(p.register_post_accumulate_grad_hook(self._keeper(m)))

    def _keeper(self, modality: str):
        def keep(param: torch.Tensor) -> None:
            if param.grad is not None:
                self.norms[modality].append(torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32))

        return keep

    def take(self) -> dict[str, torch.Tensor]:
        """`grad_<modality>`: the root of the summed squared norms since the last call (then reset)."""
        out = {}
        for m, norms in self.norms.items():
            total = torch.stack(norms).square().sum().sqrt() if norms else torch.zeros((), device=self.devices[m])
            out[f"grad_{m}"] = total
            self.norms[m] = []
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def trained_encoders(
    method: torch.nn.Module, optimizer: torch.optim.Optimizer, modalities: Sequence[str]
) -> list[str]:
    """The encoders with at least one parameter in `optimizer` (what the current stage trains)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [m for m in modalities if any(id(p) in held for p in getattr(method.encoders, m).parameters())]


@torch.no_grad()
def feature_spread(method: Any, batch: Any, modalities: Sequence[str]) -> dict[str, float]:
    """Per encoder the method reads, the spread of its features over one batch: the mean over
    dimensions of the standard deviation across samples, over the features' root mean square
    (0: every sample maps to one point, or every feature is zero)."""
    method.eval()
    inputs = {"image": batch.image, "tabular": batch.tabular}
    out = {}
    for m in modalities:
        features = getattr(method.encoders, m)(inputs[m]).float().flatten(1)
        if features.shape[0] < 2:
            continue
        scale = features.square().mean().sqrt().item()
        out[m] = round(features.std(0).mean().item() / scale, 6) if scale > 0 else 0.0
    return out


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


# ---------------------------------------------------------------- the checks (pure)


def scored_head(report: dict[str, Any], monitor: str = "multi") -> str | None:
    """The head a table scores: the one modality read at test, else the monitored head."""
    val = report.get("metrics", {}).get("val", {})
    inputs = report.get("inputs_at_test") or []
    if len(inputs) == 1 and inputs[0] in val:
        return inputs[0]
    if monitor in val:
        return monitor
    return next(iter(val), None)


def finding(name: str, message: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "message": message, "values": values}


def check_majority(head: str, val: dict[str, float], counts: Sequence[int] | None) -> dict | None:
    """Not above the majority-class rate: no more correct answers than always answering the most
    frequent class (counted in samples, so float rounding cannot decide it)."""
    n = sum(counts or ())
    if not n or not isinstance(val.get("acc"), int | float):
        return None
    majority = max(counts) / n
    if round(val["acc"] * n) > max(counts):
        return None
    return finding(
        "majority_class",
        f"the {head} head's validation accuracy {val['acc']:.4f} is not above the majority-class rate {majority:.4f}",
        head=head, acc=round(val["acc"], 6), majority_rate=round(majority, 6),
    )  # fmt: skip


def chance_level(counts: Sequence[int] | None, classes: int | None) -> float | None:
    """1 / (classes present in the split), or 1 / classes when the counts were not recorded."""
    present = sum(1 for c in counts or () if c > 0) or classes
    return 1 / present if present else None


def check_chance(head: str, val: dict[str, float], chance: float | None, t: Thresholds) -> dict | None:
    bal = val.get("bal_acc")
    if chance is None or not isinstance(bal, int | float) or bal > chance + t.chance_margin:
        return None
    return finding(
        "chance_balanced_accuracy",
        f"the {head} head's validation balanced accuracy {bal:.4f} is at chance ({chance:.4f} + {t.chance_margin})",
        head=head, bal_acc=round(bal, 6), chance=round(chance, 6),
    )  # fmt: skip


def stage_epochs(stage: dict[str, Any], metrics: Sequence[dict]) -> list[int]:
    """The epochs of `stage` (a report.json `stages` entry) that the run logged."""
    first = stage["start_epoch"]
    return [r["epoch"] for r in metrics if first <= r["epoch"] < first + stage["epochs"]]


def check_contrastive(
    method: str, stages: Sequence[dict], metrics: Sequence[dict], steps: Sequence[dict], batch: int, t: Thresholds
) -> tuple[list[dict], str | None]:
    """Each label-free stage whose contrastive loss ends within `contrastive_fraction` of ln(batch).

    The median of the stage's last epoch's per-step values: a last, shorter batch has a lower
    ln(batch) and would pull a mean below the plateau.

    Returns:
        The findings, and why the check could not be made (None when it was).
    """
    key = CONTRASTIVE_LOSS.get(method)
    pretraining = [s for s in stages if s.get("labels") is False]
    if key is None or not pretraining:
        return [], None
    found = []
    for stage in pretraining:
        epochs = stage_epochs(stage, metrics)
        last = [s.get(key) for s in steps if epochs and s.get("epoch") == epochs[-1]]
        values = [v for v in last if isinstance(v, int | float)]
        if not values:
            return found, f"no per-step '{key}' logged in stage {stage['name']}"
        loss, plateau = statistics.median(values), math.log(batch)
        if loss >= plateau * (1 - t.contrastive_fraction):
            found.append(finding(
                "contrastive_plateau",
                f"stage {stage['name']}: the contrastive loss ends at {loss:.4f}, "
                f"on its plateau ln({batch}) = {plateau:.4f}",
                stage=stage["name"], epoch=epochs[-1], loss=round(loss, 6), ln_batch=round(plateau, 6),
            ))  # fmt: skip
    return found, None


def check_gradients(
    stages: Sequence[dict], metrics: Sequence[dict], steps: Sequence[dict], t: Thresholds
) -> list[dict]:
    """Each encoder a stage trains whose gradient (`grad_<m>`; older runs: the method's own
    `gnorm_<m>`) is at most `zero_gradient` on every step of the stage's last epoch."""
    found = []
    for stage in stages:
        epochs = stage_epochs(stage, metrics)
        if not epochs:
            continue
        last = [s for s in steps if s.get("epoch") == epochs[-1]]
        for m in stage.get("encoders", ()):
            values = [s.get(f"grad_{m}", s.get(f"gnorm_{m}")) for s in last]
            values = [v for v in values if isinstance(v, int | float)]
            if values and max(values) <= t.zero_gradient:
                found.append(finding(
                    "encoder_not_training",
                    f"stage {stage['name']} trains the {m} encoder, but its gradient norm is {max(values)} "
                    f"on every step of epoch {epochs[-1]}",
                    stage=stage["name"], encoder=m, epoch=epochs[-1], max_grad_norm=max(values), steps=len(values),
                ))  # fmt: skip
    return found


def check_collapse(spread: dict[str, float], t: Thresholds) -> list[dict]:
    return [
        finding(
            "collapsed_features",
            f"the {m} encoder's features barely vary across a validation batch (spread {value:.2e})",
            encoder=m, spread=value, threshold=t.collapse_spread,
        )  # fmt: skip
        for m, value in spread.items()
        if value < t.collapse_spread
    ]


def check_dependency(
    key: str, dep_report: dict[str, Any], counts: Sequence[int] | None, classes: int | None, t: Thresholds
) -> dict | None:
    """A dependency at chance or at the majority class on validation (by its own report.json;
    the class counts are this run's, whose data a dependency must share)."""
    head = scored_head(dep_report)
    val = dep_report.get("metrics", {}).get("val", {}).get(head, {}) if head else {}
    dep_counts = dep_report.get("data", {}).get("class_counts", {}).get("val") or counts
    dead = check_majority(head, val, dep_counts) or check_chance(head, val, chance_level(dep_counts, classes), t)
    if dead is None:
        return None
    return finding(
        "dependency_at_chance",
        f"{key} ({dep_report.get('method')}, {dep_report.get('experiment')}): {dead['message']}",
        key=key, method=dep_report.get("method"), **dead["values"],
    )  # fmt: skip


# ---------------------------------------------------------------- a whole run


@dataclass
class Health:
    """A run's findings, and the checks its records did not allow, with why."""

    findings: list[dict[str, Any]]
    unchecked: dict[str, str]


def assess(
    report: dict[str, Any],
    metrics: Sequence[dict],
    steps: Sequence[dict],
    dependency_reports: dict[str, dict | str],
    *,
    batch_size: int,
    monitor: str = "multi",
    stages: Sequence[dict] | None = None,
    t: Thresholds | None = None,
) -> Health:
    """Every check on one run's records.

    Args:
        report: its report.json (class counts under data.class_counts, feature spread under
            `features`, trained encoders per stage under stages[i].encoders where recorded).
        dependency_reports: config key -> that run's report.json, or why it could not be read.
        batch_size: the batch the method trained with on one process (the contrastive plateau).
        stages: the stages with the encoders each trains, when report.json's lack them.
        t: the thresholds (default: `THRESHOLDS`).
    """
    t = t or THRESHOLDS
    findings, unchecked = [], {}
    head = scored_head(report, monitor)
    val = report.get("metrics", {}).get("val", {}).get(head, {}) if head else {}
    classes = report.get("data", {}).get("classes")
    counts = report.get("data", {}).get("class_counts", {}).get("val")
    if counts is None:
        unchecked["majority_class"] = "report.json has no class counts (data.class_counts: runs before run health)"
    findings.append(check_majority(head, val, counts) if head else None)
    findings.append(check_chance(head, val, chance_level(counts, classes), t) if head else None)
    stages = list(stages if stages is not None else report.get("stages", []))
    contrastive, why = check_contrastive(report.get("method", ""), stages, metrics, steps, batch_size, t)
    findings += contrastive
    if why:
        unchecked["contrastive_plateau"] = why
    for key, dep in dependency_reports.items():
        if isinstance(dep, str):
            unchecked["dependency_at_chance"] = f"{key}: {dep}"
        else:
            findings.append(check_dependency(key, dep, counts, classes, t))
    if "features" in report:
        findings += check_collapse(report["features"], t)
    else:
        unchecked["collapsed_features"] = "report.json has no feature spread (measured since run health)"
    if any("encoders" in s for s in stages):
        findings += check_gradients(stages, metrics, steps, t)
    else:
        unchecked["encoder_not_training"] = (
            "no per-step encoder gradient recorded (runs before run health, whose method logs no gnorm_<m>)"
        )
    return Health([f for f in findings if f is not None], unchecked)


def dependency_reports(dependencies: dict[str, Any], near: Iterable[Path] = ()) -> dict[str, dict | str]:
    """Each dependency's report.json (in the run folder of its checkpoint), or why it cannot be read.

    A path recorded relative to where the run was launched is looked for from there, then under
    each folder in `near` with the path and each of its tails (a results tree copied or moved keeps
    its layout under another root). Committed results keep no checkpoint: the folder is enough.
    """
    out: dict[str, dict | str] = {}
    for key, summary in (dependencies or {}).items():
        recorded = str(summary.get("path", "")) if isinstance(summary, dict) else ""
        if not recorded:
            out[key] = "no path recorded"
            continue
        folder = _dependency_folder(Path(recorded), list(near))
        if folder is None:
            out[key] = f"no run folder with a report.json at {recorded}"
            continue
        try:
            out[key] = folder.read_report()
        except GaalError as err:
            out[key] = err.render()
    return out


def _dependency_folder(recorded: Path, near: list[Path]) -> RunFolder | None:
    folder = recorded.parent if recorded.suffix == ".pt" else recorded
    candidates = [folder]
    if not folder.is_absolute():
        parts = folder.parts
        candidates += [base / Path(*parts[k:]) for base in near for k in range(len(parts))]
    return next((RunFolder(c) for c in candidates if RunFolder(c).file(RunFolder.REPORT).is_file()), None)


def folder_health(
    run: RunFolder, report: dict[str, Any], config: dict[str, Any], t: Thresholds | None = None
) -> Health:
    """A finished run's health: the `health` its report.json records, else computed from its logs.

    A run folder from before run health has no class counts (the majority-class check is not made:
    its balanced-accuracy check still is, at 1 / classes), no feature spread (the collapse check is
    not made) and no list of the encoders each stage trains: that comes from the method's declared
    stages (`Stage.trains`) and the gradient norms the method itself logged (`gnorm_<m>`), so the
    gradient check covers only the methods that log them.

    Args:
        config: the run's config.yaml, as read.
    """
    if isinstance(report.get("health"), list):
        unchecked = report.get("health_unchecked")
        return Health(report["health"], unchecked if isinstance(unchecked, dict) else {})
    steps = run.read_steps()
    data, train = config.get("data") or {}, config.get("train") or {}
    batch = int(data.get("batch_size") or 1) // max(1, int(report.get("world_size") or 1))
    stages = report.get("stages") or []
    if stages and not any("encoders" in s for s in stages):
        stages = _declared_encoders(report, config, stages, steps)
    return assess(
        report,
        run.read_metrics(),
        steps,
        dependency_reports(report.get("dependencies") or {}, run.path.resolve().parents),
        batch_size=max(1, batch),
        monitor=str(train.get("monitor", "multi")),
        stages=stages,
        t=t,
    )


def _declared_encoders(
    report: dict[str, Any], config: dict[str, Any], stages: list[dict], steps: Sequence[dict]
) -> list[dict]:
    """An older run's stages with the encoders each trains: those its declared `trains` prefixes
    cover and whose gradient norm the method logged (`stages` unchanged when the config no longer
    validates or the stages do not line up)."""
    try:
        cfg = config_from_mapping(config, "config.yaml")
        declared = method_spec(cfg.method).cls.stages(cfg.method_settings(), cfg.train.epochs)
    except (GaalError, KeyError, ValueError, TypeError):
        return stages
    if len(declared) != len(stages):
        return stages
    logged = {m for m in MODALITIES if any(f"gnorm_{m}" in s for s in steps)}
    if not logged:
        return stages
    out = []
    for entry, stage in zip(stages, declared):
        covers = [m for m in sorted(logged) if stage.steps and (not stage.trains or any(
            f"encoders.{m}.".startswith(p) or p.startswith(f"encoders.{m}.") for p in stage.trains
        ))]  # fmt: skip
        out.append({**entry, "encoders": covers})
    return out


def warning_text(findings: Sequence[dict[str, Any]], where: str) -> str:
    """The console paragraph at the end of a run with findings."""
    lines = "\n".join(f"  - {f['name']}: {f['message']}" for f in findings)
    return (
        f"warning: this run may have learned nothing ({len(findings)} run-health finding"
        f"{'s' * (len(findings) > 1)}, also in {where} under 'health'):\n{lines}\n"
        "Its numbers are what the run produced; read them as those of a dead run until the cause is found."
    )
