"""Ray Tune runs a suite: the driver. Ray is imported only under ``bench/runner/``.

``run_suite`` expands a suite into trial configs, prepares each dataset once as shards over the cluster
(``bench.runner.datasets``), and hands the trials to ``tune.Tuner`` through a searcher that releases each trial, in
``schedule_order``, as soon as its dataset is published (``bench.runner.driver.WhenReady``); a two-stage search
runs two such stages, the search and then each cell's selection on the other seeds, and a search that extends
itself (``search.extend``) runs one more search stage per round of points past its cells' edges in between
(``Suite.search_rounds``, recomputed from the rows, so a resumed run finds the rounds it misses). Each worker runs
``bench.runner.worker.trainable`` (the core, ``bench.training.trial.run_trial``) and reports its row back; the
driver writes every row as it arrives, atomically, into the run folder's Parquet tables
(``bench.runner.driver.RowWriter``), so workers never need to see the run folder. A ``UserError`` or a timeout
(``tune.trial_timeout_s``) becomes a ``failed`` row at once; any other exception is retried up to
``tune.max_failures`` times, then its row says why. A search's scheduler stops samples within their cell
(``bench.runner.schedulers``). Resume is bench's, not Tune's: the run folder's rows say which trials are done.
(docs/design.md, "Layout of the package")
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from bench.config import TrialConfig
from bench.errors import StorageError, UserError
from bench.results import remote
from bench.results import store as results
from bench.runner import run_dir as runs
from bench.runner import tracking
from bench.runner.datasets import Preparations
from bench.runner.driver import RowWriter, RunSummary, StopAll, WhenReady, dataset_key, label
from bench.runner.schedulers import PerCellScheduler, scheduler_factory
from bench.runner.shard_store import ShardStore, open_store
from bench.runner.worker import trainable
from bench.suite import Suite
from bench.suite.spec import TrackingSpec

__all__ = ["RunSummary", "run_suite", "schedule_order"]


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
        skipped = len(done_ids) if suite.two_stage or suite.extends else total - len(trials)
        summary = RunSummary(run_dir=run_dir, total=total, skipped=skipped, location=opened.location)
        print(
            f"bench: suite '{suite.name}': {total} trials{_stages(suite)}, "
            f"{summary.skipped} already done, {max(total - summary.skipped, 0)} to run -> {opened.location}",
            flush=True,
        )
        started = time.monotonic()
        cluster = _Cluster(address, num_cpus, run_dir)
        if trials:
            _run_stage(suite, trials, run_dir, summary, cache, store, cluster, tracking_spec, search=True)
        for round_ in range(1, suite.extends + 1):
            done_ids, val_top1 = _finished(run_dir)
            rounds = suite.search_rounds(val_top1)
            if round_ >= len(rounds):
                break  # no cell's selection is on an edge within its limits
            extension = [_placed(t, cache) for t in rounds[round_] if t.trial_id not in done_ids]
            if extension:  # a resumed run passes over the rounds its rows hold
                cells = len({t.cell_id for t in rounds[round_]})
                print(
                    f"bench: search extended past an edge in {cells} cell(s) (round {round_} of {suite.extends})",
                    flush=True,
                )
                _run_stage(suite, extension, run_dir, summary, cache, store, cluster, tracking_spec, search=True)
        if suite.two_stage:
            done_ids, val_top1 = _finished(run_dir)
            confirm, unselected = suite.confirm_trials(val_top1)
            for config in unselected:
                cell = label(config.to_dict())
                print(f"bench: no sample of {cell} finished: its other seeds are not run", flush=True)
            confirm = [_placed(t, cache) for t in confirm if t.trial_id not in done_ids]
            if confirm:
                print(f"bench: the selected settings on the other seeds: {len(confirm)} trials", flush=True)
                _run_stage(suite, confirm, run_dir, summary, cache, store, cluster, tracking_spec, search=False)
        summary.seconds = time.monotonic() - started
    return summary


def _stages(suite: Suite) -> str:
    """What the plan line says of a two-stage search and of its extensions (counted apart: "up to")."""
    stages = " (two stages: the search on the first seed, then each cell's selection on the others)"
    extra = suite.extension_bound()
    extended = f" and up to {extra} more past the search's edges ({suite.extends} round(s))" if extra else ""
    return (stages if suite.two_stage else "") + extended


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


def _dataset_configs(trials: list[TrialConfig]) -> dict[str, TrialConfig]:
    """One trial config per (dataset, size, root): what is prepared."""
    configs: dict[str, TrialConfig] = {}
    for config in trials:
        configs.setdefault(dataset_key(config), config)
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
    context = tracking.Context(suite=suite.name, run_id=run_dir.name, run_dir=run_dir, label=label)
    trackers = tracking.callbacks(tracking_spec, context)
    resources = {"cpu": suite.tune.resources_per_trial.cpu, "gpu": suite.tune.resources_per_trial.gpu}
    runnable = tune.with_resources(
        tune.with_parameters(
            trainable,
            run_id=run_dir.name,
            timeout_s=suite.tune.trial_timeout_s,
            report_evaluations=scheduler is not None or bool(trackers),  # trackers plot each evaluation
            cpu=resources["cpu"],
        ),
        resources,
    )
    writer = RowWriter(run_dir, run_dir.name, summary, pending=len(trials))
    searcher = WhenReady(schedule_order(trials), datasets, writer)
    scratch = tempfile.mkdtemp(prefix="bench-tune-")
    tuner = tune.Tuner(
        runnable,
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
            stop=StopAll(writer, datasets),
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
