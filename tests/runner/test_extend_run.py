"""A search that extends itself, on a real local Ray: the search on the first seed, one more search stage past the
edge its cell selected, then the final selection on the other seed; a resumed run recomputes the rounds from the
rows and reruns only the trials they miss.

The grid has two values, so the search's selection sits on an edge whatever the training gives, and the limits
leave room for two rounds on either side (1e-5 then 1e-6, or 1e-2 then 1e-1) before ``extend: 3`` would stop it:
the run must end inside what it tried or at a limit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bench

from bench.analysis.edges import classify
from bench.results import store as results
from bench.suite import load_suite

pytestmark = pytest.mark.slow

SUITE = """
name: extending
backbones: [efficientnet_lite0]
datasets: [digits]
grid: {freeze: [0.5], data_fraction: [0.3], seed: [0, 1]}
train: {img_size: 32, steps: 4, batch_size: 32}
analysis: {similarity: false}
tune: {resources_per_trial: {cpu: 1, gpu: 0}, max_concurrent_trials: 1}
search:
  protocol: two_stage
  space: {lr: [1.0e-4, 1.0e-3]}
  extend: 3
  limits: {lr: [1.0e-6, 1.0e-1]}
  scheduler: {kind: none}
"""
LIMITS = (1e-6, 1e-1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("extend")
    suite = tmp / "extending.yaml"
    suite.write_text(SUITE)
    out = tmp / "out"
    done = bench("run", suite, "--out", out, "--num-cpus", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = (out / "extending").iterdir()
    return {"suite": suite, "out": out, "trials": run_dir / results.TRIALS_FILE, "stdout": done.stdout}


def _val_top1(path: Path) -> dict[str, float]:
    table = results.read_table(path)
    ok = table[table["status"] == "ok"]
    return dict(zip(ok["trial_id"], ok["metric_val_top1"].astype(float)))


def test_the_search_extends_past_its_edge_and_ends_inside_or_at_a_limit(run: dict) -> None:
    suite = load_suite(run["suite"])
    trials = results.read_table(run["trials"])
    assert (trials["status"] == "ok").all()
    assert "up to 3 more past the search's edges" in run["stdout"]
    assert "bench: search extended past an edge in 1 cell(s) (round 1 of 3)" in run["stdout"]
    searched = trials[trials["seed"] == 0]
    base = searched[searched["trial_id"].isin([t.trial_id for t in suite.trials()])]
    assert sorted(base["hp_lr"]) == [1e-4, 1e-3]
    # The first round: one step of the grid's ratio (10) past the selected edge.
    first_best = base.loc[base["metric_val_top1"].idxmax(), "hp_lr"]
    beyond = {1e-3: 1e-2, 1e-4: 1e-5}[first_best]
    extensions = searched[~searched["trial_id"].isin(base["trial_id"])]
    assert beyond in set(extensions["hp_lr"])
    # The rows hold exactly the rounds the suite derives from them, and the run stopped where it had to.
    rounds = load_suite(run["suite"]).search_rounds(_val_top1(run["trials"]))
    assert sorted(searched["trial_id"]) == sorted(t.trial_id for t in itertools.chain(*rounds))
    assert len(rounds) <= 3  # two rounds at most reach either limit
    final = searched.loc[searched["metric_val_top1"].idxmax(), "hp_lr"]
    tried = list(searched["hp_lr"])
    assert classify(final, tried) == "interior" or final in LIMITS, (final, tried)
    # The other seed runs the final selection.
    assert list(trials.loc[trials["seed"] == 1, "hp_lr"]) == [final]


def test_resume_reruns_the_missing_round_and_then_nothing(run: dict) -> None:
    """The extension rows removed, as if the driver had been killed before they were written: the resumed run
    recomputes the round from the search's rows and runs the same trials again; a second resume runs none."""
    path = run["trials"]
    before = results.read_table(path)
    base_ids = {t.trial_id for t in load_suite(run["suite"]).trials()}
    extension_ids = set(before.loc[(before["seed"] == 0) & ~before["trial_id"].isin(base_ids), "trial_id"])
    assert extension_ids
    table = pq.read_table(path)
    pq.write_table(table.filter(pa.array([i not in extension_ids for i in table.column("trial_id").to_pylist()])), path)
    resumed = bench("run", run["suite"], "--out", run["out"], "--resume", "--num-cpus", "1")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "(round 1 of 3)" in resumed.stdout and "other seeds" not in resumed.stdout  # the confirm row is kept
    after = results.read_table(path)
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])  # the same trials: same ids, nothing else
    again = bench("run", run["suite"], "--out", run["out"], "--resume", "--num-cpus", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before)} already done, 0 to run" in again.stdout and "search extended" not in again.stdout
    assert len(results.read_table(path)) == len(before)
