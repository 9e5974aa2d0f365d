"""Expected validation performance as a function of the search budget (Dodge et al. 2019, "Show your work").

A search ran N samples (hyperparameter settings). Drawing n of them with replacement from those N and keeping the
best on validation gives a random result; its expectation, for n = 1..N, is the tuning curve: how good a strategy
looks with a budget of n samples. With the validation scores sorted, v_(1) <= ... <= v_(N), the empirical CDF
gives P(max of n = v_(i)) = (i/N)^n - ((i-1)/N)^n, so E[max of n] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n]. Tied
scores form one group whose probability is (C_g/N)^n - (C_(g-1)/N)^n, C_g counting the samples up to and
including the group. The test score reported is the selected sample's: when several samples tie at the best
validation score the selection is a random one among them, so the group contributes its mean test score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

CURVE_COLUMNS = ["n", "expected_val", "sd_val", "expected_test", "sd_test"]
_NOT_SETTINGS = ("hp_total_steps",)  # derived from the data and the budget, not a searched setting


def expected_max_curve(
    val: Sequence[float] | np.ndarray | pd.Series,
    test: Sequence[float] | np.ndarray | pd.Series | None = None,
    n_max: int | None = None,
) -> pd.DataFrame:
    """The tuning curve of one search: for n = 1..`n_max` (default N), the expectation and sd of the best
    validation score among n samples drawn with replacement, and of the test score of the sample selected.

    `val`: one validation score per sample (samples without one, NaN, are left out); `test`: the samples' test
    scores in the same order, or None (test columns NaN). With P_g(n) the probability that the best of n lies in
    tie group g (module docstring), expected_val = sum_g P_g u_g and sd_val = sqrt(sum_g P_g (u_g - expected_val)^2)
    for the group's score u_g; expected_test and sd_test likewise with the group's mean test score and the mean
    of its squared deviations (the selected sample is uniform within the group). Returns the columns
    ``CURVE_COLUMNS``. Raises ValueError when no sample has a validation score, `test` differs in length or lacks
    a score where `val` has one, or `n_max` < 1.
    """
    v = np.asarray(val, dtype=float)
    scored = ~np.isnan(v)
    v = v[scored]
    if not len(v):
        raise ValueError("val: expected at least one sample with a validation score, got none")
    n_max = len(v) if n_max is None else n_max
    if n_max < 1:
        raise ValueError(f"n_max: expected at least 1, got {n_max}")
    values, group, counts = np.unique(v, return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts) / len(v)
    n = np.arange(1, n_max + 1)
    probability = cdf[None, :] ** n[:, None] - np.concatenate(([0.0], cdf[:-1]))[None, :] ** n[:, None]
    expected_val, sd_val = _moments(probability, values, np.zeros_like(values))
    if test is None:
        expected_test = sd_test = np.full(n_max, np.nan)
    else:
        t = np.asarray(test, dtype=float)
        if t.shape != scored.shape:
            raise ValueError(f"test: expected {len(scored)} scores (one per sample), got {len(t)}")
        t = t[scored]
        if np.isnan(t).any():
            raise ValueError("test: missing score for a sample that has a validation score")
        mean = np.bincount(group, weights=t) / counts
        spread = np.bincount(group, weights=(t - mean[group]) ** 2) / counts
        expected_test, sd_test = _moments(probability, mean, spread)
    return pd.DataFrame(
        {"n": n, "expected_val": expected_val, "sd_val": sd_val, "expected_test": expected_test, "sd_test": sd_test}
    )


def _moments(probability: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `probability` (over groups): the mixture's mean and sd, for groups of `mean` and variance
    `spread` (law of total variance: E[Var] + Var[E])."""
    expected = probability @ mean
    variance = probability @ spread + (probability * (mean[None, :] - expected[:, None]) ** 2).sum(axis=1)
    return expected, np.sqrt(np.maximum(variance, 0.0))


def tuning_curves(
    rows: pd.DataFrame,
    keys: Sequence[str],
    val: str = "metric_val_top1",
    test: str | None = "metric_top1",
    sample: Sequence[str] | None = None,
    n_max: int | None = None,
) -> pd.DataFrame:
    """Tuning curves of every `keys` group (e.g. dataset, data, entry; or strategy, regime) as one long table.

    `rows`: one row per trial (``ok`` rows); a sample is one combination of the `sample` columns (default: every
    ``hp_*`` column but hp_total_steps) within a group, scored by the mean of `val` and of `test` over its seeds
    (the seeds it ran on; a two-stage search's selected setting has more). Rows without a `val` score are left
    out. Samples of different cells pooled under one group compete as one search. Returns the `keys` columns,
    n_samples (N of the group) and ``CURVE_COLUMNS``, n running to `n_max` (default each group's N). Raises
    ValueError when `keys` is empty, a column is missing, or as ``expected_max_curve`` does.
    """
    if not keys:
        raise ValueError("keys: expected at least one column to group by (one search: expected_max_curve)")
    columns = [*keys, val] + ([test] if test is not None else []) + list(sample or [])
    missing = [c for c in columns if c not in rows]
    if missing:
        raise ValueError(f"tuning_curves: missing column {', '.join(repr(c) for c in missing)}")
    if sample is None:
        sample = sorted(c for c in rows.columns if c.startswith("hp_") and c not in _NOT_SETTINGS)
    scores = [val] + ([test] if test is not None else [])
    usable = rows.assign(**{c: pd.to_numeric(rows[c], errors="coerce") for c in scores}).dropna(subset=[val])
    out_columns = [*keys, "n_samples", *CURVE_COLUMNS]
    if usable.empty:
        return pd.DataFrame(columns=out_columns)
    samples = usable.groupby([*keys, *sample], dropna=False, sort=True)[scores].mean().reset_index()
    curves = []
    for group_key, group in samples.groupby(list(keys), dropna=False, sort=True):
        curve = expected_max_curve(group[val], group[test] if test is not None else None, n_max)
        curves.append(curve.assign(**dict(zip(keys, group_key)), n_samples=len(group)))
    return pd.concat(curves, ignore_index=True)[out_columns]
