"""Paired differences, Holm's adjustment, verdicts and the seed variance split (bench.analysis.paired)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bench.analysis.paired import holm, paired_difference, seed_variance, verdict_of

# The example: five seeds that shift both strategies alike, and a difference of about one point.
OFFSET = np.array([-2.0, -0.5, 0.0, 0.8, 1.7]) * 0.62
B = 80 + OFFSET
A = B + np.array([1.2, 0.8, 1.0, 1.3, 0.7])


def by_seed(values: np.ndarray | list[float], seeds: list[int] | None = None) -> pd.Series:
    return pd.Series(values, index=seeds if seeds is not None else range(len(values)), dtype=float)


def test_pairing_removes_the_shared_seed_offset() -> None:
    result = paired_difference(by_seed(A), by_seed(B))
    student = st.ttest_ind(A, B).pvalue
    welch = st.ttest_ind(A, B, equal_var=False).pvalue
    assert result.p_value == pytest.approx(st.ttest_rel(A, B).pvalue, rel=1e-12)
    assert result.p_value < 0.002 and min(student, welch) > 0.09  # 0.0009 paired against 0.094 unpaired
    assert result.p_value * 50 < min(student, welch)
    assert result.n == 5 and result.seeds == (0, 1, 2, 3, 4) and result.note == ""
    assert result.mean_diff == pytest.approx(1.0) and result.ci_low > 0


def test_numbers_match_a_hand_computation() -> None:
    # d = (1, 1.5, 1): mean 7/6, sd sqrt(1/12), t = 7; the t distribution with 2 degrees of freedom has
    # sf(t) = (1 - t / sqrt(t^2 + 2)) / 2 and quantile q(p) = (2p - 1) / sqrt(2 p (1 - p)).
    result = paired_difference(by_seed([1, 2.5, 3]), by_seed([0, 1, 2]))
    sd = math.sqrt(1 / 12)
    assert result.mean_diff == pytest.approx(7 / 6)
    assert result.sd_diff == pytest.approx(sd)
    assert result.p_value == pytest.approx(1 - 7 / math.sqrt(51))
    q = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (7 / 6 - q * sd / math.sqrt(3), 7 / 6 + q * sd / math.sqrt(3))
    )
    assert (result.mean_a, result.mean_b) == pytest.approx((6.5 / 3, 1.0))


def test_only_common_seeds_with_a_score_are_paired() -> None:
    a = by_seed([70.0, 72.0, 71.0, np.nan], seeds=[0, 1, 2, 3])
    b = by_seed([69.0, 70.0, 68.0, 67.0], seeds=[1, 2, 3, 0])
    result = paired_difference(a, b)
    assert result.seeds == (0, 1, 2) and result.n == 3
    assert result.mean_diff == pytest.approx(np.mean([70 - 67, 72 - 69, 71 - 70]))


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_means() -> None:
    # Two differences, 0 and 2: resampled means are 0, 1, 2 with probabilities 1/4, 1/2, 1/4.
    result = paired_difference(by_seed([1.0, 3.0]), by_seed([1.0, 1.0]))
    assert (result.boot_low, result.boot_high) == (0.0, 2.0)
    first, second = paired_difference(by_seed(A), by_seed(B)), paired_difference(by_seed(A), by_seed(B))
    assert (first.boot_low, first.boot_high) == (second.boot_low, second.boot_high)  # a fixed generator seed
    assert first.boot_low < first.mean_diff < first.boot_high


def test_bootstrap_interval_is_near_the_t_interval_on_many_normal_seeds() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    result = paired_difference(by_seed(a), by_seed(b))
    width = result.ci_high - result.ci_low
    assert abs(result.boot_low - result.ci_low) < 0.1 * width
    assert abs(result.boot_high - result.ci_high) < 0.1 * width
    other = paired_difference(by_seed(a), by_seed(b), seed=1)
    assert (other.boot_low, other.boot_high) != (result.boot_low, result.boot_high)


@pytest.mark.parametrize(("a", "b", "n"), [([71.0], [70.0], 1), ([71.0], [], 0)])
def test_fewer_than_two_seeds_give_nans_and_say_so(a: list[float], b: list[float], n: int) -> None:
    result = paired_difference(by_seed(a), by_seed(b))
    assert result.n == n and "at least 2" in result.note
    assert all(math.isnan(v) for v in (result.sd_diff, result.ci_low, result.ci_high, result.p_value, result.boot_low))
    assert verdict_of(result, result.p_value) == "inconclusive"


def test_identical_differences_have_the_t_tests_limits() -> None:
    assert paired_difference(by_seed([2.0, 3.0, 4.0]), by_seed([1.0, 2.0, 3.0])).p_value == 0.0
    same = paired_difference(by_seed([2.0, 3.0]), by_seed([2.0, 3.0]))
    assert same.p_value == 1.0 and same.mean_diff == 0.0


def test_a_repeated_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed 1 appears more than once"):
        paired_difference(by_seed([1.0, 2.0], seeds=[1, 1]), by_seed([1.0, 2.0]))


def test_holm_on_hand_worked_examples() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm(pd.Series([0.01, np.nan, 0.04]))
    assert out[[0, 2]] == pytest.approx([0.02, 0.04]) and math.isnan(out[1])
    assert holm([]).shape == (0,)


def _holm_by_rejection(p: list[float]) -> list[float]:
    """The smallest alpha at which Holm's step-down test rejects each hypothesis, by trying every candidate."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    candidates = sorted({min(1.0, (m - k) * p[i]) for k, i in enumerate(order)} | {1.0})
    adjusted = [1.0] * m
    for i in range(m):
        for alpha in candidates:
            rejected = set()
            for k, j in enumerate(order):  # reject in order while p_(k) <= alpha / (m - k), then stop
                if p[j] * (m - k) > alpha * (1 + 1e-12):
                    break
                rejected.add(j)
            if i in rejected:
                adjusted[i] = alpha
                break
    return adjusted


