"""Run health: named findings that say a head of a run learned nothing, for every method, in one place.

A finished run can look like any other and still be dead: a head answers the majority class, an
encoder never received a gradient, a teacher it distilled from was at chance. Each check here is
a pure function of what a run records (report.json, metrics.jsonl, steps.jsonl, its dependencies'
report.json), so the engine runs them at the end of every run (console warning + report.json
`health`) and `gaal report` runs them again on every run folder, old or new, with today's
thresholds. The thresholds are in one place (`Thresholds`), each with why it is where it is:
the per-head ones are tests that account for the test size (an exact binomial test against the
majority rate, a binomial bound around chance), the gradient and collapse ones are fractions of
what a randomly initialised encoder measures.

Every number a table prints is checked: each head the run reports on the test split (Multi,
Image, Tabular; the one modality read at test for a test-time-missing run). A finding is a plain
dict `{"name", "message", "values"}`, `values` holding the numbers that triggered it and the
`head` or `encoder` it concerns (none: the whole run). A label-free stage that ended on its
plateau (TIP's or MMCL's contrastive pretraining) is a note, milder than a finding: the heads
trained after it may still have learned, and the per-head checks say whether they did. A check
whose inputs a run did not record (an older run folder: no class counts, no random-initialisation
reference) is not a finding: it is listed under `unchecked` with the reason, so "no finding" is
never claimed for a check that was not made.

The measurements the engine adds so that every method is checkable (not only those that log
their own gradient norms) are here too: `GradientFlow` (the gradient each encoder receives,
summed over every backward pass of a step, on the device: no extra synchronisation), the
spread of each encoder's features over one validation batch beside that of a randomly
initialised copy, and the class counts per split.
"""

from __future__ import annotations

import copy
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
HEADS = ("multi", *MODALITIES)


@dataclass(frozen=True)
class Thresholds:
    """Where each check draws its line."""

    # the one-sided level of the per-head tests: a head is "not above the majority rate" unless an
    # exact binomial test on the test split rejects that its accuracy is at most that rate, and "at
    # chance" unless its balanced accuracy clears 1 / classes by the binomial bound below
    alpha: float = 0.05
    # a contrastive (InfoNCE) loss within this fraction of ln(batch) is on its plateau: at ln(batch)
    # the similarity matrix says nothing about which pair belongs together. The committed plateau
    # runs sit within 0.4 % of it; 2 % below (0.1 nats at batch 128) means the positive pair already
    # gets about 10 % more probability than a uniform guess
    contrastive_fraction: float = 0.02
    # features whose spread over a validation batch (mean per-dimension std / RMS of the features) is
    # below this fraction of a randomly initialised copy's (same batch) are one point for every
    # sample: nothing downstream can tell samples apart. Trained encoders of the committed runs
    # spread 0.38-0.62, about as much as a random initialisation
    collapse_fraction: float = 0.01
    # an encoder whose gradient norm, on every step of a stage's last epoch, is below this fraction
    # of the norm it received on the run's first step (a randomly initialised encoder's gradient, or
    # the loaded weights') has stopped training. Over the 595 (stage, encoder) pairs of the committed
    # runs that train, the smallest last-epoch maximum is 0.027 of the first step's
    gradient_fraction: float = 1e-3


THRESHOLDS = Thresholds()

