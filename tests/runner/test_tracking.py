"""Experiment trackers, for real: `bench run` on a local Ray mirrors its trials to an MLflow store in a SQLite
file, TensorBoard event files and W&B offline runs, and the test reads each back and compares it with the
Parquet rows. A tracker that cannot be reached costs no row."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import bench, free_port, run_folder

from bench.results import store as results

pytestmark = pytest.mark.slow


def _suite(folder: Path, tracking: str) -> Path:
    """Four trials: two train (evaluated every 2 of 6 steps), two fail (a corrupt weights file)."""
    bad = folder / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    path = folder / "tracked.yaml"
    path.write_text(f"""
name: tracked
backbones: [efficientnet_lite0, {{name: efficientnet_lite0, weights: {bad}}}]
datasets: [digits]
grid: {{freeze: [linear_probe, full], data_fraction: [0.1], seed: [0]}}
train: {{img_size: 32, steps: 6, batch_size: 16, lr: 1.0e-3, eval_every_steps: 2, probe: {{solver: sgd}}}}
tune: {{resources_per_trial: {{cpu: 1}}, max_concurrent_trials: 2}}
analysis: {{similarity: false}}
{tracking}
""")
    return path


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    run_dir = run_folder(out, "tracked")
    data = results.load_runs([run_dir])
    return data.trials.set_index("trial_id"), data.epochs, run_dir


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    suite = _suite(folder, f'tracking: {{mlflow: {{tracking_uri: "{store}"}}, wandb: {{mode: offline}}}}')
    # TensorBoard from the command line, at its defaults (event folders in the run folder).
    done = bench("run", str(suite), "--out", str(folder / "out"), "--num-cpus", "2", "--tracker", "tensorboard")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # two trials failed, as planned
    trials, epochs, run_dir = _tables(folder / "out")
    assert sorted(trials["status"]) == ["failed", "failed", "ok", "ok"]
    return {"store": store, "trials": trials, "epochs": epochs, "run_dir": run_dir, "stderr": done.stderr}


def test_mlflow_holds_one_run_per_trial_with_params_metrics_curve_and_status(tracked: dict) -> None:
    import mlflow

    trials, epochs = tracked["trials"], tracked["epochs"]
    client = mlflow.MlflowClient(tracked["store"])
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    by_trial = {run.data.tags["trial_id"]: run for run in runs}
    assert sorted(by_trial) == sorted(trials.index)
    for trial_id, run in by_trial.items():
        row = trials.loc[trial_id]
        assert run.data.tags["suite"] == "tracked" and run.data.tags["run_id"] == row["run_id"]
        assert run.info.run_name == f"efficientnet_lite0 digits freeze={row['strategy']} frac=0.1 seed=0"
        params = run.data.params
        assert params["backbone"] == "efficientnet_lite0" and params["strategy"] == row["strategy"]
        assert float(params["hp_lr"]) == row["hp_lr"] and int(params["seed"]) == row["seed"]
        assert "seed" not in run.data.metrics  # identity is a param, not a metric
        if row["status"] == "ok":
            assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
            assert run.data.metrics["metric_top1"] == pytest.approx(row["metric_top1"])
            assert run.data.metrics["trainable_params"] == row["trainable_params"]
            curve = client.get_metric_history(run.info.run_id, "val_top1")
            evaluations = epochs[epochs["trial_id"] == trial_id].sort_values("step")
            assert [m.value for m in sorted(curve, key=lambda m: m.step)] == pytest.approx(
                list(evaluations["val_top1"])
            )
            assert sorted(m.step for m in curve) == [2, 4, 6]
        else:
            assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
            assert "weights file" in run.data.tags["error"] and "metric_top1" not in run.data.metrics


def test_tensorboard_event_files_hold_the_same_scalars(tracked: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials, epochs = tracked["trials"], tracked["epochs"]
    folders = sorted((tracked["run_dir"] / "tensorboard").iterdir())
    assert len(folders) == len(trials)
    for folder in folders:
        trial_id = folder.name.rsplit("_", 1)[1]
        events = EventAccumulator(str(folder)).Reload()
        scalars = events.Tags()["scalars"]
        if trials.loc[trial_id, "status"] == "ok":
            curve = [(e.step, e.value) for e in events.Scalars("val_top1")]
            expected = epochs[epochs["trial_id"] == trial_id].sort_values("step")
            assert [s for s, _ in curve] == [2, 4, 6]
            assert [v for _, v in curve] == pytest.approx(list(expected["val_top1"]), abs=1e-4)
            assert events.Scalars("metric_top1")[-1].value == pytest.approx(trials.loc[trial_id, "metric_top1"])
        else:
            assert "metric_top1" not in scalars and "val_top1" not in scalars


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending, records, block = 7, b"", [], 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items: list) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_wandb_offline_runs_hold_the_trials(tracked: dict) -> None:
    trials = tracked["trials"]
    files = sorted((tracked["run_dir"] / "wandb").glob("offline-run-*/run-*.wandb"))
    seen = {}
    for path in files:
        records = _wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = _items(run.config.update)
        for record in records:  # later config updates: how the trial ended
            if record.WhichOneof("record_type") == "config":
                config.update(_items(record.config.update))
        history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
        seen[config["trial_id"]] = (run.display_name, config, history)
    assert sorted(seen) == sorted(trials.index)
    for trial_id, (name, config, history) in seen.items():
        row = trials.loc[trial_id]
        assert name == f"efficientnet_lite0 digits freeze={row['strategy']} frac=0.1 seed=0"
        assert config["strategy"] == row["strategy"] and config["run_id"] == row["run_id"]
        assert config["status"] == row["status"]
        if row["status"] == "ok":
            assert [h["step"] for h in history if "val_top1" in h] == [2, 4, 6]
            assert history[-1]["metric_top1"] == pytest.approx(row["metric_top1"])
        else:
            assert "weights file" in config["error"] and not any("metric_top1" in h for h in history)


def test_an_unreachable_tracking_server_loses_no_row(tmp_path: Path) -> None:
    port = free_port()
    suite = _suite(tmp_path, f'tracking: {{mlflow: {{tracking_uri: "http://127.0.0.1:{port}"}}}}')
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--num-cpus", "2")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    trials, _, _ = _tables(tmp_path / "out")
    assert len(trials) == 4 and sorted(trials["status"]) == ["failed", "failed", "ok", "ok"]
    warnings = [line for line in done.stderr.splitlines() if "tracker mlflow is off" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0], done.stderr[-3000:]


def test_a_tracker_without_its_package_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    suite = _suite(tmp_path, "")
    # The package made unimportable in this process only, as if it were not installed.
    code = "import sys; sys.modules['wandb'] = None; from bench import cli; sys.exit(cli.main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(suite), "--out", str(tmp_path / "out"), "--tracker", "wandb"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == "bench: error: tracker 'wandb' needs its package: pip install 'bench[wandb]'"
    assert not (tmp_path / "out").exists()
