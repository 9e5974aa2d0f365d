"""A two-stage search on a real local Ray: the search on the first seed, then each cell's selection (best
validation top-1) on the other seeds; leaderboards rank that setting over every seed; resume reruns nothing.

Where validation and test disagree (rows of the run edited so that the setting best on validation is the worst on
test), the selection, the runner's and the leaderboard's, follows validation: a selection on test fails here."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bench, run_folder

from bench.results import store as results
from bench.results.leaderboard import leaderboard
from bench.suite import load_suite

pytestmark = pytest.mark.slow

SUITE = """
name: two_stage
backbones: [efficientnet_lite0]
datasets: [digits]
grid: {freeze: [linear_probe, 0.5], data_fraction: [0.3], seed: [0, 1, 2]}
train: {img_size: 32, steps: 12, batch_size: 32, eval_every_steps: 4, probe: {solver: sgd}}
analysis: {similarity: false}
tune: {resources_per_trial: {cpu: 1, gpu: 0}, max_concurrent_trials: 1}
search:
  protocol: two_stage
  space: {lr: [1.0e-4, 3.0e-3]}
  by_strategy: {linear_probe: {lr: [1.0e-3, 3.0e-2, 0.3]}}
  scheduler: {kind: none}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("two_stage")
    suite = tmp / "two_stage.yaml"
    suite.write_text(SUITE)
    out = tmp / "out"
    done = bench("run", suite, "--out", out, "--num-cpus", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return {"suite": suite, "out": out, "run_dir": run_folder(out, "two_stage"), "stdout": done.stdout}


def test_the_selection_of_the_first_seed_runs_on_every_other_seed(run: dict) -> None:
    trials = results.read_table(run["run_dir"] / results.TRIALS_FILE)
    assert len(trials) == load_suite(run["suite"]).trial_count() == (3 + 2) + 2 * 2
    assert (trials["status"] == "ok").all()
    epochs = results.read_table(run["run_dir"] / results.EPOCHS_FILE)
    assert all(steps == [4, 8, 12] for steps in epochs.groupby("trial_id")["step"].apply(list))  # eval_every_steps
    board = leaderboard(trials).set_index("strategy")
    for strategy, rows in trials.groupby("strategy"):
        label = "freeze 0.5" if strategy == "partial" else strategy
        searched = rows[rows["seed"] == 0]
        assert len(searched) == (3 if strategy == "linear_probe" else 2)
        chosen = searched.loc[searched["metric_val_top1"].idxmax(), "hp_lr"]
        others = rows[rows["seed"] != 0]
        assert sorted(others["seed"]) == [1, 2] and set(others["hp_lr"]) == {chosen}
        assert board.loc[label, "n_seeds"] == 3  # the interval is over seeds at the selected setting
        assert board.loc[label, "selected"] == f"hp_lr={chosen:g}"
        assert board.loc[label, "trials_run"] == len(rows)  # the search's cost counts


def _disagreeing(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """The search's rows (the first seed's) with, per strategy, a setting the run did not select made best on
    validation and worst on test (every other setting: worse on validation, better on test); and that
    setting's lr per strategy."""
    searched = trials[trials["seed"] == 0]
    edited, chosen = searched.copy(), {}
    for strategy, rows in searched.groupby("strategy"):
        ran = set(trials.loc[(trials["strategy"] == strategy) & (trials["seed"] != 0), "hp_lr"])
        target = next(lr for lr in rows["hp_lr"] if lr not in ran)  # not the run's choice: the choice must move
        mine = edited.index.isin(rows.index) & (edited["hp_lr"] == target)
        others = edited.index.isin(rows.index) & (edited["hp_lr"] != target)
        edited.loc[mine, ["metric_val_top1", "metric_top1"]] = [90.0, 10.0]
        edited.loc[others, ["metric_val_top1", "metric_top1"]] = [50.0, 95.0]
        chosen[strategy] = float(target)
    return edited, chosen


def test_the_leaderboard_selects_on_validation_where_test_disagrees(run: dict) -> None:
    searched, chosen = _disagreeing(results.read_table(run["run_dir"] / results.TRIALS_FILE))
    board = leaderboard(searched).set_index("strategy")
    for strategy, lr in chosen.items():
        label = "freeze 0.5" if strategy == "partial" else strategy
        test_best = searched.loc[searched[searched["strategy"] == strategy]["metric_top1"].idxmax(), "hp_lr"]
        assert test_best != lr
        assert board.loc[label, "selected"] == f"hp_lr={lr:g}", board.loc[label]
        assert board.loc[label, "mean"] == 10.0  # the test top-1 of the validation-best setting


def test_resume_runs_the_second_stage_on_the_validation_best_setting(run: dict) -> None:
    """The search's rows kept, edited so that validation and test disagree; the resumed run selects on
    validation."""
    path = run["run_dir"] / results.TRIALS_FILE
    table = pq.read_table(path)
    edited, chosen = _disagreeing(table.to_pandas())
    pq.write_table(pa.Table.from_pandas(edited, schema=table.schema, preserve_index=False), path)
    resumed = bench("run", run["suite"], "--out", run["out"], "--resume", "--num-cpus", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "5 already done" in resumed.stdout and "other seeds: 4 trials" in resumed.stdout
    after = results.read_table(path)
    assert len(after) == 9 and after["trial_id"].is_unique
    for strategy, lr in chosen.items():
        others = after[(after["strategy"] == strategy) & (after["seed"] != 0)]
        assert sorted(others["seed"]) == [1, 2] and set(others["hp_lr"]) == {lr}, others[["seed", "hp_lr"]]
    again = bench("run", run["suite"], "--out", run["out"], "--resume", "--num-cpus", "1")
    assert again.returncode == 0 and "9 already done, 0 to run" in again.stdout