#: every finding, with the one line that explains it (the report's legend and the README use these)
CHECKS = {
    "majority_class": "a head's test accuracy not above the test split's majority-class rate (one-sided exact "
    "binomial test at 0.05)",
    "chance_balanced_accuracy": "a head's test balanced accuracy not above chance (1 / classes) by more than a "
    "one-sided 95 % binomial bound for the test size",
    "dependency_at_chance": "a run it depends on (teacher, fixed model, initial weights) fails either check above",
    "collapsed_features": "an encoder's features vary across a validation batch less than 1 % as much as a randomly "
    "initialised copy's",
    "encoder_not_training": "an encoder its stage trains received, on every step of the stage's last epoch, less "
    "than 1/1000 of the gradient it received on the run's first step",
}
#: the milder marks: something stalled, but the heads may still have learned (the checks above say)
NOTES = {
    "contrastive_plateau": "a contrastive pretraining stage still within 2 % of ln(batch) at its end",
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
def feature_spread(method: Any, batch: Any, modalities: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per encoder the method reads, the spread of its features over one batch (the mean over
    dimensions of the standard deviation across samples, over the features' root mean square; 0:
    every sample maps to one point, or every feature is zero), and the same for a randomly
    initialised copy of it (every layer's `reset_parameters`, a fixed generator seed): the
    reference the collapse check measures against.

    Returns:
        (trained spreads, randomly initialised spreads), each {modality: spread}.
    """
    method.eval()
    inputs = {"image": batch.image, "tabular": batch.tabular}
    trained, initial = {}, {}
    for m in modalities:
        encoder = getattr(method.encoders, m)
        if inputs[m].shape[0] < 2:
            continue
        trained[m] = _spread(encoder(inputs[m]))
        initial[m] = _spread(_randomly_initialised(encoder)(inputs[m]))
    return trained, initial


def _spread(features: torch.Tensor) -> float:
    features = features.float().flatten(1)
    scale = features.square().mean().sqrt().item()
    return round(features.std(0).mean().item() / scale, 6) if scale > 0 else 0.0


def _randomly_initialised(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of `encoder` with every layer that can re-initialise itself re-initialised (PyTorch's
    default initialisation), drawn from a forked generator so that the run's streams do not move."""
    fresh = copy.deepcopy(encoder).eval()
    device = next(fresh.parameters(), torch.empty(0)).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for layer in fresh.modules():
            if callable(getattr(layer, "reset_parameters", None)):
                layer.reset_parameters()
    return fresh


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


# ---------------------------------------------------------------- the checks (pure)


def scored_head(report: dict[str, Any], monitor: str = "multi") -> str | None:
    """The head a table scores: the one modality read at test, else the monitored head."""
    test = report.get("metrics", {}).get("test", {})
    inputs = report.get("inputs_at_test") or []
    if len(inputs) == 1 and inputs[0] in test:
        return inputs[0]
    if monitor in test:
        return monitor
    return next(iter(test), None)


def printed_heads(report: dict[str, Any]) -> list[str]:
    """The heads whose test numbers a table prints: the one modality read at test, else every head."""
    test = report.get("metrics", {}).get("test", {})
    inputs = report.get("inputs_at_test") or []
    if len(inputs) == 1:
        return [inputs[0]] if inputs[0] in test else []
    return [h for h in HEADS if h in test] + [h for h in test if h not in HEADS]


def finding(name: str, message: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "message": message, "values": values}


#: the test metrics whose numbers a per-head finding speaks about (accuracy against the majority rule;
#: the class-averaged ones against chance); every other finding speaks about all of a head's numbers
FINDING_METRICS = {"majority_class": ("acc",), "chance_balanced_accuracy": ("bal_acc", "f1")}


def affected_heads(found: dict[str, Any], heads: Sequence[str], metric: str | None = None) -> list[str]:
    """The heads a finding concerns (of `heads`), for the numbers of `metric` (any when None): its
    own head; an encoder's head and the fused one; else all."""
    if metric is not None and metric not in FINDING_METRICS.get(found.get("name", ""), (metric,)):
        return []
    values = found.get("values") or {}
    if "head" in values:
        return [values["head"]] if values["head"] in heads else []
    if "encoder" in values:
        return [h for h in heads if h in (values["encoder"], "multi")]
    return list(heads)


def check_majority(head: str, test: dict[str, float], counts: Sequence[int] | None, t: Thresholds) -> dict | None:
    """Not above the majority-class rate: the exact one-sided binomial test (scipy.stats.binomtest)
    that the head's accuracy on the n test samples exceeds the rate of always answering the most
    frequent class does not reject at `alpha` (so a head a few samples above that rate, on a small
    test split, is not counted as having learned)."""
    from scipy import stats

    n = sum(counts or ())
    if not n or not isinstance(test.get("acc"), int | float) or max(counts) == n:
        return None
    majority, right = max(counts) / n, round(test["acc"] * n)
    p = float(stats.binomtest(right, n, majority, alternative="greater").pvalue)
    if p <= t.alpha:
        return None
    return finding(
        "majority_class",
        f"the {head} head's test accuracy {test['acc']:.4f} ({right} of {n}) is not above the majority-class rate "
        f"{majority:.4f} (one-sided binomial p = {p:.3g})",
        head=head, acc=round(test["acc"], 6), majority_rate=round(majority, 6), n=n, p=round(p, 6),
    )  # fmt: skip


def chance_bound(counts: Sequence[int], alpha: float) -> tuple[float, float]:
    """(chance, bound): 1 / K over the K classes present, and how far above it a head answering
    without regard to the label still reaches with probability alpha. Each class's recall is then
    binomial with variance at most 1 / (4 n_c), so the balanced accuracy's standard deviation is at
    most sqrt(sum_c 1 / (4 n_c)) / K; the bound is z_{1-alpha} times that (normal approximation)."""
    from scipy import stats

    present = [c for c in counts if c > 0]
    sd = math.sqrt(sum(1 / (4 * c) for c in present)) / len(present)
    return 1 / len(present), float(stats.norm.ppf(1 - alpha)) * sd


def check_chance(head: str, test: dict[str, float], counts: Sequence[int] | None, t: Thresholds) -> dict | None:
    bal = test.get("bal_acc")
    if not counts or sum(1 for c in counts if c > 0) < 2 or not isinstance(bal, int | float):
        return None
    chance, bound = chance_bound(counts, t.alpha)
    if bal > chance + bound:
        return None
    return finding(
        "chance_balanced_accuracy",
        f"the {head} head's test balanced accuracy {bal:.4f} is at chance ({chance:.4f}, + {bound:.4f} for "
        f"{sum(counts)} test samples)",
        head=head, bal_acc=round(bal, 6), chance=round(chance, 6), bound=round(bound, 6),
    )  # fmt: skip


def check_heads(report: dict[str, Any], counts: Sequence[int] | None, t: Thresholds) -> tuple[list[dict], str]:
    """The majority-class and chance checks on every printed head's test metrics, and why the
    chance check assumed equal classes ("" when the counts were known)."""
    test = report.get("metrics", {}).get("test", {})
    assumed = ""
    if counts is None:
        n, classes = (report.get("data", {}).get("counts") or {}).get("test"), report.get("data", {}).get("classes")
        if isinstance(n, int) and isinstance(classes, int) and classes > 1:
            assumed = f"no test class counts: the chance bound assumes {classes} equal classes of {n} samples"
            chance_counts = [n // classes] * classes
        else:
            chance_counts = None
    else:
        chance_counts = counts
    found = []
    for head in printed_heads(report):
        found += [check_majority(head, test[head], counts, t), check_chance(head, test[head], chance_counts, t)]
    return [f for f in found if f is not None], assumed


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
        The notes, and why the check could not be made (None when it was).
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


def _gradient(step: dict, m: str) -> float | None:
    value = step.get(f"grad_{m}", step.get(f"gnorm_{m}"))
    return value if isinstance(value, int | float) else None


def check_gradients(
    stages: Sequence[dict], metrics: Sequence[dict], steps: Sequence[dict], t: Thresholds
) -> list[dict]:
    """Each encoder a stage trains whose gradient (`grad_<m>`; older runs: the method's own
    `gnorm_<m>`) is, on every step of the stage's last epoch, 0 or below `gradient_fraction` of the
    gradient it received on the run's first step that gave it one (its random initialisation's)."""
    found = []
    for stage in stages:
        epochs = stage_epochs(stage, metrics)
        if not epochs:
            continue
        last = [s for s in steps if s.get("epoch") == epochs[-1]]
        for m in stage.get("encoders", ()):
            values = [v for v in (_gradient(s, m) for s in last) if v is not None]
            first = next((v for v in (_gradient(s, m) for s in steps) if v), 0.0)
            if not values or (max(values) > 0 and max(values) >= t.gradient_fraction * first):
                continue
            found.append(finding(
                "encoder_not_training",
                f"stage {stage['name']} trains the {m} encoder, but its gradient norm is at most {max(values):.3g} "
                f"on every step of epoch {epochs[-1]}, against {first:.3g} on its first step",
                stage=stage["name"], encoder=m, epoch=epochs[-1], max_grad_norm=max(values), first_grad_norm=first,
                steps=len(values),
            ))  # fmt: skip
    return found


def check_collapse(spread: dict[str, float], initial: dict[str, float], t: Thresholds) -> list[dict]:
    return [
        finding(
            "collapsed_features",
            f"the {m} encoder's features barely vary across a validation batch (spread {value:.2e}, a randomly "
            f"initialised copy's {initial[m]:.2e})",
            encoder=m, spread=value, random_init_spread=initial[m], fraction=t.collapse_fraction,
        )  # fmt: skip
        for m, value in spread.items()
        if m in initial and value < t.collapse_fraction * initial[m]
    ]


def check_dependency(key: str, dep_report: dict[str, Any], counts: Sequence[int] | None, t: Thresholds) -> dict | None:
    """A dependency whose scored head fails the majority or chance check on its own test split (its
    own class counts, else this run's, whose data a dependency must share)."""
    head = scored_head(dep_report)
    test = dep_report.get("metrics", {}).get("test", {}).get(head, {}) if head else {}
    dep_counts = dep_report.get("data", {}).get("class_counts", {}).get("test") or counts
    dead = check_majority(head, test, dep_counts, t) or check_chance(head, test, dep_counts, t)
    if dead is None:
        return None
    values = {k: v for k, v in dead["values"].items() if k != "head"}
    return finding(
        "dependency_at_chance",
        f"{key} ({dep_report.get('method')}, {dep_report.get('experiment')}): {dead['message']}",
        key=key, method=dep_report.get("method"), dependency_head=head, **values,
    )  # fmt: skip


# ---------------------------------------------------------------- a whole run


@dataclass
class Health:
    """A run's findings, its notes (milder marks), and the checks its records did not allow, with why."""

    findings: list[dict[str, Any]]
    unchecked: dict[str, str]
    notes: list[dict[str, Any]]


def assess(
    report: dict[str, Any],
    metrics: Sequence[dict],
    steps: Sequence[dict],
    dependency_reports: dict[str, dict | str],
    *,
    batch_size: int,
    stages: Sequence[dict] | None = None,
    test_counts: Sequence[int] | None = None,
    t: Thresholds | None = None,
) -> Health:
    """Every check on one run's records.

    Args:
        report: its report.json (class counts under data.class_counts, feature spreads under
            `features` and `features_random_init`, trained encoders per stage under
            stages[i].encoders where recorded).
        dependency_reports: config key -> that run's report.json, or why it could not be read.
        batch_size: the batch the method trained with on one process (the contrastive plateau).
        stages: the stages with the encoders each trains, when report.json's lack them.
        test_counts: the test split's class counts when report.json lacks them (another run on
            the same data recorded them).
        t: the thresholds (default: `THRESHOLDS`).
    """
    t = t or THRESHOLDS
    unchecked = {}
    counts = report.get("data", {}).get("class_counts", {}).get("test") or test_counts
    if counts is None:
        unchecked["majority_class"] = "no test class counts (report.json's data.class_counts: runs before run health)"
    findings, assumed = check_heads(report, counts, t)
    if assumed:
        unchecked["chance_balanced_accuracy"] = assumed
    stages = list(stages if stages is not None else report.get("stages", []))
    notes, why = check_contrastive(report.get("method", ""), stages, metrics, steps, batch_size, t)
    if why:
        unchecked["contrastive_plateau"] = why
    for key, dep in dependency_reports.items():
        if isinstance(dep, str):
            unchecked["dependency_at_chance"] = f"{key}: {dep}"
        else:
            findings.append(check_dependency(key, dep, counts, t))
    if "features_random_init" in report:
        findings += check_collapse(report.get("features", {}), report["features_random_init"], t)
    else:
        unchecked["collapsed_features"] = "no randomly initialised reference spread (recorded since issue 28)"
    if any("encoders" in s for s in stages):
        findings += check_gradients(stages, metrics, steps, t)
    else:
        unchecked["encoder_not_training"] = (
            "no per-step encoder gradient recorded (runs before run health, whose method logs no gnorm_<m>)"
        )
    return Health([f for f in findings if f is not None], unchecked, notes)


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
    run: RunFolder,
    report: dict[str, Any],
    config: dict[str, Any],
    t: Thresholds | None = None,
    test_counts: Sequence[int] | None = None,
) -> Health:
    """A finished run's health, computed from its records with today's checks (the `health` its
    report.json holds was computed by the code of its day).

    A run folder from before run health has no class counts (the majority-class check is made only
    with `test_counts` from another run on the same data; the chance check then assumes equal
    classes), no feature spreads (the collapse check is not made) and no list of the encoders each
    stage trains: that comes from the method's declared stages (`Stage.trains`) and the gradient
    norms the method itself logged (`gnorm_<m>`), so the gradient check covers only the methods
    that log them.

    Args:
        config: the run's config.yaml, as read.
        test_counts: the test split's class counts, where report.json lacks them.
    """
    steps = run.read_steps()
    data = config.get("data") or {}
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
        stages=stages,
        test_counts=test_counts,
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


def warning_text(health: Health, where: str) -> str:
    """The console paragraph at the end of a run with findings or notes."""
    lines = "\n".join(f"  - {f['name']}: {f['message']}" for f in health.findings + health.notes)
    if not health.findings:
        return f"note: a stage of this run stalled (also in {where} under 'health_notes'):\n{lines}"
    count = len(health.findings)
    return (
        f"warning: a head of this run may have learned nothing ({count} run-health finding{'s' * (count > 1)}, "
        f"also in {where} under 'health'):\n{lines}\n"
        "Its numbers are what the run produced; read those of the heads named as a dead run's until the cause is found."
    )
