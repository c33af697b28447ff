"""`gaal check-method NAME`: the checks every method passes, run on any one, built-in or plugin.

A method from another package (gaal_cli.methods.plugins) is registered exactly like a built-in; these
are the checks that tell whether it also behaves like one, on the embedded dataset at a small
size, each a pass or a failure with its reason:

- trains: a run finishes (a run whose outputs turn NaN or infinite stops with an error, and
  fails here), its metrics finite, its predictions file kept;
- resumes: a run interrupted after epoch 1 (`engine.train(interrupt_after=1)`, as Ctrl-C between
  epochs) and resumed in a fresh method object, as a new process would, ends with exactly the
  numbers of the uninterrupted run: metrics, best epoch, stages, every epoch and step record and
  the best checkpoint's weights. Whatever the method keeps outside its state_dict and
  `resume_state` is lost here;
- repeats: a second run of the same config and seed gives the same records and weights, bit for
  bit (`quick`: the interrupted run's epochs before the interruption against the first run's);
- stages: the run trained every stage of its plan (`Method.stages`), in order;
- missing modality: the trained run, loaded from its checkpoint, predicts with either modality
  missing: the missing head is None, the present one unchanged, and the fused head either None
  (the method claims no prediction without that modality) or one row of finite logits per sample;
- healthy: run health (gaal_cli/training/health.py) finds nothing that concerns the head the method is
  scored on (the fused head, or the one modality read at test). At the `quick` size no method learns
  above chance, so there only the checks that do not need learning count (gradients reaching
  the encoders, features not collapsed); the reason says which were left out.

A method that needs another run (a teacher, a fixed model: `dependency_fields`) gets one trained
here first, a concat run of the same size, unless the overrides name it. The built-ins' tests
run these same checks (tests/test_resume.py, tests/test_method_smoke.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gaal_cli.config import Config, load_config
from gaal_cli.foundation.display import console
from gaal_cli.methods.registry import method_spec
from gaal_cli.runs.folder import RunFolder, load_state
from gaal_cli.training.engine import plan_method_stages, train
from gaal_cli.training.health import affected_heads, scored_head
from gaal_cli.training.trained_run import TrainedRun

MODALITIES = ("image", "tabular")

#: the embedded dataset and model at their smallest: runs of seconds on a CPU
BASE = [
    "data.name=synthetic",
    "data.image_size=16",
    "data.batch_size=32",
    "model.feature_dim=16",
    "model.tabular_hidden=[16]",
    "train.device=cpu",
]
#: where the built-ins learn above chance within the epochs (4 classes: with 10, the image
#: alone stays at chance), so run health can judge whether a method learned
SMALL = [
    *BASE,
    "data.synthetic.n_train=480",
    "data.synthetic.n_val=160",
    "data.synthetic.n_test=96",
    "data.synthetic.num_classes=4",
    "train.epochs=4",
]
#: `--quick` (and the test suite): where no method learns above chance, in a second or two a run
QUICK = [*BASE, "data.synthetic.n_train=64", "data.synthetic.n_val=48", "data.synthetic.n_test=48", "train.epochs=3"]

#: health findings that say a run learned nothing: not judged at the quick size, where every
#: method is at chance after 3 epochs of 64 samples
LEARNING_FINDINGS = ("majority_class", "chance_balanced_accuracy", "dependency_at_chance")


@dataclass(frozen=True)
class Check:
    """One check's verdict: its name, whether it passed, and why."""

    name: str
    passed: bool
    reason: str


