"""Ranks across conditions: average ranks of the fused methods, Friedman's test (Iman and
Davenport's F, or a permutation p-value with few conditions), and Nemenyi's critical difference
with its diagram (gaal_cli/analysis/cd_diagram.py) only where the test rejects and the critical
difference can be reached; otherwise a sentence says why there is none."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gaal_cli.analysis import friedman as rank_tests
from gaal_cli.analysis.collect import DOMINANCE_KEY, METHOD_ORDER, dataset_label
from gaal_cli.analysis.figures import FORMATS
from gaal_cli.analysis.paired import ALPHA


def ranks_markdown(summary: pd.DataFrame, rows: list[str], kind: str, out: Path) -> tuple[str, list[Path]]:
    """Across conditions (a regime sweep's datasets x dominance levels, or Table I's datasets):
    each fused method's average rank on the Multi test accuracy, Friedman's test, and Nemenyi's
    critical difference with its diagram (`cd_<kind>`, PNG/PDF/SVG) where the test rejects at
    ALPHA and the difference is reachable. Methods missing from a condition are left out (named);
    nothing when fewer than 3 methods or 2 conditions remain.

    Returns:
        The section's text, and the diagram's files (none when there is no diagram).
    """
    if set(rows) == {"method", DOMINANCE_KEY}:
        condition, what = ["dataset", DOMINANCE_KEY], "regime and dominance level"
    elif rows == ["method"] and summary["dataset"].nunique() >= 2:
        condition, what = ["dataset"], "dataset"
    else:
        return "", []
    scores = summary.pivot_table(index=condition, columns="method", values="multi_mean", dropna=False)
    fused = [m for m in scores.columns if scores[m].notna().any()]
    complete = [m for m in fused if scores[m].notna().all()]
    methods = [m for m in METHOD_ORDER if m in complete] + sorted(set(complete) - set(METHOD_ORDER))
    n = len(scores.index)
    if len(methods) < 3 or n < 2:
        return "", []
    result = rank_tests.friedman(scores[methods].to_numpy(dtype=float))
    cd = rank_tests.nemenyi_cd(len(methods), n, ALPHA)
    ranked = sorted(zip(methods, result.average_ranks), key=lambda x: (x[1], x[0]))
    left_out = sorted(set(fused) - set(complete))
    nan_only = [m for m in scores.columns if m not in fused and _multi_null(summary, m)]
    text = (
        f"Average rank of each method's mean Multi test accuracy over {n} conditions (each {what}; 1 = best): "
        + ", ".join(f"{m} {r:.2f}" for m, r in ranked)
        + ". "
        + shared_conditions(list(scores.index), condition)
        + f"Friedman χ² = {result.chi2:.2f}, Iman-Davenport F = {result.f:.2f}; {p_value_sentence(result)} "
        + (f"Left out (not run in every condition): {', '.join(left_out)}. " if left_out else "")
        + (f"Left out (its Multi accuracy is NaN in every seed): {', '.join(nan_only)}. " if nan_only else "")
    )
    why_not = no_diagram_reason(result, cd, len(methods))
    if why_not:
        return text + why_not + "\n", []
    from gaal_cli.analysis.cd_diagram import cd_diagram

    title = f"{kind}: Multi test accuracy over {n} conditions, {result.p_name} p = {result.p_value:.3g}"
    drawn = cd_diagram(methods, result.average_ranks, cd, out / f"cd_{kind}.png", title=title)
    text += (
        f"Nemenyi critical difference {cd:.2f} at α = {ALPHA:g}: methods whose average ranks differ by less are not "
        f"told apart (joined by a bar in the diagram).\n\n![cd_{kind}](cd_{kind}.png)\n"
    )
    return text, [drawn.png.with_suffix(s) for s in FORMATS]


def _multi_null(summary: pd.DataFrame, method: str) -> bool:
    """Whether a seed of `method` reported its Multi accuracy as NaN (a diverged run, not a unimodal one)."""
    nulls = summary.loc[summary["method"] == method, "null_metrics"] if "null_metrics" in summary else []
    return any("multi.acc" in str(v).split() for v in nulls)


def p_value_sentence(result: rank_tests.Friedman) -> str:
    """Which p-value the verdict uses, and why."""
    if result.n > rank_tests.LARGE_N:
        return f"p = {result.f_p:.3g} (Iman-Davenport's F, as Demšar 2006 recommends)."
    return (
        f"with {result.n} conditions the chi-square and F approximations are not trusted (Demšar 2006 asks for more "
        f"than {rank_tests.LARGE_N}), so the p-value is the {result.p_name} test's: p = {result.permutation_p:.3g} "
        f"(chi-square's would be {result.chi2_p:.3g}, F's {result.f_p:.3g})."
    )


def no_diagram_reason(result: rank_tests.Friedman, cd: float, k: int) -> str:
    """Why no critical-difference diagram is drawn, or "" when one is."""
    if not rank_tests.cd_reachable(cd, k):
        return (
            f"No critical-difference diagram: with {result.n} conditions Nemenyi's critical difference for {k} methods "
            f"is {cd:.2f}, at least the largest possible difference of average ranks ({k - 1}), so no two methods "
            "could be told apart."
        )
    if not result.p_value <= ALPHA:
        return (
            f"No critical-difference diagram: the test does not reject that the methods rank alike (p = "
            f"{result.p_value:.3g} > {ALPHA:g}), so no pair is compared."
        )
    return ""


def shared_conditions(conditions: list, columns: list[str]) -> str:
    """A sentence naming the conditions that share a generator and seeds (dominance levels of one
    regime, or several regimes of the embedded set), which are not independent data sets."""
    datasets = [str(c[0] if isinstance(c, tuple) else c) for c in conditions]
    levels = DOMINANCE_KEY in columns
    families: dict[str, list[str]] = {}
    for d in datasets:  # a regime's levels share its generator; the embedded set's regimes share theirs
        families.setdefault(d if levels else d.split("-")[0], []).append(d)
    shared = {base: members for base, members in families.items() if len(members) > 1}
    if not shared:
        return ""
    if levels:
        named = "; ".join(f"{len(m)} dominance levels of {dataset_label(m[0])}" for m in shared.values())
    else:
        named = "; ".join(", ".join(dataset_label(x) for x in m) for m in shared.values())
    return (
        f"These conditions share a generator and the training seeds ({named}): they are settings of one data set, not "
        "independent data sets, so the test says whether the methods rank alike across these settings only. "
    )
