"""Paired statistics between two entries of one cell, Holm's correction, verdicts and the seed variance split.

The strategies of a cell run on the same seeds (same data subset, same initialisation of the head), so their
per-seed results are paired: the test is on the per-seed differences, which removes the seed's shared offset that
an unpaired (Welch or Student) test counts as noise. Every function is pure: arrays and DataFrames in, numbers,
small dataclasses or DataFrames out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as st

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
Verdict = Literal["confirmed", "refuted", "inconclusive"]


@dataclass(frozen=True)
class PairedResult:
    """The paired comparison of a and b on their common seeds; every difference is a - b.

    seeds: the common seeds, sorted; n: how many. mean_a, mean_b: each side's mean on those seeds. mean_diff,
    sd_diff: mean and sample sd (ddof 1) of the differences. ci_low, ci_high: Student-t 95% interval of the mean
    difference, mean_diff -/+ t(0.975, n-1) sd_diff / sqrt(n). p_value: two-sided paired t-test,
    t = mean_diff / (sd_diff / sqrt(n)) on n-1 degrees of freedom. boot_low, boot_high: percentile 95% interval
    of the mean difference over resamples of the seeds with replacement. note: "" or why numbers are NaN.
    """

    seeds: tuple[object, ...]
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    boot_low: float
    boot_high: float
    note: str = ""


def paired_difference(
    a: pd.Series, b: pd.Series, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> PairedResult:
    """Paired comparison of two entries of one cell: `a` and `b` are one score per seed, indexed by seed.

    Only the seeds both have (with a non-missing score) count. With fewer than 2 of them the sd, intervals and
    p value are NaN and `note` says so. When every difference is the same (sd 0) the t statistic is infinite:
    p is 0 when that difference is non-zero and 1 when it is zero (the t-test's limits; scipy returns NaN for
    the latter). The bootstrap draws `resamples` resamples of the n seeds with a generator seeded by `seed`, so
    it is deterministic. Raises ValueError when a seed appears twice in `a` or in `b`, or `resamples` < 1.
    """
    if resamples < 1:
        raise ValueError(f"resamples: expected at least 1, got {resamples}")
    for name, side in (("a", a), ("b", b)):
        repeated = side.index[side.index.duplicated()]
        if len(repeated):
            raise ValueError(f"{name}: seed {repeated[0]} appears more than once (one score per seed expected)")
    a_num = pd.to_numeric(a, errors="coerce").dropna()
    b_num = pd.to_numeric(b, errors="coerce").dropna()
    seeds = sorted(set(a_num.index.tolist()) & set(b_num.index.tolist()))
    x = a_num.loc[seeds].to_numpy(dtype=float)
    y = b_num.loc[seeds].to_numpy(dtype=float)
    n = len(seeds)
    mean_a, mean_b = (float(x.mean()), float(y.mean())) if n else (math.nan, math.nan)
    d = x - y
    mean_diff = float(d.mean()) if n else math.nan
    if n < 2:
        note = f"{n} common seed{'' if n == 1 else 's'}: a paired test needs at least 2"
        nan = math.nan
        return PairedResult(tuple(seeds), n, mean_a, mean_b, mean_diff, nan, nan, nan, nan, nan, nan, note)
    sd = float(d.std(ddof=1))
    half = float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if sd > 0:
        p = float(2 * st.t.sf(abs(mean_diff) / (sd / math.sqrt(n)), n - 1))
    else:
        p = 0.0 if mean_diff != 0 else 1.0
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot_low, boot_high = np.percentile(d[draws].mean(axis=1), [2.5, 97.5])
    ci = (mean_diff - half, mean_diff + half)
    return PairedResult(tuple(seeds), n, mean_a, mean_b, mean_diff, sd, *ci, p, float(boot_low), float(boot_high))


def holm(pvalues: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p values, in the order given.

    With the m non-missing p values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    max over j <= i of min(1, (m - j + 1) p_(j)): monotone in the sorted order and capped at 1. Rejecting where
    the adjusted value is below alpha controls the family-wise error rate at alpha. Missing p values (NaN: a
    comparison without a test) stay NaN and do not count in m. Raises ValueError for a value outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a flat sequence, got shape {p.shape}")
    present = ~np.isnan(p)
    if ((p[present] < 0) | (p[present] > 1)).any():
        raise ValueError(f"pvalues: expected values in [0, 1], got {p[present][(p[present] < 0) | (p[present] > 1)]}")
    out = np.full(p.shape, np.nan)
    values = p[present]
    m = len(values)
    order = np.argsort(values, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    out[present] = adjusted
    return out


def verdict_of(result: PairedResult, adjusted_p: float, alpha: float = 0.05, expected_sign: int = 1) -> Verdict:
    """Whether a comparison confirms or refutes the advice, from its paired result and its Holm-adjusted p.

    `expected_sign` is the sign mean_diff (a - b) takes when the advice holds: +1 when `a` is the advised
    strategy (higher is better), -1 when `b` is. The verdict is "confirmed" when sign(mean_diff) equals
    `expected_sign` and adjusted_p < alpha, "refuted" when sign(mean_diff) is the opposite and adjusted_p < alpha,
    and "inconclusive" otherwise: adjusted_p >= alpha, a zero difference, or fewer than 2 common seeds (NaN p).
    Raises ValueError when expected_sign is not +1 or -1 or alpha is not in (0, 1).
    """
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign: expected +1 or -1, got {expected_sign}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    if result.n < 2 or not adjusted_p < alpha or not result.mean_diff:  # a NaN p or mean is never < alpha
        return "inconclusive"
    return "confirmed" if np.sign(result.mean_diff) == expected_sign else "refuted"


@dataclass(frozen=True)
class SeedVariance:
    """Variance components of a metric over a crossed design of data seeds (rows) and training seeds (columns).

    data, train: variance of the data draw's and of the training seed's effects; residual: their interaction and
    the noise, which one run per (data seed, training seed) cannot tell apart. share_*: each component over their
    sum. total: the sample variance (ddof 1) of the per-pair scores. note: "" or why components are NaN.
    """

    n_data_seeds: int
    n_train_seeds: int
    total: float
    data: float
    train: float
    residual: float
    share_data: float
    share_train: float
    share_residual: float
    note: str = ""


def seed_variance(
    rows: pd.DataFrame, metric: str = "metric_top1", data_seed: str = "data_seed", train_seed: str = "train_seed"
) -> SeedVariance:
    """Split a cell's seed variance into the data draw's share and the training seed's share.

    `rows`: one row per run with columns `data_seed` (the seed drawing the data subset), `train_seed` (the seed
    initialising training) and `metric`; rows of one (data seed, training seed) pair are averaged first. On a
    complete crossing of I >= 2 data seeds and J >= 2 training seeds, the two-way random-effects ANOVA without
    replication, y_ij = mu + a_i + b_j + e_ij, gives with row means y_i., column means y_.j and grand mean y..:
    MS_data = J sum_i (y_i. - y..)^2 / (I-1), MS_train = I sum_j (y_.j - y..)^2 / (J-1),
    MS_res = sum_ij (y_ij - y_i. - y_.j + y..)^2 / ((I-1)(J-1)), and the method-of-moments components
    data = max(0, (MS_data - MS_res) / J), train = max(0, (MS_train - MS_res) / I), residual = MS_res.
    Where the effects cannot be separated the components are NaN and `note` says why: each data seed ran with a
    single training seed (the two move together), a single data seed or training seed, or an incomplete crossing.
    Raises ValueError when a column is missing.
    """
    missing = [c for c in (metric, data_seed, train_seed) if c not in rows]
    if missing:
        raise ValueError(f"seed_variance: missing column {', '.join(repr(c) for c in missing)}")
    scores = rows.assign(_y=pd.to_numeric(rows[metric], errors="coerce")).dropna(subset=["_y"])
    table = scores.groupby([data_seed, train_seed])["_y"].mean().unstack(train_seed)
    n_i, n_j = table.shape
    pairs = table.to_numpy(dtype=float)[table.notna().to_numpy()]
    total = float(pairs.var(ddof=1)) if len(pairs) > 1 else math.nan
    note = ""
    if n_i and (table.notna().sum(axis=1) == 1).all() and n_j > 1:
        note = "each data seed ran with one training seed: data and training variance cannot be separated"
    elif n_i < 2 or n_j < 2:
        note = f"{n_i} data seed(s) x {n_j} training seed(s): separating them needs at least 2 of each"
    elif table.isna().any().any():
        note = f"incomplete crossing: {int(table.isna().sum().sum())} (data seed, training seed) pair(s) missing"
    if note:
        nan = math.nan
        return SeedVariance(n_i, n_j, total, nan, nan, nan, nan, nan, nan, note)
    y = table.to_numpy(dtype=float)
    grand, row_means, col_means = y.mean(), y.mean(axis=1), y.mean(axis=0)
    ms_data = n_j * float(((row_means - grand) ** 2).sum()) / (n_i - 1)
    ms_train = n_i * float(((col_means - grand) ** 2).sum()) / (n_j - 1)
    residuals = y - row_means[:, None] - col_means[None, :] + grand
    ms_res = float((residuals**2).sum()) / ((n_i - 1) * (n_j - 1))
    data, train = max(0.0, (ms_data - ms_res) / n_j), max(0.0, (ms_train - ms_res) / n_i)
    parts = data + train + ms_res
    shares = (data / parts, train / parts, ms_res / parts) if parts > 0 else (math.nan,) * 3
    return SeedVariance(n_i, n_j, total, data, train, ms_res, *shares)
