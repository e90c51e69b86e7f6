"""Statistics of bench/run.py, pure (stdlib only, no I/O): paired per-repetition ratios and
differences, percentile bootstrap confidence intervals, verdicts that say "within noise" when
the interval does not decide.

Why the mean and not the median: the benchmark has 5-7 repetitions, and the bootstrap
distribution of the median of so few values takes only the sample's own values (for n <= 7 its
2.5th and 97.5th percentiles are the sample's min and max), so its interval is the range and
says nothing more. The mean's bootstrap distribution is smooth. Its interval is still a little
narrow for n this small (the percentile bootstrap undercovers), which is why the A/A condition
is printed beside every ratio: it shows the noise of the same machine in the same run.

Every interval uses its own random.Random(SEED): the same data give the same table, whatever
else was computed before.
"""

import math
import random

SEED = 21  # fixed: tables are reproducible from the raw data (latest.json)
RESAMPLES = 10000
CONFIDENCE = 0.95
MIN_PAIRS = 3  # fewer values than this: no interval (two values' resamples are mostly copies)

PASS, MISS, NOISE, NA = "PASS", "MISS", "within noise", "n/a"


def mean(xs):
    return math.fsum(xs) / len(xs)


def paired_ratios(xs, bases):
    """x / base per repetition (index i of both lists is the same repetition); a repetition
    with a missing value or a zero base is left out."""
    return [x / b for x, b in zip(xs, bases) if x is not None and b]


def paired_differences(xs, bases):
    """x - base per repetition; a repetition with a missing value is left out."""
    return [x - b for x, b in zip(xs, bases) if x is not None and b is not None]


def _percentile(sorted_xs, q):
    # Linear interpolation between order statistics (numpy's default, "type 7").
    pos = q * (len(sorted_xs) - 1)
    i = int(math.floor(pos))
    if i + 1 >= len(sorted_xs):
        return sorted_xs[-1]
    return sorted_xs[i] + (sorted_xs[i + 1] - sorted_xs[i]) * (pos - i)


def bootstrap_ci(values, stat=mean, resamples=RESAMPLES, confidence=CONFIDENCE, seed=SEED):
    """Percentile bootstrap interval (lo, hi) of stat(values), resampling the values (for
    paired data: the pairs) with replacement; None with fewer than MIN_PAIRS values."""
    values = list(values)
    n = len(values)
    if n < MIN_PAIRS:
        return None
    rng = random.Random(seed)
    dist = sorted(stat(rng.choices(values, k=n)) for _ in range(resamples))
    alpha = 1.0 - confidence
    return (_percentile(dist, alpha / 2), _percentile(dist, 1.0 - alpha / 2))


def estimate(values, **kw):
    """{"n", "values", "estimate" (the mean), "ci" ([lo, hi] or None)} of some per-repetition
    values, as bench/run.py stores and prints them."""
    values = [v for v in values if v is not None]
    ci = bootstrap_ci(values, **kw)
    return {"n": len(values), "values": values, "estimate": mean(values) if values else None,
            "ci": list(ci) if ci else None}


def verdict(ci, target, higher_is_better):
    """PASS when the whole interval is on the good side of the target (the boundary counts as
    good: ">= 0.99" holds at 0.99), MISS when it is wholly on the bad side, "within noise" when
    it straddles the target, "n/a" without an interval."""
    if ci is None or target is None:
        return NA
    lo, hi = ci
    if higher_is_better:
        return PASS if lo >= target else MISS if hi < target else NOISE
    return PASS if hi <= target else MISS if lo > target else NOISE


def half_width(ci):
    """Half the interval's width: for the A/A ratio, the smallest difference the run resolves."""
    return None if ci is None else (ci[1] - ci[0]) / 2.0


def contains(ci, x):
    return ci is not None and ci[0] <= x <= ci[1]
