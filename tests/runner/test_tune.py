"""`bench run` on a real Ray: local, a two-node cluster, killed drivers, lost nodes, broken datasets.

Every test starts Ray for real and reads the Parquet files back. The suites are tiny (32 px digits, a few
optimiser steps) so that the scheduling, writing and resuming are what the tests spend their time on.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    assert_rows_kept,
    bench,
    kill_driver,
    ok_rows,
    run_folder,
    run_rows,
    start_bench,
    wait_until,
    write_suite,
)

from bench.results import store as results
from bench.results.schema import TRIAL_COLUMNS, utc_now

pytestmark = pytest.mark.slow


def trials(out: Path, suite: str = "tiny") -> pd.DataFrame:
    return results.read_table(run_folder(out, suite) / results.TRIALS_FILE)


def grid_size(suite: Path) -> int:
    """How many trials a suite file asks for: backbones x datasets x each grid axis, read from its YAML."""
    import math

    import yaml

    spec = yaml.safe_load(suite.read_text())
    return math.prod(len(values) for values in (spec["backbones"], spec["datasets"], *spec["grid"].values()))


def test_local_run_writes_one_ok_row_per_trial_with_the_contract_columns(tmp_path):
    suite = write_suite(tmp_path)
    total = grid_size(suite)
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--num-cpus", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    peak = re.search(r"peak memory on this machine: ([0-9.]+) GiB", done.stdout)
    assert peak and 0.2 < float(peak.group(1)) < 16, done.stdout[-1000:]  # driver + Ray + 2 workers with torch
    table = trials(tmp_path / "out")
    assert len(table) == total and table["trial_id"].is_unique
    assert set(table["status"]) == {"ok"}
    assert not [c for c in TRIAL_COLUMNS if c not in table.columns]
    assert table["metric_top1"].between(0, 100).all()
    epochs = results.read_table(run_folder(tmp_path / "out", "tiny") / results.EPOCHS_FILE)
    assert set(epochs["trial_id"]) == set(table["trial_id"])
    folder = run_folder(tmp_path / "out", "tiny")
    assert (folder / "suite.yaml").exists() and (folder / "env.json").exists()
    assert f"{total} ok, 0 diverged, 0 failed" in done.stdout and str(folder) in done.stdout
    assert "| digits |" in done.stdout  # the leaderboard at the end
    assert "Traceback" not in done.stdout + done.stderr

    again = bench("run", str(suite), "--out", str(tmp_path / "out"), "--resume")
    assert again.returncode == 0 and f"{total} already done, 0 to run" in again.stdout
    assert trials(tmp_path / "out").equals(table)  # nothing rerun, nothing rewritten


def test_missing_dataset_root_fails_its_trials_and_the_rest_finish(tmp_path):
    missing = tmp_path / "nowhere"
    suite = write_suite(tmp_path, datasets=f"[digits, 'imagefolder:{missing}']", seeds="[0]")
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--num-cpus", "2")
    assert done.returncode == 1, done.stderr[-2000:]
    table = trials(tmp_path / "out")
    assert len(table) == grid_size(suite)
    failed = table[table["status"] == "failed"]
    assert set(failed["dataset"]) == {f"imagefolder:{missing}"} and len(failed) == grid_size(suite) // 2  # 2 datasets
    assert failed["error"].str.contains("does not exist").all()
    assert set(table.loc[table["dataset"] == "digits", "status"]) == {"ok"}
    assert "Traceback" not in done.stdout + done.stderr


# Run in a fresh interpreter: records, at the first import of scikit-learn (digits' decoder, in the driver's
# decode thread), whether torch is absent, half-imported or complete. scipy, under scikit-learn, looks at
# sys.modules["torch"] without importing it and raises on a half-imported torch, which it was while the main
# thread imported torch for env.json (an intermittent crash of `bench run`, fixed by importing torch first).
_IMPORT_PROBE = """
import sys
seen = []

def hook(event, args):
    if event == "import" and args[0] == "sklearn" and not seen:
        torch = sys.modules.get("torch")
        seen.append("absent" if torch is None else "complete" if hasattr(torch, "Tensor") else "half")

sys.addaudithook(hook)
from bench import cli
code = cli.main(sys.argv[1:])
print("torch when the decoders started importing:", seen)
sys.exit(code)
"""


def test_datasets_decode_only_after_torch_is_fully_imported(tmp_path):
    suite = write_suite(tmp_path, freeze="[linear_probe]", sizes="data_fraction: [0.05]", seeds="[0]")
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, "run", str(suite), "--out", str(tmp_path / "out"), "--num-cpus", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch when the decoders started importing: ['complete']" in done.stdout, done.stdout[-1000:]


def test_kill_minus_nine_of_the_driver_then_resume_completes_without_losing_a_row(tmp_path):
    suite = write_suite(tmp_path, concurrent=1, steps=6)
    out = tmp_path / "out"
    driver = start_bench("run", suite, "--out", out, "--num-cpus", "1", log=tmp_path / "driver.log")
    try:
        wait_until(lambda: len(run_rows(out, "tiny")) >= 2, 300, driver)
    finally:
        kill_driver(driver)  # and the local Ray it started
    before = trials(out)
    assert 2 <= len(before) < grid_size(suite)
    ok_before = ok_rows(before)

    resumed = bench("run", str(suite), "--out", str(out), "--resume", "--num-cpus", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = trials(out)
    assert len(after) == grid_size(suite) and after["trial_id"].is_unique and set(after["status"]) == {"ok"}
    assert_rows_kept(ok_before, after)  # no ok row rewritten: same finished_at, same metrics


def test_second_run_on_the_same_folder_is_refused_by_the_lock(tmp_path):
    from bench.runner.run_dir import RunLock

    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    folder = out / "tiny" / "20000101T000000Z"
    folder.mkdir(parents=True)
    with RunLock(folder):
        refused = bench("run", str(suite), "--out", str(out), "--resume")
    assert refused.returncode == 2
    assert "in use by another bench run" in refused.stderr and "Traceback" not in refused.stderr
    assert not (folder / results.TRIALS_FILE).exists()


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def test_two_node_cluster_rows_come_from_both_nodes(tmp_path, two_node_cluster):
    cluster, _ = two_node_cluster
    suite = write_suite(tmp_path, steps=8)
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--address", cluster.address)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 node(s)" in done.stdout
    table = trials(tmp_path / "out")
    assert len(table) == grid_size(suite) and set(table["status"]) == {"ok"}
    assert table["ray_node_id"].nunique() == 2


# Run in a fresh interpreter: `bench run` with two of Tune's public callback hooks patched on the base class
# (bench's row writer overrides neither) to log, one JSON line each, how many trials Tune has RUNNING and
# TERMINATED after each step (when that changes) and each trial Tune retries after a failure
# (on_trial_recover), which bench's tables do not record.
_RETRY_PROBE = """
import json, sys
from ray import tune