def check_method(
    name: str,
    folder: str | Path,
    *,
    quick: bool = False,
    overrides: Sequence[str] = (),
    interrupt_after: int = 1,
) -> list[Check]:
    """Train method `name` in `folder` (several runs) and check it as every built-in is checked.

    Args:
        quick: the smaller size, and `repeats` compared over the epochs before the interruption
            rather than a third whole run.
        overrides: `--set` strings applied last (a method's settings, a dependency, train.threads).
        interrupt_after: the epoch after which the `resumes` run is interrupted.

    Returns:
        The checks in order: trains, resumes, repeats, stages, missing modality, healthy.

    Raises:
        GaalError: bad input: an unknown method, a bad override, a plugin that fails to import.
        KeyError: an unknown method name (the message lists the valid ones).
    """
    folder = Path(folder)
    base = [*(QUICK if quick else SMALL), f"method={name}"]
    needs = dependencies_to_train(name, overrides)
    config = load_config(overrides=[*base, *[f"methods.{name}.{f}={folder / 'dependency'}" for f in needs], *overrides])
    with quiet():
        if needs:
            failed = attempt(lambda: train(load_config(overrides=[*base, "method=concat"]), folder / "dependency"))
            if failed:
                return not_run(f"its dependency ({', '.join(needs)}: a concat run) failed to train: {failed}")
        return run_checks(config, folder, quick, interrupt_after)


def run_checks(config: Config, folder: Path, quick: bool, interrupt_after: int) -> list[Check]:
    """The checks on `config` (method, size and dependencies resolved), runs written under `folder`."""
    whole_dir, resumed_dir = folder / "run", folder / "resumed"
    report: dict[str, Any] = {}
    failed = attempt(lambda: report.update(train(config, whole_dir, show_progress=False)))
    if failed:
        return not_run(f"training failed: {failed}")
    checks = [trains(report)]
    before, resumed = interrupted_then_resumed(config, resumed_dir, interrupt_after)
    checks.append(resumes(resumed, whole_dir, resumed_dir, report) if isinstance(resumed, dict) else resumed)
    if quick:
        checks.append(repeats_first_epochs(before, whole_dir, interrupt_after))
    else:
        checks.append(repeats(config, whole_dir, folder / "again", report))
    checks.append(reaches_stages(config, report))
    checks.append(predicts_from_checkpoint(whole_dir))
    checks.append(healthy(report, quick))
    return checks


# ---------------------------------------------------------------- the runs


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The engine's console silent while the checks train (their verdicts are the output)."""
    was, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = was


def attempt(step: Callable[[], Any]) -> str | None:
    """Run `step`; what went wrong as one line, or None. Any exception is the method's failure."""
    try:
        step()
    except Exception as err:  # the method under check is third-party code: its failure is a verdict
        text = str(err).strip()
        return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    return None


def not_run(reason: str) -> list[Check]:
    return [Check("trains", False, reason)] + [
        Check(name, False, "not checked: the method did not train")
        for name in ("resumes", "repeats", "stages", "missing modality", "healthy")
    ]


def dependencies_to_train(name: str, overrides: Sequence[str]) -> list[str]:
    """The method's dependency settings that the overrides do not name (each gets a run here)."""
    fields = method_spec(name).settings.dependency_fields
    return [f for f in fields if not any(o.startswith(f"methods.{name}.{f}=") for o in overrides)]


def interrupted_then_resumed(
    config: Config, folder: Path, after: int
) -> tuple[dict[str, list], dict[str, Any] | Check]:
    """Train interrupted after epoch `after`, then resume. Returns the records written before the
    interruption and the resumed run's report (a failed Check where it could not be made)."""
    run = RunFolder(folder)
    try:
        failed = attempt(lambda: train(config, folder, show_progress=False, interrupt_after=after))
    except KeyboardInterrupt:
        if [r["epoch"] for r in run.read_metrics()][-1:] != [after]:
            raise  # not the engine's interruption after that epoch: the user's Ctrl-C
    else:
        why = f"the run to interrupt failed: {failed}" if failed else f"the run ended before epoch {after}"
        return {}, Check("resumes", False, why)
    before = {"metrics": timeless(run.read_metrics()), "steps": run.read_steps()}
    report: dict[str, Any] = {}
    failed = attempt(lambda: report.update(train(config, folder, show_progress=False)))
    if failed:
        return before, Check("resumes", False, f"resuming after epoch {after} failed: {failed}")
    return before, report


