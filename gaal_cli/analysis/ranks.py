"""Ranks across conditions: average ranks of the fused methods, Friedman's test with Iman and
Davenport's F, Nemenyi's critical difference and its diagram (gaal_cli/analysis/cd_diagram.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gaal_cli.analysis import stats
from gaal_cli.analysis.collect import DOMINANCE_KEY, METHOD_ORDER
from gaal_cli.analysis.figures import FORMATS
from gaal_cli.analysis.paired import ALPHA


def ranks_markdown(summary: pd.DataFrame, rows: list[str], kind: str, out: Path) -> tuple[str, list[Path]]:
    """Across conditions (a regime sweep's datasets x dominance levels, or Table I's datasets):
    each fused method's average rank on the Multi test accuracy, Friedman's test with Iman and
    Davenport's F, Nemenyi's critical difference and its diagram (`cd_<kind>`, PNG/PDF/SVG).
    Methods missing from a condition are left out (named); nothing when fewer than 3 methods or 2
    conditions remain."""
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
    table = scores[methods].to_numpy(dtype=float)
    result = stats.friedman(table)
    cd = stats.nemenyi_cd(len(methods), n, ALPHA)
    from gaal_cli.analysis.cd_diagram import cd_diagram

    title = f"{kind}: Multi test accuracy over {n} conditions, Friedman p = {result.p_value:.3g}"
    drawn = cd_diagram(methods, result.average_ranks, cd, out / f"cd_{kind}.png", title=title)
    ranked = sorted(zip(methods, result.average_ranks), key=lambda x: (x[1], x[0]))
    left_out = sorted(set(fused) - set(complete))
    nan_only = [m for m in scores.columns if m not in fused and _multi_null(summary, m)]
    text = (
        f"Average rank of each method's mean Multi test accuracy over {n} conditions (each {what}; 1 = best): "
        + ", ".join(f"{m} {r:.2f}" for m, r in ranked)
        + f". Friedman χ² = {result.chi2:.2f} (p = {result.p_value:.3g}); Iman-Davenport F = {result.f:.2f} "
        f"(p = {result.f_p_value:.3g}); Nemenyi critical difference {cd:.2f} at α = {ALPHA:g}: methods whose average "
        "ranks differ by less are not told apart (joined by a bar in the diagram)."
        + (f" Left out (not run in every condition): {', '.join(left_out)}." if left_out else "")
        + (f" Left out (its Multi accuracy is NaN in every seed): {', '.join(nan_only)}." if nan_only else "")
        + "\n"
    )
    return text, [drawn.png.with_suffix(s) for s in FORMATS]


def _multi_null(summary: pd.DataFrame, method: str) -> bool:
    """Whether a seed of `method` reported its Multi accuracy as NaN (a diverged run, not a unimodal one)."""
    nulls = summary.loc[summary["method"] == method, "null_metrics"] if "null_metrics" in summary else []
    return any("multi.acc" in str(v).split() for v in nulls)
