"""Whether a difference between two methods is real: paired comparisons of runs.

Two runs of the same seed on the same data share their split and test samples, so their
difference is measured sample by sample (their predictions files, gaal_cli.runs.predictions_file)
and the seeds are paired by seed number. `gaal compare A B` compares two runs or two run groups
(a folder of seed folders); `gaal report` compares each row of a table with a reference row
(`paired_cell`). The statistics are gaal_cli.analysis.stats's: the two-level paired bootstrap where both
sides kept their predictions, the paired t test on per-seed metrics where one did not.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gaal_cli.analysis.stats import METRICS as STAT_METRICS
from gaal_cli.analysis.stats import RESAMPLES, PairedDifference, paired_bootstrap, paired_t
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.folder import RunFolder, finished_runs
from gaal_cli.runs.predictions_file import Predictions, align
from gaal_cli.runs.run_predictions import check_pairable, read_run_predictions

#: the metrics a paired comparison can be made on: report.json's name -> gaal_cli.analysis.stats's
PAIRED_METRICS = {"acc": "accuracy", "bal_acc": "balanced_accuracy"}
#: the bootstrap's generator seed: the same runs give the same interval and p-value, to the byte
BOOTSTRAP_SEED = 0


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


def bootstrap_difference(
    pairs: Sequence[tuple[Predictions, Predictions]], head: str, metric: str, *, resamples: int = RESAMPLES
) -> PairedDifference:
    """`head`'s paired difference A - R on `metric` ("acc" or "bal_acc") over the seeds' pairs of
    predictions files, test samples matched by id (`align`), the bootstrap seed fixed.

    Raises:
        GaalError: two files of a pair on different samples or splits, or a head one lacks.
    """
    a_correct, r_correct, labels = [], [], []
    for a, r in pairs:
        check_pairable(a, r)
        ia, ir = align(a, r)
        a_correct.append(a.correct(head)[ia])
        r_correct.append(r.correct(head)[ir])
        labels.append(a.labels[ia])
    return paired_bootstrap(
        a_correct, r_correct, labels, PAIRED_METRICS[metric], resamples=resamples, seed=BOOTSTRAP_SEED
    )


def t_difference(a_values: Sequence[float], r_values: Sequence[float], metric: str) -> PairedDifference:
    """The paired t fallback on per-seed metric values (runs without a predictions file)."""
    with warnings.catch_warnings():
        # differences equal to float precision (e.g. 0.1 + 1e-17): scipy warns, its p is still the limit's
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        return paired_t(a_values, r_values, PAIRED_METRICS[metric])


def has_predictions(folder: str | Path) -> bool:
    return RunFolder(folder).file(RunFolder.PREDICTIONS).is_file()


# ---------------------------------------------------------------- gaal compare


@dataclass(frozen=True)
class Comparison:
    """One line of `gaal compare`: A minus B on one head and metric."""

    head: str
    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    seeds: int
    samples: int
    resamples: int
    seeds_needed: int | None

    def to_json(self) -> dict:
        return asdict(self)


def compare_runs(
    a: str | Path, b: str | Path, *, metrics: Sequence[str] = ("acc",), resamples: int = RESAMPLES
) -> list[Comparison]:
    """`gaal compare A B`: per head both runs have, and per metric, A - B paired by seed and test
    sample (the bootstrap of gaal_cli.analysis.stats.paired_bootstrap, before any multiplicity correction).

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
            d = bootstrap_difference(pairs, head, metric, resamples=resamples)
            score = _score(metric)
            a_mean = float(np.mean([score(pa.correct(head), pa.labels) for pa, _ in pairs]))
            b_mean = float(np.mean([score(pb.correct(head), pb.labels) for _, pb in pairs]))
            out.append(
                Comparison(
                    head, metric, a_mean, b_mean, d.difference, d.low, d.high, d.p_value,
                    d.n_seeds, len(pairs[0][0].ids), d.resamples, d.seeds_needed,
                )  # fmt: skip
            )
    return out


def _score(metric: str):
    return STAT_METRICS[PAIRED_METRICS[metric]]


def comparison_lines(rows: Sequence[Comparison], a: str, b: str) -> list[str]:
    """`gaal compare`'s table as Markdown lines, with what the numbers are under it."""
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
    resamples = rows[0].resamples if rows else RESAMPLES
    lines += [
        "",
        f"Paired by seed and test sample; interval and two-sided p from a bootstrap over seeds and test samples "
        f"({resamples} resamples, fixed seed), not corrected for the several lines.",
    ]
    needed = [f"{r.head} {r.metric}: ~{r.seeds_needed}" for r in rows if r.seeds_needed is not None]
    if needed:
        lines.append(
            "Where the interval holds 0, the seeds a difference of the observed size would need: " + "; ".join(needed)
        )
    return lines


def format_p(p: float) -> str:
    if p != p:  # NaN: one seed, no test
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
