"""The worker's side of a Tune trial: what runs inside a Ray worker, and the rows its reports become.

``trainable`` is the function Tune runs for each trial: it opens the trial's prepared dataset on its node, runs
the core (``bench.training.trial.run_trial``) under the trial's deadline (``tune.trial_timeout_s``), reports each
evaluation when a scheduler or a tracker wants them (``evaluation_report``) and finally its row. A ``UserError``
or a timeout becomes a ``failed`` row (``failed_row``) at once; any other exception propagates, for Tune to
retry. ``stopped_row`` builds, in the driver, the row of a trial a scheduler ended from its last report.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import threading
from collections.abc import Iterator
from typing import Any

import ray
from ray import tune

from bench.config import TrialConfig
from bench.errors import UserError
from bench.results.schema import trial_row, utc_now
from bench.runner import tracking
from bench.runner.datasets import open_dataset
from bench.utils import memory


class TrialTimeout(Exception):
    """Raised inside a trial's thread when it runs past ``tune.trial_timeout_s``."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise TrialTimeout in this thread after ``seconds`` (none with ``None`` or 0): a trial stuck in a loop, a
    slow file system or a hung collective ends as a failed row instead of holding its worker forever. The
    exception lands at the next Python bytecode, so a single C call (one convolution) finishes first."""
    if not seconds:
        yield
        return
    target, lock, finished = threading.get_ident(), threading.Lock(), threading.Event()

    def fire() -> None:
        with lock:
            if not finished.is_set():
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(TrialTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:  # after this, the timer can no longer fire into code that is not the trial's
            finished.set()
        timer.cancel()


def trainable(
    params: dict[str, Any],
    run_id: str,
    timeout_s: float | None,
    report_evaluations: bool,
    cpu: float,
) -> None:
    """One Tune trial: open its prepared dataset (``params["data"]``, a ``dataset_ref``) on this node, run the
    core on ``params["trial"]`` (a ``TrialConfig.to_dict``), report the row (``row_json``, with ``final``). With
    ``report_evaluations`` (a search with a scheduler, or trackers) each evaluation is reported too, and the
    scheduler may end the trial at one of them (Tune then exits this thread). Returns nothing: Tune reads the
    reports. Exceptions other than ``UserError`` and a timeout propagate (Tune retries them)."""
    from bench import training  # torch and timm: in the workers; the driver never needs them

    memory.freeze_imported_objects()  # the first call in this worker, after the imports; then a no-op
    config = dataclasses.replace(TrialConfig.from_dict(params["trial"]), memory_share_mb=_memory_share_mb(cpu))
    started_at = utc_now()

    def report_evaluation(epochs: list[dict[str, Any]]) -> None:
        tune.report(evaluation_report(epochs, started_at=started_at, final=False))

    try:
        with deadline(timeout_s):
            data, copied = open_dataset(params["data"], config)  # shards copied here if need be
            result = training.run_trial(
                config, run_id=run_id, data=data, on_evaluation=report_evaluation if report_evaluations else None
            )
        row, epochs = result.row, result.epochs
    except UserError as error:  # the same input would fail again: a failed row, no retry
        row, epochs = failed_row(config, run_id, str(error)), []
    except TrialTimeout:  # so would a retry: a failed row saying so
        row, epochs = failed_row(config, run_id, f"timed out after {timeout_s:g} s (tune.trial_timeout_s)"), []
    finally:
        memory.release_freed_memory()  # a reused worker starts the next trial as lean as the first
    row["ray_node_id"] = ray.get_runtime_context().get_node_id()
    if row["status"] != "failed":
        row["dataset_copied_mb"] = copied / 2**20
    tune.report(
        {**evaluation_report(epochs, started_at=started_at, final=True), "row_json": json.dumps(row, default=str)}
    )


def _memory_share_mb(cpu_per_trial: float) -> float:
    """This trial's share of its node's memory: the node's (or its cgroup's) memory over the trials it runs."""
    here = ray.get_runtime_context().get_node_id()
    node_cpus = next((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n["NodeID"] == here), 1.0)
    return memory.trial_share_bytes(memory.system_memory_bytes(), node_cpus, cpu_per_trial) / 2**20


def evaluation_report(epochs: list[dict[str, Any]], *, started_at: str, final: bool) -> dict[str, Any]:
    """What a trial reports to Tune: its validation top-1 after ``evaluation`` evaluations (the schedulers'
    metric and time), the optimiser step and the latest curve values (what trackers plot), and its evaluation
    rows so far (a stopped trial's row is built from them)."""
    last = epochs[-1] if epochs else {}
    val_top1 = last.get("val_top1")
    return {
        "final": final,
        "evaluation": len(epochs),
        "val_top1": float("nan") if val_top1 is None else float(val_top1),
        "step": _global_step(epochs),
        "curve": {key: last.get(key) for key in tracking.CURVE},  # what trackers plot
        "started_at": started_at,
        "epochs_json": json.dumps(epochs, default=str),
    }


def _global_step(epochs: list[dict[str, Any]]) -> int:
    """Optimiser steps so far over every phase (an LP-FT trial counts its steps per phase)."""
    last_per_phase = {row["phase"]: row["step"] for row in epochs}
    return int(sum(step for step in last_per_phase.values() if step is not None))


def stopped_row(config: TrialConfig, run_id: str, result: dict[str, Any]) -> tuple[dict[str, Any], list]:
    """The row and evaluation rows of a trial a scheduler ended early, from its last ``evaluation_report``: its
    validation metrics at the stop and how far it ran; no test metrics (a stopped sample is never a result, but
    its cost counts)."""
    epochs = json.loads(result["epochs_json"])
    last_per_phase = {row["phase"]: row for row in epochs}.values()
    val = [row["val_top1"] for row in epochs if row["val_top1"] is not None]
    row = trial_row(
        config,
        run_id=run_id,
        status="stopped",
        error=f"stopped by the search's scheduler after {len(epochs)} evaluation(s)",
        started_at=result.get("started_at") or utc_now(),
        metric_val_top1=val[-1] if val else None,
        metric_best_val_top1=max(val) if val else None,
        steps_run=_global_step(epochs),
        train_seconds=sum(row["elapsed_seconds"] for row in last_per_phase),
    )
    return row, epochs


def failed_row(config: TrialConfig, run_id: str, error: str) -> dict[str, Any]:
    """The row of a trial that produced no result: its identity, hyperparameters and why it failed."""
    now = utc_now()
    return trial_row(config, run_id=run_id, status="failed", error=error, started_at=now, finished_at=now)