def timeless(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch records without their wall-clock seconds (the one field two runs may not share)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first leaf where `a` and `b` differ, as 'path: a vs b', or None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path or 'records'}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return None if same else f"{path}: the tensors differ"
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def run_record(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """What two runs of one config must share: report numbers, epoch and step records, weights."""
    run = RunFolder(folder)
    return {
        "metrics": report["metrics"],
        "best_epoch": report["best_epoch"],
        "stages": report["stages"],
        "metrics.jsonl": timeless(run.read_metrics()),
        "steps.jsonl": run.read_steps(),
        "checkpoint": load_state(run.file(RunFolder.CHECKPOINT))["model"],
    }


# ---------------------------------------------------------------- the checks


def trains(report: dict[str, Any]) -> Check:
    values = [v for head in report["metrics"]["test"].values() for v in head.values()]
    if not all(isinstance(v, float | int) and math.isfinite(v) for v in values):
        return Check("trains", False, "a test metric is not a finite number")
    if not report.get("predictions"):
        return Check("trains", False, "the run kept no predictions file (gaal compare and gaal report need it)")
    test = report["metrics"]["test"]
    head = "multi" if "multi" in test else next(iter(test))
    return Check("trains", True, f"{report['epochs_run']} epochs; test {head} acc {test[head]['acc']:.4f}")


def resumes(resumed: dict[str, Any], whole_dir: Path, resumed_dir: Path, whole: dict[str, Any]) -> Check:
    diff = difference(run_record(resumed_dir, resumed), run_record(whole_dir, whole))
    if diff:
        return Check("resumes", False, f"the resumed run differs from the uninterrupted one at {diff}")
    return Check("resumes", True, "interrupted and resumed, identical to the uninterrupted run")


def repeats(config: Config, whole_dir: Path, again_dir: Path, whole: dict[str, Any]) -> Check:
    again: dict[str, Any] = {}
    failed = attempt(lambda: again.update(train(config, again_dir, show_progress=False)))
    if failed:
        return Check("repeats", False, f"the second run failed: {failed}")
    diff = difference(run_record(again_dir, again), run_record(whole_dir, whole))
    if diff:
        return Check("repeats", False, f"a second run of the same seed differs at {diff}")
    return Check("repeats", True, "a second run of the same seed is identical, bit for bit")


def repeats_first_epochs(before: dict[str, list], whole_dir: Path, epochs: int) -> Check:
    """`quick`: the interrupted run (a second run of the same seed) against the first, up to the
    interruption."""
    if not before:
        return Check("repeats", False, "not checked: the interrupted run left no records")
    run = RunFolder(whole_dir)
    first = {
        "metrics": [r for r in timeless(run.read_metrics()) if r["epoch"] <= epochs],
        "steps": [r for r in run.read_steps() if r["epoch"] <= epochs],
    }
    diff = difference(before, first)
    if diff:
        return Check("repeats", False, f"a second run of the same seed differs at {diff}")
    return Check("repeats", True, f"a second run of the same seed is identical through epoch {epochs} (--quick)")


def reaches_stages(config: Config, report: dict[str, Any]) -> Check:
    plan = [(p.name, p.start) for p in plan_method_stages(config)]
    ran = [(s["name"], s["start_epoch"]) for s in report["stages"]]
    said = ", ".join(f"{n} from epoch {e}" for n, e in plan)
    if ran != plan:
        got = ", ".join(f"{n} from epoch {e}" for n, e in ran) or "none"
        return Check("stages", False, f"planned {said}; trained {got}")
    return Check("stages", True, f"trained every planned stage ({said})")


def predicts_from_checkpoint(folder: Path) -> Check:
    """The trained run, loaded as `gaal eval` loads it, predicts with either modality missing."""
    with torch.no_grad():
        run = TrainedRun.load(folder)
        data = run.data()
        method = run.method(data.schema.field_lengths, data.num_classes).eval()
        batch = data.test[list(range(min(8, len(data.test))))]
        return missing_modality(method, batch, data.num_classes)


def missing_modality(method: Any, batch: Any, num_classes: int) -> Check:
    """`method` (in eval mode) predicts `batch` with all it reads, and with either modality missing.

    A unimodal method reports its head as multi and under its own modality. A two-modality
    method, with one missing: the missing head is None, the present head is what it was with
    both, and the fused head is None (no claim) or finite logits of the right shape.
    """
    uses = method.modalities
    n = len(batch.label)
    try:
        with torch.no_grad():
            full = method.predict(*(getattr(batch, m) if m in uses else None for m in MODALITIES))
            problem = shape_problem(full, n, num_classes, "with every input")
            if problem:
                return Check("missing modality", False, problem)
            if len(uses) == 1:
                return unimodal_verdict(full, uses)
            claims = []
            for missing in MODALITIES:
                kept = "tabular" if missing == "image" else "image"
                p = method.predict(*(None if m == missing else getattr(batch, m) for m in MODALITIES))
                if getattr(p, missing) is not None:
                    return Check("missing modality", False, f"without the {missing}, its {missing} head is not None")
                problem = shape_problem(p, n, num_classes, f"without the {missing}")
                if problem:
                    return Check("missing modality", False, problem)
                if getattr(full, kept) is not None and not torch.allclose(getattr(p, kept), getattr(full, kept)):
                    return Check("missing modality", False, f"without the {missing}, its {kept} head changes")
                claims.append(f"{kept} alone: {'fused prediction' if p.multi is not None else 'no fused prediction'}")
    except Exception as err:  # third-party code: a crash with a modality missing is the verdict
        return Check("missing modality", False, f"predicting raised {type(err).__name__}: {err}")
    return Check("missing modality", True, "; ".join(claims))


def shape_problem(p: Any, n: int, c: int, when: str) -> str | None:
    """What is wrong with the heads of predictions `p` (None if nothing)."""
    if when == "with every input" and p.multi is None:
        return "with every input, its fused (multi) head is None"
    for head, logits in zip(("multi", *MODALITIES), p, strict=True):
        if logits is None:
            continue
        if tuple(logits.shape) != (n, c):
            return f"{when}, its {head} head has shape {tuple(logits.shape)}, expected {(n, c)}"
        if not torch.isfinite(logits).all():
            return f"{when}, its {head} head has non-finite logits"
    return None


def unimodal_verdict(full: Any, uses: tuple[str, ...]) -> Check:
    (own,) = uses
    other = "tabular" if own == "image" else "image"
    if getattr(full, other) is not None or not torch.equal(getattr(full, own), full.multi):
        return Check("missing modality", False, f"a {own}-only method must report its head as multi and as {own}")
    return Check("missing modality", True, f"reads only the {own}: nothing to drop")


def healthy(report: dict[str, Any], quick: bool) -> Check:
    scored = scored_head(report)
    findings = [f for f in report.get("health") or [] if affected_heads(f, [scored])]
    ignored = [f["name"] for f in findings if quick and f["name"] in LEARNING_FINDINGS]
    counted = [f for f in findings if f["name"] not in ignored]
    if counted:
        return Check("healthy", False, "; ".join(f"{f['name']}: {f['message']}" for f in counted))
    unchecked = sorted(report.get("health_unchecked") or {})
    notes = ["no run-health finding"]
    if report.get("health_notes"):  # milder: a stage stalled, the scored head still learned
        notes.append("note: " + ", ".join(sorted({n["name"] for n in report["health_notes"]})))
    if quick:
        notes.append(f"whether it learned is not judged at --quick size (left out: {', '.join(ignored) or 'none'})")
    if unchecked:
        notes.append(f"not checkable from its records: {', '.join(unchecked)}")
    return Check("healthy", True, "; ".join(notes))
