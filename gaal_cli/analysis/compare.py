"""Whether a difference between two methods is real: paired comparisons of runs.

Two runs of the same seed on the same data share their split and test samples, so their
difference is measured sample by sample (their predictions files, gaal_cli.runs.predictions_file)
and the seeds are paired by seed number. `gaal compare A B` compares two runs or two run groups
(a folder of seed folders); `gaal report` compares each row of a table with a reference row
(`paired_cell`). The statistics are gaal_cli.analysis.stats's: the paired difference with its test set's
variance where both sides kept their predictions (which also tell whether every seed shared one test
set), the paired t test on per-seed metrics where one did not. Alignment is linear in the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gaal_cli.analysis.provenance_groups import UNRECORDED, provenance_columns
from gaal_cli.analysis.stats import METRICS as STAT_METRICS
from gaal_cli.analysis.stats import PER_SEED, SHARED, PairedDifference, paired_difference, paired_t, seeds_needed
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.folder import RunFolder, finished_runs
from gaal_cli.runs.predictions_file import Predictions, align
from gaal_cli.runs.run_predictions import check_pairable, read_run_predictions

#: the metrics a paired comparison can be made on: report.json's name -> gaal_cli.analysis.stats's
PAIRED_METRICS = {"acc": "accuracy", "bal_acc": "balanced_accuracy"}
#: the level of `gaal compare`'s lines (each on its own: not corrected for the several lines)
ALPHA = 0.05


def predictions_of(folder: str | Path) -> Predictions:
    """A finished run's predictions file, read and checked against the run (gaal_cli.runs.run_predictions).

    Raises:
        GaalError: the run has none (says how to write it), it is not a valid predictions file,
            or it is not the run's (another run's, metrics that differ, non-finite logits).
    """
    run = RunFolder(folder)
    file = run.file(RunFolder.PREDICTIONS)
    if not file.exists():
        raise GaalError(
            f"has no {RunFolder.PREDICTIONS} (a run trained before runs kept their test predictions); "
            f"write it from the run's checkpoint with: gaal eval {run.path} --write-predictions",
            source=str(run.path),
        )
    return read_run_predictions(run)


def run_group(path: str | Path) -> dict[int, RunFolder]:
    """The finished runs a path names, by seed: a run folder (one seed) or a folder of them.

    Raises:
        GaalError: no finished run there, or two runs of the same seed (not one group).
    """
    path = Path(path)
    run = RunFolder(path)
    runs = [run] if run.done else finished_runs(path) if path.is_dir() else []
    if not runs:
        state = run.state() if run.holds_run else "no finished run at or below it"
        raise GaalError(f"expected a finished run or a folder of them; found {state}", source=str(path))
    by_seed: dict[int, RunFolder] = {}
    for one in runs:
        seed = one.read_report().get("seed")
        if not isinstance(seed, int):
            raise GaalError("has no integer 'seed'", source=str(one.file(RunFolder.REPORT)), field="seed")
        if seed in by_seed:
            raise GaalError(
                f"holds two runs of seed {seed} ({by_seed[seed].path} and {one.path}); expected one run per seed: "
                "name a narrower folder",
                source=str(path),
            )
        by_seed[seed] = one
    return dict(sorted(by_seed.items()))


def same_test_set(files: Sequence[Predictions]) -> bool:
    """Whether every file holds the same sample ids with the same labels (in any order): one test
    set shared by every seed (a prepared dataset's fixed split). Files of different samples, or
    of the same ids with other labels (the embedded set numbers each seed's own samples from 0),
    are a new test set per seed. Linear in the samples."""
    first = dict(zip(files[0].ids, files[0].labels.tolist()))
    for other in files[1:]:
        if len(other.ids) != len(first) or any(first.get(i, -1) != y for i, y in zip(other.ids, other.labels.tolist())):
            return False
    return True


def sample_difference(pairs: Sequence[tuple[Predictions, Predictions]], head: str, metric: str) -> PairedDifference:
    """`head`'s paired difference A - R on `metric` ("acc" or "bal_acc") over the seeds' pairs of
    predictions files (stats.paired_difference): the samples of a pair matched by id (`align`), and,
    where every seed shares one test set (`same_test_set`), every seed's samples in the first's order.

    Raises:
        GaalError: two files of a pair on different samples or splits, or a head one lacks.
    """
    shared = len(pairs) > 1 and same_test_set([a for a, _ in pairs])
    reference_ids = pairs[0][0].ids
    a_correct, r_correct, labels = [], [], []
    for a, r in pairs:
        check_pairable(a, r)
        ia, ir = align(a, r)
        if shared:
            position = {sample: i for i, sample in enumerate(a.ids)}
            ia = np.fromiter((position[sample] for sample in reference_ids), dtype=np.int64, count=len(reference_ids))
            ir = ir[ia]
        a_correct.append(a.correct(head)[ia])
        r_correct.append(r.correct(head)[ir])
        labels.append(a.labels[ia])
    return paired_difference(a_correct, r_correct, labels, PAIRED_METRICS[metric], shared=shared)


def t_difference(
    a_values: Sequence[float], r_values: Sequence[float], metric: str, *, shared: bool = False
) -> PairedDifference:
    """The paired t fallback on per-seed metric values (runs without a predictions file); `shared`:
    the seeds share one test set, which per-seed values cannot see (stats.paired_t)."""
    return paired_t(a_values, r_values, PAIRED_METRICS[metric], shared=shared)


def has_predictions(folder: str | Path) -> bool:
    return RunFolder(folder).file(RunFolder.PREDICTIONS).is_file()


# ---------------------------------------------------------------- gaal compare


@dataclass(frozen=True)
class Comparison:
    """One line of `gaal compare`: A minus B on one head and metric.

    Attributes:
        design: how the seeds met their test samples (stats.SHARED or stats.PER_SEED).
        basis: what the interval rests on; p_value is None (NaN) where it carries no verdict.
        seeds_needed, test_samples_needed: where the interval holds 0, what a difference of the
            observed size would need (stats.seeds_needed at ALPHA); None otherwise.
        plan: that need in words ("" where the interval excludes 0).
    """

    head: str
    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    df: float
    seeds: int
    samples: int
    design: str
    basis: str
    seeds_needed: int | None
    test_samples_needed: int | None
    plan: str

    def to_json(self) -> dict:
        return asdict(self)


def compare_runs(a: str | Path, b: str | Path, *, metrics: Sequence[str] = ("acc",)) -> list[Comparison]:
    """`gaal compare A B`: per head both runs have, and per metric, A - B paired by seed and test
    sample (gaal_cli.analysis.stats.paired_difference, before any multiplicity correction).

    Raises:
        GaalError: a side with no finished run, seeds that differ, a run without a predictions
            file, runs on different splits or samples, or no head in common.
    """
    for metric in metrics:
        if metric not in PAIRED_METRICS:
            raise GaalError(f"unknown metric '{metric}'; expected {' or '.join(PAIRED_METRICS)}", source="--metric")
    group_a, group_b = run_group(a), run_group(b)
    if set(group_a) != set(group_b):
        raise GaalError(
            f"the runs are of seeds {sorted(group_a)} and {sorted(group_b)}; a paired comparison needs the same "
            "seeds on both sides (name the seed folders, or groups that hold the same seeds)",
            source=f"{a} and {b}",
            field="seed",
        )
    pairs = [(predictions_of(group_a[s].path), predictions_of(group_b[s].path)) for s in group_a]
    heads = [h for h in pairs[0][0].heads if all(h in pa.heads and h in pb.heads for pa, pb in pairs)]
    if not heads:
        raise GaalError(
            f"the runs have no head in common ({', '.join(pairs[0][0].heads)} against {', '.join(pairs[0][1].heads)})",
            source=f"{a} and {b}",
            field="heads",
        )
    out = []
    for head in heads:
        for metric in metrics:
            d = sample_difference(pairs, head, metric)
            plan = seeds_needed(d, ALPHA) if d.judged and not d.significant else None
            score = _score(metric)
            a_mean = float(np.mean([score(pa.correct(head), pa.labels) for pa, _ in pairs]))
            b_mean = float(np.mean([score(pb.correct(head), pb.labels) for _, pb in pairs]))
            out.append(
                Comparison(
                    head=head,
                    metric=metric,
                    a=a_mean,
                    b=b_mean,
                    difference=d.difference,
                    low=d.low,
                    high=d.high,
                    p_value=d.p_value,
                    df=d.df,
                    seeds=d.n_seeds,
                    samples=d.test_samples,
                    design=d.design,
                    basis=d.basis,
                    seeds_needed=plan.seeds if plan else None,
                    test_samples_needed=plan.test_samples if plan else None,
                    plan=plan.text(d.test_samples) if plan else "",
                )  # fmt: skip
            )
    return out


def shared_runs_note(groups: dict[str, dict[int, RunFolder]]) -> str | None:
    """What `gaal compare` says when A and B (`run_group`s) hold the same run folders (`gaal compare A A`)."""
    folders = [{run.path.resolve() for run in group.values()} for group in groups.values()]
    shared = sorted(folders[0] & folders[1])
    if not shared:
        return None
    return (
        f"A and B share {len(shared)} run folder{'s' * (len(shared) > 1)} (e.g. {shared[0]}): a run compared "
        "with itself differs by 0 by construction, so those seeds say nothing about the methods"
    )


def sides_provenance(groups: dict[str, dict[int, RunFolder]]) -> dict[str, set[tuple[str, str]]]:
    """The (code, host) keys of each side's runs (`run_group`s; gaal_cli.analysis.provenance_groups)."""
    sides = {}
    for side, group in groups.items():
        keys = set()
        for run in group.values():
            try:
                found = provenance_columns(run.read_report())
            except GaalError:  # compare_runs has read them already; a report that went bad since
                found = {"code": UNRECORDED, "host": UNRECORDED}
            keys.add((found["code"], found["host"]))
        sides[side] = keys
    return sides


def _score(metric: str):
    return STAT_METRICS[PAIRED_METRICS[metric]]


def comparison_lines(rows: Sequence[Comparison], a: str, b: str) -> list[str]:
    """`gaal compare`'s table as Markdown lines, with what the numbers are and rest on under it."""
    lines = [
        f"A = {a}, B = {b}",
        "",
        "| head | metric | A | B | A − B | 95 % interval | p | seeds | test samples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.head} | {r.metric} | {r.a:.4f} | {r.b:.4f} | {r.difference:+.4f} | "
            f"[{r.low:+.4f}, {r.high:+.4f}] | {format_p(r.p_value)} | {r.seeds} | {r.samples} |"
        )
    if not rows:
        return lines
    lines += ["", design_sentence(rows[0].design, rows[0].seeds, rows[0].samples)]
    lines.append(
        "Paired by seed and test sample; the interval and two-sided p are Student's t on the per-seed differences"
        + (", plus the shared test set's own variance" if rows[0].design == SHARED else "")
        + " (gaal_cli/analysis/stats.py; calibration in benchmarks/calibration.py), each line on its own "
        "(not corrected for the several lines)."
    )
    unjudged = sorted({r.basis for r in rows if r.p_value != r.p_value})
    if unjudged:
        lines.append("No p-value (no verdict) where the interval rests on " + "; ".join(unjudged) + ".")
    needed = [f"{r.head} {r.metric}: {r.plan}" for r in rows if r.plan]
    if needed:
        lines.append(
            f"Where the interval holds 0, what a difference of the observed size would need (80 % power at "
            f"{ALPHA:g}): " + "; ".join(needed)
        )
    return lines


def design_sentence(design: str, seeds: int, samples: int) -> str:
    """How the seeds met their test samples, and how that was known."""
    if seeds < 2:
        return f"One seed, {samples} test samples: the interval is the test samples' noise alone."
    if design == SHARED:
        return (
            f"Test set: {SHARED} (every seed's predictions files hold the same {samples} sample ids with the same "
            "labels)."
        )
    return f"Test set: {PER_SEED} (the seeds' predictions files hold different samples, or other labels for an id)."


def format_p(p: float) -> str:
    if p != p:  # NaN: one seed, no test
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