def test_holm_matches_the_step_down_test_it_summarises() -> None:
    rng = np.random.default_rng(0)
    for m in (1, 2, 3, 5, 8):
        for draw in range(40):
            p = rng.choice([0.001, 0.01, 0.02, 0.04, 0.2, 0.5], size=m) if draw % 2 else rng.uniform(0, 0.3, m)
            assert holm(list(p)) == pytest.approx(_holm_by_rejection(list(p)), abs=1e-12)


def test_holm_refuses_values_outside_zero_one() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_verdicts() -> None:
    better = paired_difference(by_seed(A), by_seed(B))  # a - b > 0
    worse = paired_difference(by_seed(B), by_seed(A))
    assert verdict_of(better, 0.01) == "confirmed"
    assert verdict_of(worse, 0.01) == "refuted"
    assert verdict_of(worse, 0.01, expected_sign=-1) == "confirmed"
    assert verdict_of(better, 0.01, expected_sign=-1) == "refuted"
    assert verdict_of(better, 0.05) == "inconclusive"  # adjusted p must be below alpha
    assert verdict_of(better, 0.05, alpha=0.1) == "confirmed"
    assert verdict_of(better, math.nan) == "inconclusive"
    tie = paired_difference(by_seed([1.0, 2.0]), by_seed([1.0, 2.0]))
    assert verdict_of(tie, 0.0) == "inconclusive"
    with pytest.raises(ValueError, match="expected_sign"):
        verdict_of(better, 0.01, expected_sign=0)
    with pytest.raises(ValueError, match="alpha"):
        verdict_of(better, 0.01, alpha=5)


def crossed(table: np.ndarray, metric: str = "metric_top1") -> pd.DataFrame:
    rows = [(i, j, table[i, j]) for i, j in itertools.product(range(table.shape[0]), range(table.shape[1]))]
    return pd.DataFrame(rows, columns=["data_seed", "train_seed", metric])


def test_seed_variance_on_a_hand_worked_table() -> None:
    # data effects -2, +2 (variance 8), training effects -1, +1 (variance 2), no interaction
    result = seed_variance(crossed(np.array([[1.0, 3.0], [5.0, 7.0]])))
    assert (result.data, result.train, result.residual) == pytest.approx((8.0, 2.0, 0.0))
    assert (result.share_data, result.share_train, result.share_residual) == pytest.approx((0.8, 0.2, 0.0))
    assert result.total == pytest.approx(np.var([1, 3, 5, 7], ddof=1)) and result.note == ""


def test_seed_variance_recovers_known_components() -> None:
    rng = np.random.default_rng(1)
    n_data, n_train = 60, 60
    y = rng.normal(0, 2.0, (n_data, 1)) + rng.normal(0, 1.0, (1, n_train)) + rng.normal(0, 0.5, (n_data, n_train))
    result = seed_variance(crossed(y))
    # the components' standard errors at 60 levels are about 20% of the variance
    assert result.data == pytest.approx(4.0, rel=0.4)
    assert result.train == pytest.approx(1.0, rel=0.4)
    assert result.residual == pytest.approx(0.25, rel=0.1)
    assert result.share_data + result.share_train + result.share_residual == pytest.approx(1.0)


def test_seed_variance_averages_repeated_pairs() -> None:
    rows = crossed(np.array([[1.0, 3.0], [5.0, 7.0]]))
    repeated = pd.concat(
        [rows.assign(metric_top1=rows["metric_top1"] - 1), rows.assign(metric_top1=rows["metric_top1"] + 1)]
    )
    assert seed_variance(repeated).data == pytest.approx(8.0)


def test_seed_variance_says_when_it_cannot_separate() -> None:
    together = pd.DataFrame({"data_seed": [0, 1, 2], "train_seed": [0, 1, 2], "metric_top1": [70.0, 72.0, 71.0]})
    result = seed_variance(together)
    assert "cannot be separated" in result.note and math.isnan(result.data) and math.isnan(result.share_train)
    assert result.total == pytest.approx(1.0)
    one_data = seed_variance(crossed(np.array([[1.0, 2.0, 4.0]])))
    assert "at least 2" in one_data.note and math.isnan(one_data.data)
    holes = crossed(np.array([[1.0, 3.0], [5.0, 7.0], [2.0, 2.5]])).iloc[:-1]
    assert "incomplete crossing: 1" in seed_variance(holes).note
    with pytest.raises(ValueError, match="'train_seed'"):
        seed_variance(together.drop(columns="train_seed"))
