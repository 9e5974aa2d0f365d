"""The driver's side of Tune's loop: the searcher that hands out a stage's trials, the callback that writes each
trial's row the moment it arrives, and the stopper that ends a run whose rows can no longer be written.

Tune calls all three from its driver loop, one thread. ``WhenReady`` releases each trial, in the order given
(``bench.runner.tune.schedule_order``), once its dataset is published (``bench.runner.datasets.Preparations``),
and writes the failed rows of trials whose dataset cannot be had. ``RowWriter`` writes rows atomically into
the run folder's Parquet tables (``write_rows``), so workers never need to see the run folder, and prints one
progress line per finished trial; a trial a scheduler ended gets its ``stopped`` row here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ray import tune
from ray.tune.search import Searcher

from bench.config import TrialConfig
from bench.data import display_name
from bench.results import store as results
from bench.runner import run_dir as runs
from bench.runner.datasets import dataset_ref
from bench.runner.worker import failed_row, stopped_row


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


class Datasets(Protocol):
    """What the driver's loop reads of a stage's datasets (``bench.runner.datasets.Preparations``)."""

    ready: dict[str, Any]  # dataset_key -> its published ShardSet
    unavailable: dict[str, str]  # dataset_key -> why it cannot be had (one line)
    error: BaseException | None  # what stopped the preparation and ends the run

    @property
    def done(self) -> bool: ...


def dataset_key(config: TrialConfig) -> str:
    """Which prepared dataset a trial reads: one per (dataset, image size, root, shard format)."""
    return json.dumps([config.dataset, config.img_size, config.dataset_root, config.shard_format])


def label(trial: dict[str, Any]) -> str:
    """A trial's cell in one line, from its config (``to_dict``) or its row."""
    scratch = "" if trial.get("pretrained") in (True, None) else "(scratch)"
    size = f"shots={trial['shots']}" if trial.get("shots") else f"frac={trial['data_fraction']}"
    dataset = display_name(trial["dataset"])
    return f"{trial['backbone']}{scratch} {dataset} freeze={trial['freeze']} {size} seed={trial['seed']}"


def write_rows(run_dir: Path, rows: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> None:
    """Upsert ``rows`` into the run folder's trials table and replace the evaluation rows (``epochs``, by trial
    id) of each row written; a URI run folder uploads both tables. Raises ``OSError`` when a table cannot be
    written; each write is atomic."""
    written = results.upsert_trials(run_dir / results.TRIALS_FILE, rows)
    for trial_id in written:
        if epochs.get(trial_id):
            results.replace_epochs(run_dir / results.EPOCHS_FILE, trial_id, epochs[trial_id])
    if written:  # a URI --out: each table as one object, the curves first (a row seen has its curve)
        runs.sync(run_dir, results.EPOCHS_FILE, results.TRIALS_FILE)


class RowWriter(tune.Callback):
    """Writes each trial's row the moment it arrives, and prints one progress line per finished trial. The
    first ``OSError`` of a write is kept in ``storage_error`` and no later row is written."""

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
        row, epochs = stopped_row(config, self.run_id, result)
        self.reported.add(trial.trial_id)
        if self._write([row], {row["trial_id"]: epochs}):
            self._count(row, trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = TrialConfig.from_dict(trial.config["trial"])
        row = failed_row(config, self.run_id, _error_message(trial))
        if self._write([row], {}):
            self._count(row, trials)

    def write_failed(self, rows: list[dict[str, Any]]) -> bool:
        """Failed rows of trials that never started (their dataset cannot be had), counted without a line each.
        Returns whether they were written."""
        if not self._write(rows, {}):
            return False
        self.summary.failed += len(rows)
        return True

    def _write(self, rows: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> bool:
        """Write rows; on a storage error (disk full) keep the first one and stop the run (see ``StopAll``)."""
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
        outcome = f"top1={row['metric_top1']:.1f}" if row.get("metric_top1") is not None else status.upper()
        if status == "stopped" and row.get("metric_val_top1") is not None:
            outcome += f" (val_top1={row['metric_val_top1']:.1f})"
        print(
            f"[{_clock(elapsed)}] {done}/{self.pending} done, {self.summary.failed} failed, "
            f"{max(0, self.running - 1)} running, eta {_clock(eta)} | {label(row)}: {outcome}",
            flush=True,
        )

    def _done(self) -> int:
        return self.summary.ok + self.summary.failed + self.summary.diverged + self.summary.stopped


class StopAll(tune.Stopper):
    """Ends the whole experiment once the run folder cannot be written (later rows would be lost anyway) or the
    datasets' preparation stopped on an error that ends the run (``Preparations.error``)."""

    def __init__(self, writer: RowWriter, datasets: Datasets) -> None:
        self.writer = writer
        self.datasets = datasets

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.writer.storage_error is not None or self.datasets.error is not None


class WhenReady(Searcher):
    """Hands Tune ``trials`` in the order given, each once its dataset is published: trials of a dataset start
    while later datasets still decode. ``suggest`` returns a trial's Tune config (``{"trial": config.to_dict(),
    "data": dataset_ref(...)}``), None while no trial left has its dataset yet, and ``Searcher.FINISHED`` once
    none is left or the datasets are done with trials left (a preparation error ends the stage). A trial whose
    dataset cannot be had gets its failed row through ``writer`` at once (one line per reason)."""

    def __init__(self, trials: list[TrialConfig], datasets: Datasets, writer: RowWriter) -> None:
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
            shard_set = self.datasets.ready.get(dataset_key(config))
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
        failed = [config for config in self.queue if dataset_key(config) in unavailable]
        if not failed:
            return
        self.queue = [config for config in self.queue if dataset_key(config) not in unavailable]
        run_id = self.writer.run_id
        if self.writer.write_failed([failed_row(t, run_id, unavailable[dataset_key(t)]) for t in failed]):
            for message in sorted({unavailable[dataset_key(t)] for t in failed}):
                count = sum(1 for t in failed if unavailable[dataset_key(t)] == message)
                print(f"bench: {message} -> {count} trial(s) failed", flush=True)


def _error_message(trial: Any) -> str:
    """The last line of a failed trial's error (Tune's message or error file), at most 500 characters."""
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
