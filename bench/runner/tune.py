"""Ray Tune runs a suite: with ``bench.runner.datasets``, the only modules that import Ray.

``run_suite`` expands a suite into trial configs, prepares each dataset once as shards over the cluster
(``bench.runner.datasets``), and hands the trials to ``tune.Tuner`` through a searcher that releases each trial, in
``schedule_order``, as soon as its dataset is published; a two-stage search runs two such stages, the search and
then each cell's selection on the other seeds. Each worker calls the core, ``bench.training.trial.run_trial``, and
reports its row back; the driver writes every row as it arrives, atomically, into the run folder's Parquet
tables, so workers never need to see the run folder. A ``UserError`` or a timeout (``tune.trial_timeout_s``)
becomes a ``failed`` row at once; any other exception is retried up to ``tune.max_failures`` times, then its row
says why. Resume is bench's, not Tune's: the run folder's rows say which trials are done. (docs/design.md,
"Layout of the package")
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from bench.config import TrialConfig
from bench.data import display_name
from bench.errors import StorageError, UserError
from bench.results import remote
from bench.results import store as results
from bench.results.schema import trial_row, utc_now
from bench.runner import run_dir as runs
from bench.runner import tracking
from bench.runner.datasets import Preparations, dataset_ref, open_dataset
from bench.runner.schedulers import PerCellScheduler, scheduler_factory
from bench.runner.shard_store import ShardStore, open_store
from bench.suite import Suite
from bench.suite.spec import TrackingSpec
from bench.utils import memory

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int  # already ok in the run folder (resume)
    ok: int = 0
    failed: int = 0
    diverged: int = 0
    stopped: int = 0  # ended early by the search's scheduler
    seconds: float = 0.0
    nodes: set[str] = field(default_factory=set)
    location: str = ""  # the run folder as the user names it: a path, or a URI (run_dir is then its staging copy)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# ---------------------------------------------------------------------------------------------------------
# worker side


class TrialTimeout(Exception):
    """Raised inside a trial's thread when it runs past ``tune.trial_timeout_s``."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise TrialTimeout in this thread after ``seconds``: a trial stuck in a loop, a slow file system or a
    hung collective ends as a failed row instead of holding its worker forever. The exception lands at the
    next Python bytecode, so a single C call (one convolution) finishes first."""
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


def _trainable(
    params: dict[str, Any],
    run_id: str,
    timeout_s: float | None,
    report_evaluations: bool,
    cpu: float,
) -> None:
    """One Tune trial: open its prepared dataset (``params["data"]``) on this node, run the core, report the
    rows. With ``report_evaluations`` (a search with a scheduler) each evaluation is reported too, and the
    scheduler may end the trial at one of them (Tune then exits this thread)."""
    from bench import training  # torch and timm: in the workers; the driver never needs them

    memory.freeze_imported_objects()  # the first call in this worker, after the imports; then a no-op
    config = dataclasses.replace(TrialConfig.from_dict(params["trial"]), memory_share_mb=_memory_share_mb(cpu))
    started_at = utc_now()

    def report_evaluation(epochs: list[dict[str, Any]]) -> None:
        tune.report(_evaluation_report(epochs, started_at=started_at, final=False))

    try:
        with _deadline(timeout_s):
            data, copied = open_dataset(params["data"], config)  # shards copied here if need be
            result = training.run_trial(
                config, run_id=run_id, data=data, on_evaluation=report_evaluation if report_evaluations else None
            )
        row, epochs = result.row, result.epochs
    except UserError as error:  # the same input would fail again: a failed row, no retry
        row, epochs = _failed_row(config, run_id, str(error)), []
    except TrialTimeout:  # so would a retry: a failed row saying so
        row, epochs = _failed_row(config, run_id, f"timed out after {timeout_s:g} s (tune.trial_timeout_s)"), []
    finally:
        memory.release_freed_memory()  # a reused worker starts the next trial as lean as the first
    row["ray_node_id"] = ray.get_runtime_context().get_node_id()
    if row["status"] != "failed":
        row["dataset_copied_mb"] = copied / 2**20
    tune.report(
        {**_evaluation_report(epochs, started_at=started_at, final=True), "row_json": json.dumps(row, default=str)}
    )


def _memory_share_mb(cpu_per_trial: float) -> float:
    """This trial's share of its node's memory: the node's (or its cgroup's) memory over the trials it runs."""
    here = ray.get_runtime_context().get_node_id()
    node_cpus = next((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n["NodeID"] == here), 1.0)
    return memory.trial_share_bytes(memory.system_memory_bytes(), node_cpus, cpu_per_trial) / 2**20


def _evaluation_report(epochs: list[dict[str, Any]], *, started_at: str, final: bool) -> dict[str, Any]:
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


def _stopped_row(config: TrialConfig, run_id: str, result: dict[str, Any]) -> tuple[dict[str, Any], list]:
    """The row of a trial a scheduler ended early: its validation metrics at the stop and how far it ran;
    no test metrics (a stopped sample is never a result, but its cost counts)."""
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


def _dataset_key(config: TrialConfig) -> str:
    return json.dumps([config.dataset, config.img_size, config.dataset_root, config.shard_format])


# ---------------------------------------------------------------------------------------------------------
# driver side


class _RowWriter(tune.Callback):
    """Writes each trial's row the moment it arrives, and prints one progress line per finished trial."""

    def __init__(self, run_dir: Path, run_id: str, summary: RunSummary, pending: int) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self.summary = summary
        self.before = self._done()  # finished in this run before these trials (an earlier stage, failed datasets)
        self.pending = self.before + pending
        self.started = time.monotonic()
        self.running = 0
        self.storage_error: OSError | None = None
        self.reported: set[str] = set()  # Tune trial ids whose row is written

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running = sum(1 for t in trials if t.status == "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not result.get("final"):
            return  # an evaluation of a running trial: for the scheduler
        row = json.loads(result["row_json"])
        epochs = json.loads(result["epochs_json"])
        self.reported.add(trial.trial_id)
        if self._write([row], {row["trial_id"]: epochs}):
            self._count(row, trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial that ended without its final report was stopped by the scheduler."""
        result = trial.last_result or {}
        if trial.trial_id in self.reported or "epochs_json" not in result:
            return
        config = TrialConfig.from_dict(trial.config["trial"])
        row, epochs = _stopped_row(config, self.run_id, result)
        self.reported.add(trial.trial_id)
        if self._write([row], {row["trial_id"]: epochs}):
            self._count(row, trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = TrialConfig.from_dict(trial.config["trial"])
        message = _error_message(trial)
        row = _failed_row(config, self.run_id, message)
        if self._write([row], {}):
            self._count(row, trials)

    def write_failed(self, rows: list[dict[str, Any]]) -> bool:
        """Failed rows of trials that never started (their dataset cannot be had), counted without a line each."""
        if not self._write(rows, {}):
            return False
        self.summary.failed += len(rows)
        return True

    def _write(self, rows: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> bool:
        """Write rows; on a storage error (disk full) keep the first one and stop the run (see ``_StopAll``)."""
        if self.storage_error is not None:
            return False
        try:
            write_rows(self.run_dir, rows, epochs)
        except OSError as error:  # each write is atomic: the tables hold exactly the rows written before
            self.storage_error = error
            return False
        return True

    def _count(self, row: dict[str, Any], trials: list) -> None:
        status = row["status"]
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        if row.get("node"):
            self.summary.nodes.add(row["node"])
        self.running = sum(1 for t in trials if t.status == "RUNNING")
        done = self._done()
        elapsed = time.monotonic() - self.started
        eta = elapsed / (done - self.before) * (self.pending - done) if done > self.before else float("nan")
        label = _label(row)
        outcome = f"top1={row['metric_top1']:.1f}" if row.get("metric_top1") is not None else status.upper()
        if status == "stopped" and row.get("metric_val_top1") is not None:
            outcome += f" (val_top1={row['metric_val_top1']:.1f})"
        print(
            f"[{_clock(elapsed)}] {done}/{self.pending} done, {self.summary.failed} failed, "
            f"{max(0, self.running - 1)} running, eta {_clock(eta)} | {label}: {outcome}",
            flush=True,
        )

    def _done(self) -> int:
        return self.summary.ok + self.summary.failed + self.summary.diverged + self.summary.stopped


class _StopAll(tune.Stopper):
    """Ends the whole experiment once the run folder cannot be written (later rows would be lost anyway) or the
    datasets' preparation stopped on an error that ends the run (``Preparations.error``)."""

    def __init__(self, writer: _RowWriter, datasets: Preparations) -> None:
        self.writer = writer
        self.datasets = datasets

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.writer.storage_error is not None or self.datasets.error is not None


class _WhenReady(Searcher):
    """Hands Tune the stage's trials in ``schedule_order``, each once its dataset is published: trials of a dataset
    start while later datasets still decode. A trial whose dataset cannot be had gets its failed row at once (one
    line per reason). Tune calls this from its driver loop, the thread the row writer runs in."""

    def __init__(self, trials: list[TrialConfig], datasets: Preparations, writer: _RowWriter) -> None:
        super().__init__()
        self.queue = list(trials)
        self.datasets = datasets
        self.writer = writer

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the trials are given; the schedulers have their own metric and mode

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        finished = self.datasets.done  # read first: a dataset published after this is seen below
        self._fail_unavailable()
        for index, config in enumerate(self.queue):
            shard_set = self.datasets.ready.get(_dataset_key(config))
            if shard_set is not None:
                del self.queue[index]
                return {"trial": config.to_dict(), "data": dataset_ref(shard_set)}
        if not self.queue or finished:  # finished with trials left: the preparation's error ends the stage
            return Searcher.FINISHED
        return None  # Tune asks again in a moment

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def _fail_unavailable(self) -> None:
        unavailable = self.datasets.unavailable
        failed = [config for config in self.queue if _dataset_key(config) in unavailable]
        if not failed:
            return
        self.queue = [config for config in self.queue if _dataset_key(config) not in unavailable]
        run_id = self.writer.run_id
        if self.writer.write_failed([_failed_row(t, run_id, unavailable[_dataset_key(t)]) for t in failed]):
            for message in sorted({unavailable[_dataset_key(t)] for t in failed}):
                count = sum(1 for t in failed if unavailable[_dataset_key(t)] == message)
                print(f"bench: {message} -> {count} trial(s) failed", flush=True)


def write_rows(run_dir: Path, rows: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> None:
    written = results.upsert_trials(run_dir / results.TRIALS_FILE, rows)
    for trial_id in written:
        if epochs.get(trial_id):
            results.replace_epochs(run_dir / results.EPOCHS_FILE, trial_id, epochs[trial_id])
    if written:  # a URI --out: each table as one object, the curves first (a row seen has its curve)
        runs.sync(run_dir, results.EPOCHS_FILE, results.TRIALS_FILE)


def _failed_row(config: TrialConfig, run_id: str, error: str) -> dict[str, Any]:
    """The row of a trial that produced no result: its identity, hyperparameters and why it failed."""
    now = utc_now()
    return trial_row(config, run_id=run_id, status="failed", error=error, started_at=now, finished_at=now)


def _error_message(trial: Any) -> str:
    error = getattr(trial, "error_msg", None) or ""
    if not error and getattr(trial, "error_file", None):
        try:
            error = Path(trial.error_file).read_text()
        except OSError:
            error = ""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed without an error message")[:500]


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _connect(address: str | None, num_cpus: int | None) -> dict[str, Any]:
    """Start a local Ray for this run, or join an existing cluster (``--address`` / ``RAY_ADDRESS``)."""
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rows go to Parquet, not CSV/TensorBoard
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
        if address:
            _reachable(address)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError) as error:  # e.g. a token the cluster refuses
                raise UserError(f"cannot join the Ray cluster at {address}: {_first_line(error)}") from None
        else:  # a Ray of this run's own: never one that another program left on the machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    # Tune's end-of-run analysis looks for per-trial CSV/JSON logs we deliberately do not write.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": address or "local", "nodes": len(nodes), "resources": ray.cluster_resources()}


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """The cluster's address answers on TCP within ``timeout_s``, or one line naming it (Ray itself would
    retry for minutes). ``auto`` is the cluster ``ray start`` recorded on this machine."""
    from ray._private.services import canonicalize_bootstrap_address

    target = address.removeprefix("ray://")
    try:
        resolved = target if address.startswith("ray://") else canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as error:
        raise UserError(f"cannot find the Ray cluster '{address}': {_first_line(error)}") from None
    host, _, port = (resolved or "").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({resolved}): {getattr(error, 'strerror', None) or error}; "
            "is its head node up (ray start --head)? Without --address and RAY_ADDRESS bench starts a local Ray"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


class _Cluster:
    """Ray for this run, connected on first use (a run with nothing left to do never starts it)."""

    def __init__(self, address: str | None, num_cpus: int | None, run_dir: Path) -> None:
        self.address, self.num_cpus, self.run_dir = address, num_cpus, run_dir
        self.connected = False

    def connect(self) -> None:
        if self.connected:
            return
        cluster = _connect(self.address, self.num_cpus)
        runs.write_env(self.run_dir, cluster)
        print(
            f"bench: ray {cluster['address']}: {cluster['nodes']} node(s), "
            f"{cluster['resources'].get('CPU', 0):g} CPU, {cluster['resources'].get('GPU', 0):g} GPU",
            flush=True,
        )
        self.connected = True


def run_suite(
    suite: Suite,
    *,
    out: Path | str,
    address: str | None = None,
    resume: bool = False,
    num_cpus: int | None = None,
    cache_dir: Path | str | None = None,
    trackers: list[str] | None = None,
) -> RunSummary:
    """Run every trial of ``suite`` that has no ``ok`` row yet; return the counts. ``cache_dir``: a folder, or the
    URI of an object store for the prepared datasets (``bench.runner.shard_store``; each node then caches them in
    the run's default cache folder). ``trackers``: tracker names added to the suite's ``tracking:`` block
    (``--tracker``)."""
    store = open_store(str(cache_dir)) if cache_dir is not None and remote.is_uri(str(cache_dir)) else None
    tracking_spec = tracking.with_trackers(suite.spec.tracking, trackers or [])
    tracking.check_installed(tracking_spec)
    with runs.open_run(out, suite.name, resume=resume) as opened:  # a URI: a staging folder uploaded as it changes
        run_dir = opened.path
        runs.write_suite(run_dir, suite.resolved)
        done_ids, _ = _finished(run_dir)
        # Absolute: a relative path would name another folder in each Tune trial's working directory.
        local = opened.cache if store is not None or cache_dir is None else Path(cache_dir)
        cache = os.path.abspath(local.expanduser())
        trials = [_placed(t, cache) for t in suite.trials() if t.trial_id not in done_ids]
        total = suite.trial_count()
        skipped = len(done_ids) if suite.two_stage else total - len(trials)
        summary = RunSummary(run_dir=run_dir, total=total, skipped=skipped, location=opened.location)
        stages = " (two stages: the search on the first seed, then each cell's selection on the others)"
        print(
            f"bench: suite '{suite.name}': {total} trials{stages if suite.two_stage else ''}, "
            f"{summary.skipped} already done, {total - summary.skipped} to run -> {opened.location}",
            flush=True,
        )
        started = time.monotonic()
        cluster = _Cluster(address, num_cpus, run_dir)
        if trials:
            _run_stage(suite, trials, run_dir, summary, cache, store, cluster, tracking_spec, search=True)
        if suite.two_stage:
            done_ids, val_top1 = _finished(run_dir)
            confirm, unselected = suite.confirm_trials(val_top1)
            for config in unselected:
                label = _label(config.to_dict())
                print(f"bench: no sample of {label} finished: its other seeds are not run", flush=True)
            confirm = [_placed(t, cache) for t in confirm if t.trial_id not in done_ids]
            if confirm:
                print(f"bench: the selected settings on the other seeds: {len(confirm)} trials", flush=True)
                _run_stage(suite, confirm, run_dir, summary, cache, store, cluster, tracking_spec, search=False)
        summary.seconds = time.monotonic() - started
    return summary


def _run_stage(
    suite: Suite,
    trials: list[TrialConfig],
    run_dir: Path,
    summary: RunSummary,
    cache: str,
    store: ShardStore | None,
    cluster: _Cluster,
    tracking_spec: TrackingSpec,
    *,
    search: bool,
) -> None:
    """Run ``trials`` on the cluster: their datasets prepared as shards, each trial's row written as it ends.
    ``search``: the trials are a search's samples, which the suite's scheduler may stop early."""
    cluster.connect()
    datasets = Preparations(_dataset_configs(trials), cache, store=store).start()
    _tune(suite, trials, datasets, run_dir, summary, tracking_spec, search=search)
    datasets.wait()  # done by now (every trial was handed out), unless an error ended the stage: raised here


def _placed(config: TrialConfig, cache: str) -> TrialConfig:
    values = config.to_dict()
    values["cache_dir"] = cache
    return TrialConfig.from_dict(values)


def _finished(run_dir: Path) -> tuple[set[str], dict[str, float]]:
    """From the run folder's rows: the trials not to run again (every status but failed), and the validation
    top-1 of each trial that finished ``ok`` (what a two-stage search selects on)."""
    path = run_dir / results.TRIALS_FILE
    if not path.exists():
        return set(), {}
    table = results.read_table(path, required=("trial_id", "status"))
    ok = table[table["status"] == "ok"]
    val = ok.get("metric_val_top1", [])
    top1 = {trial_id: float(v) for trial_id, v in zip(ok["trial_id"], val) if v is not None and v == v}
    return set(table.loc[table["status"] != "failed", "trial_id"]), top1


def _label(trial: dict[str, Any]) -> str:
    """A trial's cell in one line, from its config (``to_dict``) or its row."""
    scratch = "" if trial.get("pretrained") in (True, None) else "(scratch)"
    size = f"shots={trial['shots']}" if trial.get("shots") else f"frac={trial['data_fraction']}"
    dataset = display_name(trial["dataset"])
    return f"{trial['backbone']}{scratch} {dataset} freeze={trial['freeze']} {size} seed={trial['seed']}"


def _dataset_configs(trials: list[TrialConfig]) -> dict[str, TrialConfig]:
    """One trial config per (dataset, size, root): what is prepared."""
    configs: dict[str, TrialConfig] = {}
    for config in trials:
        configs.setdefault(_dataset_key(config), config)
    return configs


def schedule_order(trials: list[TrialConfig]) -> list[TrialConfig]:
    """The order Tune starts the trials in: round-robin over (backbone, dataset) groups, backbone-major.

    The first trial of a group pays its one-off work (similarity scores, frozen features, frozen prefix) and
    writes it to the shared cache; the group's later trials read it. In the suite's own order the workers
    start on the same dataset at once and each computes the same one-off work; in this order trials running
    side by side belong to different groups and different datasets, so that work is done once. Results do not
    depend on the order: every trial is a function of its config.
    """
    groups: dict[tuple[Any, ...], list[TrialConfig]] = {}
    for config in trials:
        key = (config.backbone, config.pretrained, config.weights, config.img_size, config.dataset, config.dataset_root)
        groups.setdefault(key, []).append(config)
    backbones = list(dict.fromkeys(key[:4] for key in groups))  # in the suite's order
    queues = [groups[key] for key in sorted(groups, key=lambda key: backbones.index(key[:4]))]  # stable sort
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


def _scheduler(suite: Suite) -> PerCellScheduler | None:
    """The search's early stopping, one scheduler per cell; None without a search or with ``kind: none``."""
    search = suite.spec.search
    if search is None or search.scheduler.kind == "none":
        return None
    make = scheduler_factory(
        search.scheduler.kind,
        grace_evaluations=search.scheduler.grace_evaluations,
        reduction_factor=search.scheduler.reduction_factor,
    )
    return PerCellScheduler(make)


def _tune(
    suite: Suite,
    trials: list[TrialConfig],
    datasets: Preparations,
    run_dir: Path,
    summary: RunSummary,
    tracking_spec: TrackingSpec,
    *,
    search: bool,
) -> None:
    scheduler = _scheduler(suite) if search else None
    context = tracking.Context(suite=suite.name, run_id=run_dir.name, run_dir=run_dir, label=_label)
    trackers = tracking.callbacks(tracking_spec, context)
    resources = {"cpu": suite.tune.resources_per_trial.cpu, "gpu": suite.tune.resources_per_trial.gpu}
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable,
            run_id=run_dir.name,
            timeout_s=suite.tune.trial_timeout_s,
            report_evaluations=scheduler is not None or bool(trackers),  # trackers plot each evaluation
            cpu=resources["cpu"],
        ),
        resources,
    )
    writer = _RowWriter(run_dir, run_dir.name, summary, pending=len(trials))
    searcher = _WhenReady(schedule_order(trials), datasets, writer)
    scratch = tempfile.mkdtemp(prefix="bench-tune-")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # Each trial once its dataset is published; as many pending at once as may run (Tune's own default
            # for a searcher is one pending trial at a time).
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=suite.tune.max_concurrent_trials or len(trials)),
            num_samples=len(trials),
            scheduler=scheduler,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            # Tune's own experiment state is scratch (resume reads our Parquet rows), so it stays out of the
            # run folder: a full or read-only results disk then fails in one place, our row writer.
            name="tune",
            storage_path=scratch,
            verbose=0,
            callbacks=[writer, *trackers],  # the row first: a tracker never delays or loses it
            stop=_StopAll(writer, datasets),
            failure_config=tune.FailureConfig(max_failures=suite.tune.max_failures),
        ),
    )
    try:
        tuner.fit()
    except (ray.exceptions.RayError, RuntimeError) as error:  # the driver lost the cluster: rows so far are kept
        print(
            f"bench: Ray stopped the run: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
            file=sys.stderr,
            flush=True,
        )
        traceback.print_exc(limit=2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if writer.storage_error is not None:
        error = writer.storage_error
        where = error.filename or run_dir
        raise StorageError(
            f"cannot write {where}: {error.strerror or error}; the {summary.ok + summary.diverged + summary.stopped} "
            "trial(s) finished before it are kept; free space (or fix the store's access), then bench run --resume"
        )
