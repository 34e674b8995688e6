"""The statistics of the reports: 95 % confidence intervals over seeds (Student t), differences
between two methods (paired by seed, else Welch), which means a table may mark as best, and a
bootstrap interval over the test items of one seed.

scipy is not a runtime dependency (and torch's StudentT has no icdf), so the t quantile comes
from a short table and the Cornish-Fisher expansion; tests check it against scipy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
# t_{0.975, df} for df = 1..9, to six decimals; from df 10 the expansion is within 4e-6 of it
_T_SMALL_DF = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157)
_BOOTSTRAP_CHUNK = 2**22  # resampled item indices held at once


def t_quantile(df: int) -> float:
    """The two-sided 95 % critical value of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    if df <= len(_T_SMALL_DF):
        return _T_SMALL_DF[df - 1]
    z = _Z
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df**power for power, term in enumerate(terms, start=1))


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and its 95 % confidence half-width; `half_width` is None where
    one value gives no interval."""

    mean: float
    half_width: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.half_width is not None and abs(self.mean) > self.half_width


def mean_interval(values: Sequence[float]) -> Interval:
    """mean ± t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (ddof 1)."""
    n = len(values)
    if n == 0:
        raise ValueError("a mean needs at least one value")
    mean = float(np.mean(values))
    if n == 1:
        return Interval(mean, None, 1)
    return Interval(mean, t_quantile(n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n), n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Interval | None:
    """a - b over the seeds both have (values by seed): the mean difference and its interval;
    None when they share no seed."""
    shared = sorted(a.keys() & b.keys())
    return mean_interval([a[s] - b[s] for s in shared]) if shared else None


def welch_difference(a: Sequence[float], b: Sequence[float]) -> Interval | None:
    """mean(a) - mean(b) with Welch's t interval for unpaired values, the Welch-Satterthwaite
    degrees of freedom rounded down (a wider, conservative interval); None unless each side has
    at least two values."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    mean = float(np.mean(a) - np.mean(b))
    if va + vb == 0:
        return Interval(mean, 0.0, len(a) + len(b))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Interval(mean, t_quantile(max(1, math.floor(df))) * math.sqrt(va + vb), len(a) + len(b))


def difference(a: Mapping[int, float], b: Mapping[int, float]) -> Interval | None:
    """a - b by seed: paired over the seeds both have when they share at least two, else
    Welch's interval over all seeds of each; None when neither can give an interval."""
    paired = paired_difference(a, b)
    if paired is not None and paired.n >= 2:
        return paired
    return welch_difference(list(a.values()), list(b.values()))


def marked_best(rows: Sequence[Mapping[int, float]]) -> list[bool]:
    """Which rows (values by seed; higher is better) a table marks: the best mean alone where
    the interval of its difference to the runner-up excludes 0; otherwise the best and every
    row tied with it, i.e. whose difference to the best has an interval that includes 0 or
    no interval at all (one seed cannot be told apart). Nothing where fewer than two rows
    have values."""
    means = [float(np.mean(list(r.values()))) if r else -math.inf for r in rows]
    ranked = sorted(range(len(rows)), key=lambda i: -means[i])
    if sum(bool(r) for r in rows) < 2:
        return [False] * len(rows)
    best, runner_up = ranked[0], ranked[1]
    clear = difference(rows[best], rows[runner_up])
    if clear is not None and clear.excludes_zero:
        return [i == best for i in range(len(rows))]
    tied = [bool(r) and not ((d := difference(rows[best], r)) is not None and d.excludes_zero) for r in rows]
    tied[best] = True
    return tied


def bootstrap_interval(per_item_scores: Sequence[float], n_resamples: int, seed: int = 0) -> tuple[float, float]:
    """The percentile 95 % interval of the mean of `per_item_scores` (the test items of one
    seed), from `n_resamples` resamples of the items with replacement; deterministic by `seed`.
    It measures the test set's sampling noise, not the training seed's."""
    scores = np.asarray(per_item_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"a bootstrap needs a flat, non-empty list of item scores, got shape {scores.shape}")
    if n_resamples < 1:
        raise ValueError(f"a bootstrap needs at least 1 resample, got {n_resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK // scores.size)
    means = np.concatenate(
        [
            scores[rng.integers(0, scores.size, size=(min(chunk, n_resamples - start), scores.size))].mean(axis=1)
            for start in range(0, n_resamples, chunk)
        ]
    )
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