log = open(sys.argv[1], "a", buffering=1)
last = []

def step_end(self, iteration, trials, **info):
    state = {s: sum(1 for t in trials if t.status == s.upper()) for s in ("running", "terminated")}
    if last[-1:] != [state]:
        last.append(state)
        log.write(json.dumps(state) + "\\n")

def recovered(self, iteration, trials, trial, **info):
    from bench.config import TrialConfig
    log.write(json.dumps({"recovered": TrialConfig.from_dict(trial.config["trial"]).trial_id}) + "\\n")

tune.Callback.on_step_end = step_end
tune.Callback.on_trial_recover = recovered
from bench import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def test_losing_the_worker_node_part_way_still_completes_the_suite(tmp_path, two_node_cluster):
    import json

    cluster, worker = two_node_cluster
    # Full fine-tuning for 40 steps: seconds a trial (a linear probe's cached features take a fraction of one),
    # so the trial on the worker node is still training when the node goes.
    suite = write_suite(tmp_path, freeze="[full]", steps=40, max_failures=2)
    out, probe = tmp_path / "out", tmp_path / "probe.jsonl"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _RETRY_PROBE,
            str(probe),
            "run",
            str(suite),
            "--out",
            str(out),
            "--address",
            cluster.address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def events() -> list[dict]:
        return [json.loads(line) for line in probe.read_text().splitlines()] if probe.exists() else []

    def two_running_after_one_finished() -> bool:
        states = [e for e in events() if "running" in e]
        return bool(states) and states[-1]["running"] == 2 and states[-1]["terminated"] >= 1

    # Wait until a trial has finished and Tune runs two more: each takes the 1 CPU of a node, so one of them is
    # running on the worker node when it is removed, and that trial must fail and be retried on the head.
    wait_until(two_running_after_one_finished, 300, driver)
    running_when_removed, rows_when_removed = driver.poll() is None, len(run_rows(out, "tiny"))
    cluster.remove_node(worker, allow_graceful=False)
    removed_at = utc_now()
    stdout, stderr = driver.communicate(timeout=600)
    assert running_when_removed, "the run ended before the worker node was removed: nothing was tested"
    assert rows_when_removed < grid_size(suite), f"{rows_when_removed} rows were written before the node was removed"
    assert driver.returncode == 0, stderr[-2000:]
    table = trials(out)
    assert len(table) == grid_size(suite) and table["trial_id"].is_unique and set(table["status"]) == {"ok"}
    retried = {e["recovered"] for e in events() if "recovered" in e}
    assert retried, f"no trial was retried after the node loss: {events()}"
    again = table[table["trial_id"].isin(retried)]
    assert len(again) == len(retried) and set(again["status"]) == {"ok"}
    # A retry runs on the node that was left. A trial that had reported its row from the worker node just
    # before the node went may be retried too (Tune had not seen it end); its row is that first, finished one,
    # which the retry never replaces. It finished on the worker before the removal; the driver stamps the row when
    # the result reaches it, which may be a moment after the node has gone (seconds, not a retry's minute).
    on_worker = again[again["ray_node_id"] == worker.node_id]
    delivered_by = (dt.datetime.fromisoformat(removed_at) + dt.timedelta(seconds=10)).isoformat(timespec="seconds")
    assert (on_worker["finished_at"] <= delivered_by).all(), on_worker[["trial_id", "finished_at"]]


def test_a_trial_past_its_timeout_is_a_failed_row_and_the_others_finish(tmp_path):
    suite = tmp_path / "slow.yaml"
    suite.write_text("""
name: slow
backbones: [efficientnet_lite0]
datasets: [digits]
grid: {freeze: [linear_probe, full], data_fraction: [0.1], seed: [0]}
train: {img_size: 32, steps: 3000, batch_size: 16, lr: 1.0e-3}
tune: {max_concurrent_trials: 2, trial_timeout_s: 25}
analysis: {similarity: false}
""")
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--num-cpus", "2")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    table = trials(tmp_path / "out", "slow").set_index("strategy")
    # the probe trains a head on cached features (3000 steps in seconds); full fine-tuning cannot finish in 25 s
    assert table.loc["linear_probe", "status"] == "ok"
    assert table.loc["full", "status"] == "failed"
    assert "timed out after 25 s" in table.loc["full", "error"]
    assert table["similarity_score"].isna().all()  # analysis.similarity: false
