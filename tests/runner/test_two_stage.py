"""A two-stage search on a real local Ray: the search on the first seed, then each cell's selection (best
validation top-1) on the other seeds; leaderboards rank that setting over every seed; resume reruns nothing."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bench

from bench.results import store as results
from bench.results.leaderboard import leaderboard
from bench.suite import load_suite

pytestmark = pytest.mark.slow

SUITE = """
name: two_stage
backbones: [efficientnet_lite0]
datasets: [digits]
grid: {freeze: [linear_probe, 0.5], data_fraction: [0.3], seed: [0, 1, 2]}
train: {img_size: 32, steps: 12, batch_size: 32, eval_every_steps: 4}
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
    (run_dir,) = (out / "two_stage").iterdir()
    return {"suite": suite, "out": out, "run_dir": run_dir, "stdout": done.stdout}


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


def test_resume_runs_only_the_missing_second_stage(run: dict) -> None:
    path = run["run_dir"] / results.TRIALS_FILE
    table = pq.read_table(path)
    keep = [s == 0 for s in table.column("seed").to_pylist()]
    pq.write_table(table.filter(pa.array(keep)), path)
    resumed = bench("run", run["suite"], "--out", run["out"], "--resume", "--num-cpus", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "5 already done" in resumed.stdout and "other seeds: 4 trials" in resumed.stdout
    after = results.read_table(path)
    assert len(after) == 9 and after["trial_id"].is_unique
    again = bench("run", run["suite"], "--out", run["out"], "--resume", "--num-cpus", "1")
    assert again.returncode == 0 and "9 already done, 0 to run" in again.stdout
