"""Calibration of the paired comparison: false-positive rate, interval coverage and power, by simulation.

    python benchmarks/calibration.py                       # the README's tables (about 20 minutes on 2 shared cores)
    python benchmarks/calibration.py --repetitions 500 --bootstrap-repetitions 0   # quicker, no bootstraps

Two methods are trained on S seeds and tested on n samples; each sample is right or wrong for
each method and seed through a latent score (a probit model with crossed random effects):

    z[m, s, i] = mu[m] + b[i] + g[m, i] + u[m, s] + e[m, s, i],   right when z > 0

b the sample's difficulty (both methods share it), g the method's own affinity for the sample
(the same in every seed), u the seed's training randomness, e the rest. The constants are
calibrated to HAM10000's GAAL against concat (README, "Is a difference real?"): accuracy about
0.75, about 13 % of test samples on which the two disagree, a standard deviation over seeds of
the per-seed difference of about one point, and a correlation of about 0.2 across seeds between
one sample's correct-minus-wrong differences; the script prints what its constants give. Two
designs: "shared" draws b and g once (one test set shared by every seed, as HAM10000 and DVM),
"per seed" draws them again for every seed (the embedded set, whose samples come from the seed).
The true difference is the population one, Phi(mu_A / sd) - Phi(mu_R / sd): 0 (null), +1 or
+2 points.

Methods, each as `gaal_cli.analysis.stats` or the report ran it:
- `t + test set`: stats.paired_difference, the report's and `gaal compare`'s (with the design
  the predictions files reveal);
- `t on values`: stats.paired_t on per-seed accuracies, the report's fallback (ᵗ) for runs
  without predictions files;
- `bootstrap (before)`: the two-level bootstrap the report used before issue 28 (seeds with
  replacement, then each drawn seed's samples with replacement, percentile interval, B = 1000);
- `crossed bootstrap`: Owen's (2007) pigeonhole bootstrap, seeds and samples drawn independently,
  a drawn sample shared by every seed (B = 1000).
A method "rejects" when it marks the row (▲ or ▼): its two-sided 95 % interval excludes 0 and,
for `t + test set`, a verdict is allowed (never with one seed). Coverage is the share of
intervals holding the true difference; power the share marked ▲ under a true difference.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats as sp

from gaal_cli.analysis import stats

#: the latent model's standard deviations (item, method x item, seed, residual), calibrated as
#: the docstring says; `calibration()` measures what they give
SD_ITEM, SD_AFFINITY, SD_SEED, SD_NOISE = 1.3, 0.33, 0.025, 0.4
ACCURACY = 0.75
TEST_SAMPLES = 2000
SEEDS = (1, 2, 3, 5, 10)
TRUTHS = (0.0, 0.01, 0.02)
DESIGNS = ("shared", "per seed")
RESAMPLES = 1000
METHODS = ("t + test set", "t on values", "bootstrap (before)", "crossed bootstrap")


@dataclass(frozen=True)
class Scenario:
    design: str
    seeds: int
    truth: float
    n: int = TEST_SAMPLES
    seed_sd: float = SD_SEED


def total_sd(seed_sd: float = SD_SEED) -> float:
    return math.sqrt(SD_ITEM**2 + SD_AFFINITY**2 + seed_sd**2 + SD_NOISE**2)


def means(truth: float, seed_sd: float = SD_SEED) -> tuple[float, float]:
    """mu_A, mu_R: R at ACCURACY, A `truth` above it in the population."""
    sd = total_sd(seed_sd)
    r = sp.norm.ppf(ACCURACY) * sd
    return sp.norm.ppf(ACCURACY + truth) * sd, r


def simulate(scenario: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One experiment: correct[A], correct[R], each seeds x samples (bool)."""
    s, n = scenario.seeds, scenario.n
    rows = 1 if scenario.design == "shared" else s
    item = rng.normal(0, SD_ITEM, (rows, n))
    affinity = rng.normal(0, SD_AFFINITY, (2, rows, n))
    seed = rng.normal(0, scenario.seed_sd, (2, s, 1))
    noise = rng.normal(0, SD_NOISE, (2, s, n))
    mu = np.array(means(scenario.truth, scenario.seed_sd)).reshape(2, 1, 1)
    correct = (mu + item + affinity + seed + noise) > 0
    return correct[0], correct[1]


# ---------------------------------------------------------------- the methods: (mark, low, high)


def chosen(a, r, labels, shared):
    d = stats.paired_difference(list(a), list(r), [labels] * len(a), shared=shared)
    return d.significant, d.low, d.high


def t_on_values(a, r, labels, shared):
    d = stats.paired_t(a.mean(axis=1), r.mean(axis=1), "accuracy")
    return d.significant, d.low, d.high


def two_level_bootstrap(a, r, rng, resamples=RESAMPLES):
    """Seeds with replacement, then each drawn seed's samples with replacement (independently per
    draw). With d in {-1, 0, 1}, a seed's resampled mean is (X+ - X-) / n with (X+, X-, X0)
    multinomial over the seed's counts of +1, -1 and 0: the same distribution, in O(1)."""
    d = a.astype(np.int8) - r.astype(np.int8)
    s, n = d.shape
    shares = np.stack([(d == 1).mean(1), (d == -1).mean(1), (d == 0).mean(1)], axis=1)
    picks = rng.integers(s, size=(resamples, s))
    counts = rng.multinomial(n, shares[picks])  # resamples x s x 3
    replicate = ((counts[..., 0] - counts[..., 1]) / n).mean(axis=1)
    return _percentile(replicate)


