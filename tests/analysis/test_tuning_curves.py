"""Expected maximum validation score over n samples and the selected sample's test score
(bench.analysis.tuning_curves)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.analysis.tuning_curves import CURVE_COLUMNS, expected_max_curve, tuning_curves

# Ten samples of a search; two pairs tie on validation (71.0 and 80.5) with different test scores.
VAL = np.array([62.0, 71.0, 71.0, 74.5, 66.0, 80.5, 80.5, 78.0, 69.0, 75.0])
TEST = np.array([60.0, 70.0, 66.0, 72.0, 65.0, 77.0, 79.5, 78.5, 67.0, 73.0])


def simulate(val: np.ndarray, test: np.ndarray, n: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw n samples with replacement `reps` times; keep the best on validation, a random one among ties."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(val), size=(reps, n))
    scores = val[draws]
    best = scores == scores.max(axis=1, keepdims=True)
    chosen = np.where(best, rng.random(draws.shape), -1.0).argmax(axis=1)
    picked = draws[np.arange(reps), chosen]
    return val[picked], test[picked]


@pytest.mark.parametrize("n", [1, 2, 4, 10, 25])
def test_curve_matches_a_monte_carlo_simulation(n: int) -> None:
    reps = 200_000
    curve = expected_max_curve(VAL, TEST, n_max=25).set_index("n").loc[n]
    sim_val, sim_test = simulate(VAL, TEST, n, reps, seed=n)
    # tolerance: 5 standard errors of the simulated mean (sd / sqrt(reps)), a floor for sd 0
    for expected, sd, simulated in (
        (curve["expected_val"], curve["sd_val"], sim_val),
        (curve["expected_test"], curve["sd_test"], sim_test),
    ):
        assert expected == pytest.approx(simulated.mean(), abs=5 * sd / np.sqrt(reps) + 1e-9)
        assert sd == pytest.approx(simulated.std(), abs=0.02 * sd + 1e-9)


def test_a_hand_worked_curve() -> None:
    # two samples: the best of two is 2 unless both draws are the first (1/4)
    curve = expected_max_curve([1.0, 2.0], [10.0, 20.0])
    assert list(curve.columns) == CURVE_COLUMNS and list(curve["n"]) == [1, 2]
    assert list(curve["expected_val"]) == pytest.approx([1.5, 1.75])
    assert list(curve["expected_test"]) == pytest.approx([15.0, 17.5])
    assert curve["sd_val"].iloc[1] == pytest.approx(np.sqrt(0.25 * 0.75**2 + 0.75 * 0.25**2))


def test_one_sample_is_the_mean_and_many_approach_the_best() -> None:
    curve = expected_max_curve(VAL, TEST, n_max=2000)
    assert curve["expected_val"].iloc[0] == pytest.approx(VAL.mean())
    assert curve["expected_test"].iloc[0] == pytest.approx(TEST.mean())
    assert curve["sd_val"].iloc[0] == pytest.approx(VAL.std())
    assert curve["expected_val"].iloc[-1] == pytest.approx(VAL.max(), abs=1e-9)
    assert curve["expected_test"].iloc[-1] == pytest.approx((77.0 + 79.5) / 2, abs=1e-9)  # the tied pair's mean
    assert curve["sd_val"].iloc[-1] == pytest.approx(0.0, abs=1e-6)
    assert (np.diff(curve["expected_val"]) >= -1e-12).all()


def test_curve_without_test_scores_and_with_unscored_samples() -> None:
    curve = expected_max_curve(pd.Series([70.0, np.nan, 74.0]), n_max=3)
    assert len(curve) == 3 and curve["expected_test"].isna().all()
    assert curve["expected_val"].iloc[0] == pytest.approx(72.0)  # the NaN sample is left out


def test_curve_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        expected_max_curve([np.nan])
    with pytest.raises(ValueError, match="one per sample"):
        expected_max_curve([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="missing score"):
        expected_max_curve([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="n_max"):
        expected_max_curve([1.0], n_max=0)


def search_rows() -> pd.DataFrame:
    """Two strategies of one cell: full tried two learning rates on two seeds, linear_probe one."""
    rows = [
        ("full", 0.1, 0, 70.0, 60.0, 100),
        ("full", 0.1, 1, 72.0, 62.0, 120),  # hp_total_steps differs by seed: the setting is the same
        ("full", 0.01, 0, 80.0, 75.0, 100),
        ("full", 0.01, 1, 82.0, 77.0, 120),
        ("full", 0.001, 0, np.nan, np.nan, 100),  # no validation score: left out
        ("linear_probe", 0.1, 0, 65.0, 64.0, 100),
        ("linear_probe", 0.1, 1, 67.0, 66.0, 120),
    ]
    columns = ["strategy", "hp_lr", "seed", "metric_val_top1", "metric_top1", "hp_total_steps"]
    return pd.DataFrame(rows, columns=columns).assign(dataset="pets", data="10%")


def test_tuning_curves_average_each_setting_over_seeds() -> None:
    curves = tuning_curves(search_rows(), keys=["dataset", "data", "strategy"])
    assert list(curves.columns) == ["dataset", "data", "strategy", "n_samples", *CURVE_COLUMNS]
    full = curves[curves["strategy"] == "full"].set_index("n")
    # samples: lr 0.1 (val 71, test 61) and lr 0.01 (val 81, test 76); the best of two is lr 0.01 with p 3/4
    assert full["n_samples"].tolist() == [2, 2]
    assert full["expected_val"].tolist() == pytest.approx([76.0, 71 / 4 + 81 * 3 / 4])
    assert full["expected_test"].tolist() == pytest.approx([68.5, 61 / 4 + 76 * 3 / 4])
    probe = curves[curves["strategy"] == "linear_probe"]
    assert probe[["n", "expected_val", "expected_test"]].values.tolist() == [[1, 66.0, 65.0]]


def test_tuning_curves_to_a_common_budget_and_without_test() -> None:
    curves = tuning_curves(search_rows(), keys=["strategy"], test=None, n_max=4)
    assert curves.groupby("strategy")["n"].max().tolist() == [4, 4]
    assert curves["expected_test"].isna().all()
    assert tuning_curves(search_rows().iloc[4:5], keys=["strategy"]).empty


def test_tuning_curves_refuse_missing_columns() -> None:
    with pytest.raises(ValueError, match="'regime'"):
        tuning_curves(search_rows(), keys=["regime"])
    with pytest.raises(ValueError, match="keys"):
        tuning_curves(search_rows(), keys=[])
