"""bench.results.leaderboard on hand-made result tables whose answers are computed by hand below."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_row, write_run
from scipy import stats as st

from bench.analysis import Analysis
from bench.errors import UserError
from bench.results.leaderboard import (
    DataThresholds,
    display_leaderboard,
    display_matrix,
    excluded_trials,
    format_table,
    leaderboard,
    leaderboard_command,
    overall_ranking,
    prepare,
    regime_matrix,
    run_summary,
    seed_stats,
    tuned_runs,
)

T_975_DF2 = 4.302652729749464  # Student t, 97.5th percentile, 2 degrees of freedom (printed tables: 4.303)


def seeds(values: list[float], **fields) -> list[dict]:
    """One row per seed with the given test top-1 values (and val top-1 equal to them unless given)."""
    val = fields.pop("val", None)
    return [
        make_row(seed=i, metric_top1=v, metric_val_top1=v if val is None else val, **fields)
        for i, v in enumerate(values)
    ]


def frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for group in groups for row in group])


def test_seed_stats_match_hand_computation() -> None:
    s = seed_stats([80.0, 82.0, 84.0])
    assert s["n_seeds"] == 3
    assert s["mean"] == pytest.approx(82.0)
    assert s["std"] == pytest.approx(2.0)
    assert s["ci95"] == pytest.approx(T_975_DF2 * 2.0 / math.sqrt(3))  # 4.968
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((82.0 - 4.96827, 82.0 + 4.96827), abs=1e-4)
    one = seed_stats([50.0])
    assert one["mean"] == 50.0 and math.isnan(one["ci95"])


def test_leaderboard_aggregates_over_seeds_and_marks_ties() -> None:
    df = frame(
        seeds([80.0, 82.0, 84.0], strategy="linear_probe", metric_macro_f1=70.0),
        seeds([78.0, 80.0, 82.0], strategy="full"),  # CI [75.0, 85.0] overlaps the leader's [77.0, 87.0]
        seeds([50.0, 51.0, 52.0], strategy="lp_ft"),  # far below: a new rank...
        seeds([49.0, 50.0, 51.0], strategy="full", pretrained=False),  # ...tied with this one
    )
    board = leaderboard(df, by="dataset")
    assert list(board["entry"]) == [
        "efficientnet_lite0 / linear_probe",
        "efficientnet_lite0 / full",
        "efficientnet_lite0 / lp_ft",
        "efficientnet_lite0 scratch / full",
    ]
    assert list(board["rank"]) == ["=1", "=1", "=3", "=3"]
    lead = board.iloc[0]
    assert lead["n_seeds"] == 3 and lead["mean"] == pytest.approx(82.0)
    assert lead["ci95"] == pytest.approx(T_975_DF2 * 2.0 / math.sqrt(3))
    assert lead["macro_f1_mean"] == pytest.approx(70.0)
    assert (lead["dataset"], lead["data"], lead["per_class"]) == ("digits", "100%", 100)


def test_clearly_separated_entries_get_plain_ranks() -> None:
    df = frame(seeds([90.0, 91.0, 92.0], strategy="linear_probe"), seeds([50.0, 51.0, 52.0], strategy="full"))
    assert list(leaderboard(df)["rank"]) == ["1", "2"]


def test_hp_selection_uses_validation_never_test() -> None:
    # lr 1e-2 has the better validation score but the worse test score: it must be the one reported.
    df = frame(
        seeds([60.0, 61.0, 62.0], hp_lr=1e-2, val=90.0),
        seeds([95.0, 96.0, 97.0], hp_lr=1e-3, val=70.0),
        seeds([40.0, 40.0, 40.0], hp_lr=1e-2, val=99.0, strategy="full"),
        seeds([99.0, 99.0, 99.0], hp_lr=1e-4, val=10.0, strategy="full"),
    )
    board = leaderboard(df).set_index("strategy")
    assert board.loc["linear_probe", "mean"] == pytest.approx(61.0)
    assert board.loc["linear_probe", "selected"] == "hp_lr=0.01"
    assert board.loc["linear_probe", "selection"] == "val_top1"
    assert board.loc["linear_probe", "n_seeds"] == 3 and board.loc["linear_probe", "n_settings"] == 2
    assert board.loc["full", "mean"] == pytest.approx(40.0)


def test_a_search_s_stopped_samples_are_never_ranked_but_their_cost_counts() -> None:
    # Three searched samples of the linear probe: one stopped early (its validation score, no test score); of
    # the two finished, lr 3e-2 wins on validation and loses on test. The cost counts all six trials.
    stopped = [
        make_row(seed=i, status="stopped", hp_lr=0.3, metric_top1=None, metric_val_top1=20.0, train_seconds=1.0)
        for i in range(2)
    ]
    df = frame(
        seeds([70.0, 72.0], hp_lr=3e-2, val=88.0, train_seconds=10.0),
        seeds([90.0, 92.0], hp_lr=3e-3, val=80.0, train_seconds=10.0),
        stopped,
    )
    board = leaderboard(df)
    (row,) = board.to_dict("records")
    assert row["mean"] == pytest.approx(71.0) and row["selected"] == "hp_lr=0.03"
    assert (row["trials_run"], row["trials_stopped"], row["compute_seconds"]) == (6, 2, pytest.approx(42.0))
    assert (
        "search cost" in display_leaderboard(board) and "6 trials (2 stopped)" in display_leaderboard(board).iloc[0, -1]
    )


def test_no_sweep_means_no_selection_label() -> None:
    board = leaderboard(frame(seeds([80.0, 90.0])))
    assert board.loc[0, "selected"] == "" and board.loc[0, "selection"] == "single setting"


def test_cells_split_by_fraction_and_shots() -> None:
    df = frame(
        seeds([50.0, 60.0], data_fraction=0.1, n_train=100),
        seeds([80.0, 90.0], data_fraction=1.0, n_train=1000),
        seeds([30.0, 40.0], data_fraction=None, shots=5, n_train=50),
    )
    board = leaderboard(df)
    assert list(board["data"]) == ["5-shot", "10%", "100%"]  # ordered by images per class
    assert list(board["per_class"]) == [5, 10, 100]
    assert list(board["mean"]) == pytest.approx([35.0, 55.0, 85.0])


def test_failed_and_diverged_trials_are_excluded_and_listed() -> None:
    df = frame(
        seeds([80.0, 90.0]),
        [
            make_row(seed=7, status="failed", error="OOM", metric_top1=None),
            make_row(seed=8, status="diverged", error="loss is nan", metric_top1=10.0),
        ],
    )
    board = leaderboard(df)
    assert board.loc[0, "n_seeds"] == 2 and board.loc[0, "mean"] == pytest.approx(85.0)
    excluded = excluded_trials(df)
    assert sorted(excluded["status"]) == ["diverged", "failed"]
    assert "loss is nan" in set(excluded["error"])


def test_strategy_from_freeze_when_no_strategy_column() -> None:
    df = frame(seeds([70.0], freeze=0.5, strategy="partial"), seeds([60.0], freeze=1.0, strategy=None))
    df = df.drop(columns=[]).assign(strategy=[None, None])
    assert sorted(prepare(df)["strategy"]) == ["freeze 0.5", "linear_probe"]


def test_merged_runs_count_each_seed_once(tmp_path: Path) -> None:
    rows = seeds([80.0, 82.0, 84.0])
    write_run(tmp_path / "a", rows[:2])
    write_run(tmp_path / "b", rows[1:])  # seed 1 appears in both runs
    out = leaderboard_command([tmp_path / "a", tmp_path / "b"], by="dataset", fmt="csv")
    board = pd.read_csv(pd.io.common.StringIO(out))
    assert board.loc[0, "n_seeds"] == 3 and board.loc[0, "mean"] == pytest.approx(82.0)


def test_overall_ranking_mean_rank_and_logit_mean() -> None:
    df = frame(
        seeds([90.0], dataset="d1", strategy="linear_probe"),
        seeds([80.0], dataset="d1", strategy="full"),
        seeds([70.0], dataset="d1", strategy="lp_ft"),
        seeds([60.0], dataset="d2", strategy="linear_probe"),
        seeds([70.0], dataset="d2", strategy="full"),
        seeds([50.0], dataset="d2", strategy="lp_ft"),
    )
    overall = overall_ranking(df).set_index("strategy")
    assert overall.loc["linear_probe", "mean_rank"] == 1.5 and overall.loc["full", "mean_rank"] == 1.5
    assert overall.loc["lp_ft", "mean_rank"] == 3.0
    logit = lambda pct: math.log(pct / (100 - pct))  # noqa: E731
    assert overall.loc["linear_probe", "mean_logit"] == pytest.approx((logit(90.0) + logit(60.0)) / 2)
    assert overall.loc["linear_probe", "logit_mean"] == pytest.approx(78.606, abs=1e-3)
    # Equal mean rank: the better logit-space mean goes first.
    assert list(overall.index) == ["linear_probe", "full", "lp_ft"]
    assert list(overall["n_datasets"]) == [2, 2, 2]


def _regime_rows(
    dataset: str, group: str, measured: str | None, per_class: int, results: dict[str, list[float]]
) -> list[dict]:
    rows = []
    for strategy, values in results.items():
        pretrained = not strategy.endswith("scratch")
        rows += seeds(
            values,
            dataset=dataset,
            dataset_group=group,
            similarity_regime=measured,
            n_train=per_class * 10,
            n_classes=10,
            strategy=strategy.split()[0],
            pretrained=pretrained,
        )
    return rows


def test_regime_matrix_verdicts() -> None:
    df = frame(
        # high (declared: natural) + sufficient: linear probe clearly best -> agrees
        _regime_rows("nat", "natural", None, 200, {"linear_probe": [90.0, 91.0, 92.0], "full": [70.0, 71.0, 72.0]}),
        # high (measured) + limited: overlap -> no clear winner
        _regime_rows(
            "nat2", "specialized", "high", 20, {"linear_probe": [60.0, 62.0, 64.0], "full": [61.0, 63.0, 65.0]}
        ),
        # low (measured) + sufficient: linear probe clearly beats full -> disagrees
        _regime_rows(
            "sat",
            "natural",
            "low",
            150,
            {"linear_probe": [90.0, 91.0, 92.0], "full": [80.0, 81.0, 82.0], "full scratch": [50.0, 50.0, 51.0]},
        ),
        # low + scarce: overlap -> agrees with "no safe recipe"
        _regime_rows("pcam", "specialized", None, 5, {"linear_probe": [55.0, 60.0, 65.0], "full": [50.0, 58.0, 66.0]}),
        # low + limited: a clear winner -> disagrees with "no safe recipe"
        _regime_rows("svhn", "structured", None, 50, {"lp_ft": [80.0, 81.0, 82.0], "linear_probe": [40.0, 41.0, 42.0]}),
    )
    matrix = regime_matrix(df).set_index(["similarity_regime", "data_regime"])
    # The unpaired rule, kept as interval_verdict: independent 95% intervals.
    assert matrix.loc[("high", "sufficient"), "interval_verdict"] == "agrees"
    assert matrix.loc[("high", "sufficient"), "best_strategy"] == "linear_probe"
    assert matrix.loc[("high", "sufficient"), "margin"] == pytest.approx(20.0)
    assert matrix.loc[("high", "sufficient"), "similarity_source"] == "declared"
    assert matrix.loc[("high", "limited"), "interval_verdict"] == "no clear winner"
    assert matrix.loc[("high", "limited"), "best_strategy"] == "full"
    assert matrix.loc[("low", "sufficient"), "interval_verdict"] == "disagrees"
    assert matrix.loc[("low", "sufficient"), "runner_up_strategy"] == "full"
    assert matrix.loc[("low", "scarce"), "interval_verdict"] == "agrees"
    assert matrix.loc[("low", "limited"), "interval_verdict"] == "disagrees"
    assert matrix.loc[("low", "limited"), "mean"] == pytest.approx(81.0)
    assert matrix.loc[("high", "scarce"), "verdict"] == "not measured"
    assert len(matrix) == 6
    # The paired rule: per-seed differences of the compared entries. Every difference here is constant except
    # in (low, scarce), so those tests are exact (p = 0): the overlap in (high, limited) hid that full beats the
    # probe by 1 point on every seed, which refutes "freeze" there.
    assert matrix.loc[("high", "sufficient"), "verdict"] == "confirmed"
    assert matrix.loc[("high", "sufficient"), "effect"] == pytest.approx(20.0)
    assert matrix.loc[("high", "limited"), "verdict"] == "refuted"
    assert matrix.loc[("high", "limited"), "effect"] == pytest.approx(-1.0)
    assert matrix.loc[("low", "sufficient"), "verdict"] == "refuted"
    assert matrix.loc[("low", "limited"), "verdict"] == "refuted"
    # (low, scarce): probe - full per seed = 5, 2, -1: mean 2, sd 3, t(0.975, 2) = 4.303: [-5.45, 9.45], not
    # within +-2 points (no equivalence) and p = 0.38 (no difference): inconclusive.
    scarce = matrix.loc[("low", "scarce")]
    assert scarce["verdict"] == "inconclusive" and scarce["n_pairs"] == 3
    assert (scarce["effect_ci_low"], scarce["effect_ci_high"]) == pytest.approx(
        (2 - 4.302653 * 3 / 3**0.5, 2 + 4.302653 * 3 / 3**0.5)
    )
    assert scarce["p_value"] == pytest.approx(st.ttest_rel([55.0, 60, 65], [50.0, 58, 66]).pvalue)
    assert "fewer than 5" in scarce["reason"]


def test_paired_verdicts_see_what_overlapping_intervals_hide_and_holm_corrects() -> None:
    # Five seeds whose offsets are shared by both strategies: the intervals overlap, the paired test does not.
    offsets = [0.0, 10.0, -8.0, 5.0, -4.0]
    probe = [70.0 + o for o in offsets]
    full = [70.0 + o - d for o, d in zip(offsets, [2.0, 3.0, 2.5, 3.5, 3.0])]
    df = frame(_regime_rows("nat", "natural", None, 200, {"linear_probe": probe, "full": full}))
    row = regime_matrix(df).set_index(["similarity_regime", "data_regime"]).loc[("high", "sufficient")]
    assert row["interval_verdict"] == "no clear winner"
    p = st.ttest_rel(probe, full).pvalue
    assert row["p_value"] == pytest.approx(p) and p < 0.001
    assert row["verdict"] == "confirmed" and row["n_pairs"] == 5 and row["effect"] == pytest.approx(2.8)
    # Two comparisons at p = 0.03 each: Holm multiplies the smaller by 2 -> 0.06, not below 0.05.
    a = [70.0, 71.0, 72.0, 73.0, 74.0]
    diffs = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    shift = 0.0
    while st.ttest_rel(a, list(np.array(a) - diffs - shift)).pvalue > 0.03:
        shift += 0.01
    b = list(np.array(a) - diffs - shift)
    p_one = st.ttest_rel(a, b).pvalue
    two = frame(
        _regime_rows("nat", "natural", None, 200, {"linear_probe": a, "full": b}),
        _regime_rows("sat", "structured", None, 200, {"full": a, "linear_probe": b}),
    )
    matrix = regime_matrix(two).set_index(["similarity_regime", "data_regime"])
    for cell in (("high", "sufficient"), ("low", "sufficient")):
        assert matrix.loc[cell, "p_value"] == pytest.approx(p_one)
        assert matrix.loc[cell, "p_holm"] == pytest.approx(2 * p_one) and 2 * p_one > 0.05
        assert matrix.loc[cell, "verdict"] == "inconclusive"
    # Alone, the same comparison is confirmed.
    alone = regime_matrix(frame(_regime_rows("nat", "natural", None, 200, {"linear_probe": a, "full": b})))
    assert alone.set_index(["similarity_regime", "data_regime"]).loc[("high", "sufficient"), "verdict"] == "confirmed"


def test_no_recipe_cells_are_confirmed_by_equivalence_within_two_points() -> None:
    best = [60.0, 50.0, 70.0, 65.0, 55.0]
    runner = [b - d for b, d in zip(best, [0.5, -0.3, 0.8, 0.2, 0.1])]
    df = frame(_regime_rows("pcam", "specialized", None, 5, {"linear_probe": best, "full": runner}))
    row = regime_matrix(df).set_index(["similarity_regime", "data_regime"]).loc[("low", "scarce")]
    assert row["effect_ci_low"] > -2 and row["effect_ci_high"] < 2 and row["p_holm"] >= 0.05
    assert row["verdict"] == "confirmed"


def test_regime_cell_averages_datasets_per_seed_and_thresholds_are_configurable() -> None:
    df = frame(
        _regime_rows("a", "natural", None, 200, {"linear_probe": [90.0, 80.0]}),
        _regime_rows("b", "natural", None, 300, {"linear_probe": [70.0, 60.0]}),
    )
    board = leaderboard(df, by="regime")
    assert len(board) == 1 and board.loc[0, "n_cells"] == 2
    assert board.loc[0, "mean"] == pytest.approx(75.0)
    assert board.loc[0, "std"] == pytest.approx(np.std([80.0, 70.0], ddof=1))  # per-seed means 80.0 and 70.0
    strict = leaderboard(df, by="regime", thresholds=DataThresholds(limited=10, sufficient=250))
    assert sorted(strict["data_regime"]) == ["limited", "sufficient"]


def test_single_seed_gives_no_clear_winner() -> None:
    df = frame(_regime_rows("nat", "natural", None, 200, {"linear_probe": [90.0], "full": [50.0]}))
    row = regime_matrix(df).set_index(["similarity_regime", "data_regime"]).loc[("high", "sufficient")]
    assert row["interval_verdict"] == "no clear winner" and "seeds" in row["interval_reason"]
    assert row["verdict"] == "inconclusive" and "fewer than 2 paired seeds" in row["reason"]


def test_format_table_and_run_summary() -> None:
    df = frame(seeds([80.0, 82.0, 84.0], strategy="linear_probe"), seeds([50.0, 51.0, 52.0], strategy="full"))
    md = format_table(pd.DataFrame({"a": [1.23456789, None], "b": ["x|y", "z"]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "|  | z |"]
    summary = run_summary(df)
    assert "| digits | 100% | efficientnet_lite0 / linear_probe | 82.0 ± 5.0 | 3 |" in summary
    with pytest.raises(ValueError, match="table format"):
        format_table(df, "xlsx")
    with pytest.raises(ValueError, match="grouping"):
        leaderboard(df, by="backbone")
    with pytest.raises(UserError, match="--by"):
        leaderboard_command([], by="backbone")


def test_leaderboard_command_markdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = write_run(tmp_path / "run", seeds([80.0, 90.0]) + [make_row(seed=5, status="failed", metric_top1=None)])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "trials.parquet").write_bytes(b"PAR1 truncated")
    text = leaderboard_command([run, tmp_path / "broken"], by="regime", fmt="md")
    assert "Regime matrix" in text and "efficientnet_lite0 / linear_probe" in text
    assert "1 trial(s) failed or diverged" in text
    err = capsys.readouterr().err
    assert f"{tmp_path / 'broken' / 'trials.parquet'}: not a readable Parquet file" in err


def test_regime_cell_compares_entries_on_common_cells_only() -> None:
    # linear_probe also ran on an easy dataset that full never saw: it must not inflate linear_probe's score.
    df = frame(
        _regime_rows("hard", "natural", None, 200, {"linear_probe": [60.0, 61.0, 62.0], "full": [70.0, 71.0, 72.0]}),
        _regime_rows("easy", "natural", None, 200, {"linear_probe": [99.0, 99.0, 99.0]}),
    )
    board = leaderboard(df, by="regime").set_index("strategy")
    assert board.loc["linear_probe", "mean"] == pytest.approx(61.0)
    assert board.loc["linear_probe", "cells_left_out"] == 1 and board.loc["full", "n_cells"] == 1
    row = regime_matrix(df).set_index(["similarity_regime", "data_regime"]).loc[("high", "sufficient")]
    assert row["verdict"] == "refuted" and row["best_strategy"] == "full"


def test_a_matrix_over_tuned_and_fixed_runs_states_both_verdicts_and_what_changed() -> None:
    # Fixed run: full fine-tuning at an lr too small loses to the probe (disagrees with "fine-tune").
    fixed = _regime_rows("sat", "structured", None, 150, {"linear_probe": [90.0, 91, 92], "full": [60.0, 61, 62]})
    # Tuned run: two lr samples per cell; full at its selected lr (best validation) beats the probe.
    tuned = []
    for lr, probe, full in [(1e-3, [90.0, 91, 92], [60.0, 61, 62]), (1e-2, [80.0, 81, 82], [95.0, 96, 97])]:
        for strategy, values in (("linear_probe", probe), ("full", full)):
            tuned += seeds(
                values,
                dataset="sat",
                dataset_group="structured",
                n_train=1500,
                n_classes=10,
                strategy=strategy,
                hp_lr=lr,
                run_id="run-tuned",
                train_seconds=5.0,
            )
    tuned.append(
        make_row(
            dataset="sat",
            dataset_group="structured",
            n_train=1500,
            strategy="full",
            hp_lr=1e-4,
            run_id="run-tuned",
            status="stopped",
            metric_top1=None,
            metric_val_top1=10.0,
            train_seconds=1.0,
        )
    )
    assert tuned_runs(frame(fixed, tuned)) == {"run-tuned"}
    alone = regime_matrix(frame(tuned)).set_index(["similarity_regime", "data_regime"]).loc[("low", "sufficient")]
    assert alone["verdict"] == "confirmed" and alone["hyperparameters"] == "tuned" and "fixed_verdict" not in alone
    assert (alone["trials_run"], alone["trials_stopped"], alone["compute_seconds"]) == (13, 1, 61.0)
    both = regime_matrix(frame(fixed, tuned)).set_index(["similarity_regime", "data_regime"])
    row = both.loc[("low", "sufficient")]
    assert (row["verdict"], row["fixed_verdict"], row["verdict_changed"]) == ("confirmed", "refuted", True)
    assert row["best_strategy"] == "full" and row["fixed_best_entry"].endswith("linear_probe")
    assert both.loc[("high", "scarce"), "verdict_changed"] is None  # measured in neither
    shown = display_matrix(both.reset_index()).set_index(["similarity", "data"]).loc[("low", "sufficient")]
    assert shown["verdict changed"] == "yes" and shown["at fixed hyperparameters"].startswith("refuted")
    assert shown["search cost"] == "13 trials (1 stopped), 61 s"
    # A search that ended with one finished sample (the others stopped) still tuned its cell.
    one_left = [r for r in tuned if not (r["strategy"] == "full" and r["hp_lr"] == 1e-3)]
    board = leaderboard(frame(one_left)).set_index("strategy")
    assert board.loc["full", "n_settings"] == 2 and board.loc["full", "selected"] == "hp_lr=0.01"
    matrix = regime_matrix(frame(one_left)).set_index(["similarity_regime", "data_regime"])
    assert matrix.loc[("low", "sufficient"), "hyperparameters"] == "tuned"
    fixed_only = regime_matrix(frame(fixed)).set_index(["similarity_regime", "data_regime"]).loc[("low", "sufficient")]
    assert fixed_only["hyperparameters"] == "fixed"
    assert "search cost" not in display_matrix(regime_matrix(frame(fixed))).columns


def test_a_crossed_design_splits_the_variance_between_data_draw_and_training_seed() -> None:
    # 2 data seeds x 2 training seeds: y = 70 + 4 (data seed 1) + 1 (training seed 1). Row means 70.5, 74.5;
    # column means 72, 73; grand 72.5; residuals 0. MS_data = 2 * (2^2 + 2^2) / 1 = 16, MS_train = 2 * 0.5 = 1,
    # MS_res = 0: data = 16 / 2 = 8, train = 1 / 2 = 0.5: shares 8 / 8.5 and 0.5 / 8.5.
    rows = [
        make_row(seed=s, data_seed=d, metric_top1=70.0 + 4 * d + s, metric_val_top1=70.0, strategy="full")
        for d in (0, 1)
        for s in (0, 1)
    ]
    table = Analysis.of(frame(rows)).seed_variance()
    assert len(table) == 1 and table.loc[0, "n_data_seeds"] == 2 and table.loc[0, "n_train_seeds"] == 2
    assert table.loc[0, "share_data"] == pytest.approx(8 / 8.5)
    assert table.loc[0, "share_train"] == pytest.approx(0.5 / 8.5)
    # The seeds moving together (data_seed = seed, every suite without grid.data_seed): nothing to split.
    together = [make_row(seed=s, data_seed=s, metric_top1=70.0 + s, strategy="full") for s in range(3)]
    assert Analysis.of(frame(together)).seed_variance().empty