def crossed_bootstrap(a, r, rng, resamples=RESAMPLES):
    """Owen (2007)'s pigeonhole bootstrap: seeds and samples drawn independently, each drawn
    sample used in every drawn seed (seed and sample weights; linear in seeds x samples x B)."""
    d = a.astype(float) - r.astype(float)
    s, n = d.shape
    seed_weights = rng.multinomial(s, np.full(s, 1 / s), size=resamples) / s
    picks = rng.integers(n, size=(resamples, n))
    item_weights = np.bincount((picks + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    per_seed = (item_weights.reshape(resamples, n) @ d.T) / n  # resamples x seeds
    return _percentile((per_seed * seed_weights).sum(axis=1))


def _percentile(replicate):
    low, high = np.quantile(replicate, [0.025, 0.975])
    return (low > 0 or high < 0), float(low), float(high)


# ---------------------------------------------------------------- the experiment


def run(scenario: Scenario, repetitions: int, bootstrap_repetitions: int, seed: int) -> dict[str, dict[str, float]]:
    """Per method: the rate of marks (false positives under the null, power otherwise), the
    coverage of the true difference and the repetitions behind them."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(scenario.n, dtype=np.int64)
    shared = scenario.design == "shared"
    tallies = {m: [0, 0, 0, 0] for m in METHODS}  # marks, right-signed marks, covered, repetitions
    for k in range(max(repetitions, bootstrap_repetitions)):
        a, r = simulate(scenario, rng)
        results = {}
        if k < repetitions:
            results["t + test set"] = chosen(a, r, labels, shared)
            results["t on values"] = t_on_values(a, r, labels, shared) if scenario.seeds > 1 else None
        if k < bootstrap_repetitions:
            results["bootstrap (before)"] = two_level_bootstrap(a, r, rng)
            results["crossed bootstrap"] = crossed_bootstrap(a, r, rng)
        for method, result in results.items():
            if result is None:
                continue
            marked, low, high = result
            tally = tallies[method]
            tally[0] += marked
            tally[1] += marked and low > 0
            tally[2] += low <= scenario.truth <= high
            tally[3] += 1
    return {
        m: {"marked": t[0] / t[3], "better": t[1] / t[3], "coverage": t[2] / t[3], "repetitions": t[3]}
        for m, t in tallies.items()
        if t[3]
    }


def calibration(seed: int = 0, seeds: int = 10, experiments: int = 50) -> dict[str, float]:
    """What the constants give on the shared design: accuracy, share of disagreeing samples, the
    standard deviation over seeds of the per-seed difference, and the mean correlation across
    seeds of one sample's difference."""
    rng = np.random.default_rng(seed)
    out = {"accuracy": [], "disagree": [], "seed_sd": [], "correlation": []}
    for _ in range(experiments):
        a, r = simulate(Scenario("shared", seeds, 0.0), rng)
        d = a.astype(float) - r.astype(float)
        out["accuracy"].append(r.mean())
        out["disagree"].append((d != 0).mean())
        out["seed_sd"].append(d.mean(axis=1).std(ddof=1))
        corr = np.corrcoef(d)
        out["correlation"].append(corr[np.triu_indices(seeds, 1)].mean())
    return {k: float(np.mean(v)) for k, v in out.items()}


def table(rows: list[tuple[Scenario, dict[str, dict[str, float]]]]) -> list[str]:
    """Markdown: per scenario, each method's rate of marks (false positives under the null, power
    otherwise) and coverage, in percent."""
    present = [m for m in METHODS if any(m in result for _, result in rows)]
    header = ["design", "seeds", "true difference"] + [f"{m}: marked / coverage" for m in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, result in rows:
        cells = [scenario.design, str(scenario.seeds), f"{scenario.truth:+.2f}"]
        for m in present:
            if m not in result:
                cells.append("-")
                continue
            rate = result[m]["better"] if scenario.truth else result[m]["marked"]
            cells.append(f"{100 * rate:.1f} / {100 * result[m]['coverage']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3000, help="experiments per scenario (the t methods)")
    parser.add_argument("--bootstrap-repetitions", type=int, default=200, help="experiments per scenario (bootstraps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    measured = calibration(args.seed)
    print(
        f"latent model: accuracy {measured['accuracy']:.3f}, disagreeing samples {measured['disagree']:.3f}, "
        f"sd over seeds of the per-seed difference {measured['seed_sd']:.4f}, correlation across seeds of a "
        f"sample's difference {measured['correlation']:.3f} ({TEST_SAMPLES} test samples)"
    )
    rows = []
    for i, (design, seeds, truth) in enumerate((d, s, t) for d in DESIGNS for s in SEEDS for t in TRUTHS):
        scenario = Scenario(design, seeds, truth)
        rows.append((scenario, run(scenario, args.repetitions, args.bootstrap_repetitions, args.seed + i)))
    print(
        f"\n{args.repetitions} experiments per scenario for the t methods, {args.bootstrap_repetitions} for the "
        f"bootstraps (B = {RESAMPLES}); marked: the share of experiments with ▲ or ▼ (under a true difference, "
        "▲ only); coverage: the share of 95 % intervals holding the true difference; in percent.\n"
    )
    print("\n".join(table(rows)))
    dominant = []
    for i, (design, seeds) in enumerate((d, s) for d in DESIGNS for s in SEEDS):
        scenario = Scenario(design, seeds, 0.0, seed_sd=3 * SD_SEED)
        dominant.append((scenario, run(scenario, args.repetitions, args.bootstrap_repetitions, args.seed + 100 + i)))
    print(
        "\nSeeds dominant (the latent seed sd x3: sd over seeds of the per-seed difference about 0.03), no true "
        "difference, the same experiments per scenario:\n"
    )
    print("\n".join(table(dominant)))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
