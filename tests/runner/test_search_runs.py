"""A hyperparameter search on a real local Ray: early stopping stays within a cell, stopped samples are rows
that no leaderboard ranks, and resume runs no sample twice."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bench

from bench.results import store as results
from bench.results.leaderboard import excluded_trials, prepare
from bench.suite import load_suite

pytestmark = pytest.mark.slow

# Two linear-probe cells, digits (the better) and photo_patches (the worse), and one full fine-tuning cell per
# dataset whose second sample (lr 1e-6) learns nothing: ASHA (halving at every evaluation) must stop it there.
SUITE = """
name: {name}
backbones: [efficientnet_lite0]
datasets: {datasets}
grid: {{freeze: [linear_probe, full], data_fraction: [0.3], seed: [0]}}
train: {{img_size: 32, epochs: 3, batch_size: 32}}
analysis: {{similarity: false}}
tune: {{resources_per_trial: {{cpu: 1, gpu: 0}}, max_concurrent_trials: 1}}
search:
  space: {{lr: [1.0e-3]}}
  by_strategy:
    linear_probe: {{lr: [0.1, 0.03, 0.01]}}
    full: {{lr: [1.0e-3, 1.0e-6]}}
  scheduler: {{kind: asha, grace_evaluations: 1, reduction_factor: 2}}
"""


def _run(tmp_path: Path, name: str, datasets: str, *extra: str) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(SUITE.format(name=name, datasets=datasets))
    out = tmp_path / "out"
    done = bench("run", suite, "--out", out, "--num-cpus", "1", *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = [p for p in (out / name).iterdir() if p.is_dir()]
    trials = results.read_table(run_dir / results.TRIALS_FILE)
    epochs = results.read_table(run_dir / results.EPOCHS_FILE)
    return suite, trials, epochs


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("search")
    suite, trials, epochs = _run(tmp, "cells", "[digits, photo_patches]")
    _, alone, _ = _run(tmp, "alone", "[photo_patches]")
    return {"suite": suite, "trials": trials, "epochs": epochs, "alone": alone, "out": tmp / "out"}


def _first_evaluation(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.Series:
    first = epochs.sort_values("epoch").groupby("trial_id").first()["val_top1"]
    return trials.set_index("trial_id")["dataset"].to_frame().join(first)


def test_a_worse_cell_is_never_stopped_because_of_a_better_one(both: dict) -> None:
    trials, epochs, alone = both["trials"], both["epochs"], both["alone"]
    probes = trials[trials["strategy"] == "linear_probe"]
    rung = _first_evaluation(probes, epochs)
    better, worse = rung[rung["dataset"] == "digits"]["val_top1"], rung[rung["dataset"] == "photo_patches"]["val_top1"]
    assert len(better) == len(worse) == 3
    assert worse.max() < better.min(), "the premise: every photo_patches sample is worse than every digits one"
    # Digits trials start first (schedule order), so a scheduler over all trials would have stopped every
    # photo_patches sample at its first evaluation; per cell, the cell's first sample is never stopped, and the
    # cell's decisions are the ones it makes when it runs alone.
    mine = probes[probes["dataset"] == "photo_patches"].set_index("trial_id")["status"].sort_index()
    assert (mine == "ok").any()
    assert mine.to_dict() == alone[alone["strategy"] == "linear_probe"].set_index("trial_id")["status"].to_dict()


def test_a_stopped_sample_is_a_row_with_its_cost_that_no_leaderboard_ranks(both: dict) -> None:
    trials = both["trials"]
    stopped = trials[trials["status"] == "stopped"]
    assert set(stopped[stopped["strategy"] == "full"]["hp_lr"]) == {1e-6}
    assert len(stopped[stopped["strategy"] == "full"]) == 2  # one per dataset's full fine-tuning cell
    for _, row in stopped.iterrows():
        assert row["metric_top1"] is None or pd.isna(row["metric_top1"])  # no test metric: never a result
        assert row["metric_val_top1"] is not None and row["train_seconds"] > 0 and row["steps_run"] > 0
        finished = trials[(trials["cell_id"] == row["cell_id"]) & (trials["status"] == "ok")]
        assert row["steps_run"] < finished["hp_total_steps"].min()  # stopped part of the way
    assert set(stopped["trial_id"]) <= set(excluded_trials(trials)["trial_id"])
    assert not set(stopped["trial_id"]) & set(prepare(trials)["trial_id"])
    epochs = both["epochs"]
    assert (epochs[epochs["trial_id"].isin(stopped["trial_id"])].groupby("trial_id").size() == 1).all()


def test_resume_of_a_half_done_search_runs_no_sample_twice(both: dict) -> None:
    suite, out = both["suite"], both["out"]
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
