"""A hyperparameter search on a real local Ray: early stopping stays within a cell, stopped samples are rows
that no leaderboard ranks, and resume runs no sample twice.

The cells here differ by strategy only, so a scheduler keyed by strategy would pass these tests too: that a cell
is told apart by its dataset and its seed as well is checked, without Ray, by tests/runner/test_schedulers.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bench

from bench.results import store as results
from bench.results.leaderboard import excluded_trials, leaderboard, prepare
from bench.suite import load_suite

pytestmark = pytest.mark.slow

# Three cells of digits: linear probes that learn (the better cell), full fine-tuning at learning rates too small
# to move it (the worse cell: its samples all score the same, so ASHA within the cell stops none of them), and a
# half-frozen cell whose second sample (lr 1e-7) learns nothing while its first does: ASHA must stop it. With one
# trial at a time in the suite's order, the probes report first: a scheduler over all trials would stop every
# full fine-tuning sample after the first at its first evaluation.
SUITE = """
name: {name}
backbones: [efficientnet_lite0]
datasets: [digits]
grid: {{freeze: [linear_probe, full, 0.5], data_fraction: [1.0], seed: [0]}}
train: {{img_size: 32, epochs: 2, batch_size: 32, warmup_fraction: 0.0, probe: {{solver: sgd}}}}
analysis: {{similarity: false}}
tune: {{resources_per_trial: {{cpu: 1, gpu: 0}}, max_concurrent_trials: 1}}
search:
  space: {{lr: [1.0e-3]}}
  by_strategy:
    linear_probe: {{lr: [0.1, 0.03]}}
    full: {{lr: [1.0e-7, 2.0e-7, 3.0e-7]}}
    partial: {{lr: [3.0e-3, 1.0e-7]}}
  scheduler: {{kind: asha, grace_evaluations: 1, reduction_factor: 2}}
"""


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(SUITE.format(name=name))
    out = tmp_path / "out"
    done = bench("run", suite, "--out", out, "--num-cpus", "1", *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = [p for p in (out / name).iterdir() if p.is_dir()]
    trials = results.read_table(run_dir / results.TRIALS_FILE)
    epochs = results.read_table(run_dir / results.EPOCHS_FILE)
    return suite, trials, epochs


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("search")
    suite, trials, epochs = _run(tmp, "cells")
    return {"suite": suite, "trials": trials, "epochs": epochs, "out": tmp / "out"}


def _first_evaluation(trials: pd.DataFrame, epochs: pd.DataFrame, strategy: str) -> pd.Series:
    mine = trials.loc[trials["strategy"] == strategy, "trial_id"]
    first = epochs[epochs["trial_id"].isin(mine)].sort_values("epoch").groupby("trial_id").first()
    return first["val_top1"]


def test_a_worse_cell_is_never_stopped_because_of_a_better_one(searched: dict) -> None:
    trials, epochs = searched["trials"], searched["epochs"]
    better, worse = _first_evaluation(trials, epochs, "linear_probe"), _first_evaluation(trials, epochs, "full")
    assert len(better) == 2 and len(worse) == 3
    assert worse.max() < better.min(), "the premise: every full fine-tuning sample is worse than every probe"
    full = trials[trials["strategy"] == "full"]
    assert list(full["status"]) == ["ok"] * 3, full[["hp_lr", "status", "metric_val_top1"]]


def test_a_stopped_sample_is_a_row_with_its_cost_that_no_leaderboard_ranks(searched: dict) -> None:
    trials = searched["trials"]
    stopped = trials[trials["status"] == "stopped"]
    assert ("partial", 1e-7) in set(zip(stopped["strategy"], stopped["hp_lr"]))  # stopped within its own cell
    for row in stopped.to_dict("records"):
        assert row["metric_top1"] is None or pd.isna(row["metric_top1"])  # no test metric: never a result
        assert row["metric_val_top1"] is not None and row["train_seconds"] > 0
        finished = trials[(trials["cell_id"] == row["cell_id"]) & (trials["status"] == "ok")]
        assert 0 < row["steps_run"] < finished["hp_total_steps"].min()  # part of the way
        assert row["trial_id"] in set(excluded_trials(trials)["trial_id"])
        assert row["trial_id"] not in set(prepare(trials)["trial_id"])
        epochs = searched["epochs"]
        assert len(epochs[epochs["trial_id"] == row["trial_id"]]) == 1  # its one evaluation
    board = leaderboard(trials).set_index("strategy")
    assert board.loc["freeze 0.5", "trials_run"] == 2 and board.loc["freeze 0.5", "trials_stopped"] == 1


def test_resume_of_a_half_done_search_runs_no_sample_twice(searched: dict) -> None:
    suite, out = searched["suite"], searched["out"]
    (run_dir,) = [p for p in (out / "cells").iterdir() if p.is_dir()]
    path = run_dir / results.TRIALS_FILE
    table = pq.read_table(path)
    ids = table.column("trial_id").to_pylist()
    kept = ids[: len(ids) // 2]
    pq.write_table(table.filter(pa.compute.is_in(table["trial_id"], value_set=pa.array(kept))), path)
    resumed = bench("run", suite, "--out", out, "--resume", "--num-cpus", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(kept)} already done" in resumed.stdout
    after = results.read_table(path)
    assert sorted(after["trial_id"]) == sorted(t.trial_id for t in load_suite(suite).trials())
    assert after["trial_id"].is_unique
