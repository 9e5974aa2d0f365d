"""Experiment trackers: Ray Tune's MLflow, W&B and TensorBoard callbacks, fed what a bench trial is.

Contract (each tracker, one run per trial):

- name: the trial's cell in one line (backbone, dataset by its display name, freeze, data size, seed);
- params / config: the trial's identity (backbone, weights, strategy, freeze, data size, dataset and its display
  name ``dataset_name``, seed) and every ``hp_*`` column of its row; tags: suite, run id, trial id, cell id;
- metrics: the validation curve, one point per evaluation at its optimiser step (``val_top1``, ``val_nll``,
  ``train_loss``, ``lr``), then the row's numeric measurements at the last step (``metric_top1``,
  ``train_seconds``, ``trainable_params``...);
- status: ``failed`` rows end as failed runs with their error, trials a scheduler stopped as killed (MLflow).

The Parquet tables stay the record: a tracker that fails (unreachable server, missing credentials) prints one
warning line and is switched off for the rest of the run; no row depends on it. The trackers run in the driver
(W&B in a logging actor beside it), never in the trials.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import TrialConfig
from bench.errors import UserError
from bench.results.schema import trial_row
from bench.suite.spec import MLflowSpec, TensorBoardSpec, TrackingSpec, WandbSpec

_MODULE = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}
_IDENTITY = frozenset(
    {
        "backbone",
        "pretrained",
        "dataset",
        "dataset_name",
        "strategy",
        "freeze",
        "freeze_depth",
        "data_fraction",
        "shots",
        "seed",
        "data_seed",
    }
)
CURVE = ("val_top1", "val_nll", "train_loss", "lr")  # the evaluation columns a trial reports as it goes
_RUN_STATUS = {"failed": "FAILED", "stopped": "KILLED"}  # MLflow's; ok and diverged runs finish


def with_trackers(spec: TrackingSpec, names: list[str]) -> TrackingSpec:
    """The suite's ``tracking:`` block plus the trackers named on the command line (at their defaults)."""
    defaults = {"mlflow": MLflowSpec(), "wandb": WandbSpec(), "tensorboard": TensorBoardSpec()}
    added = {name: defaults[name] for name in names if getattr(spec, name) is None}
    return spec.model_copy(update=added)


def check_installed(spec: TrackingSpec) -> None:
    """Each tracker's package is importable, or one line naming the extra that installs it."""
    for name in spec.names():
        if importlib.util.find_spec(_MODULE[name]) is None:
            raise UserError(f"tracker '{name}' needs its package: pip install 'bench[{name}]'")


@dataclass(frozen=True)
class TrialView:
    """What every tracker shows of one trial."""

    name: str
    params: dict[str, Any]
    tags: dict[str, str]


@dataclass(frozen=True)
class Context:
    suite: str
    run_id: str
    run_dir: Path
    label: Callable[[dict[str, Any]], str]

    def view(self, trial: Any) -> TrialView:
        config = TrialConfig.from_dict(trial.config["trial"])
        row = trial_row(config, run_id=self.run_id, status="ok", error=None, started_at="")
        params = {k: v for k, v in row.items() if (k in _IDENTITY or k.startswith("hp_")) and v is not None}
        if config.weights:
            params["weights"] = config.weights
        tags = {"suite": self.suite, "run_id": self.run_id, "trial_id": config.trial_id, "cell_id": config.cell_id}
        name = self.label({**config.to_dict(), "dataset": row["dataset_name"]})  # the short name, not a path
        return TrialView(name=name, params=params, tags=tags)


def metrics(result: dict[str, Any]) -> tuple[dict[str, float], int]:
    """A Tune result as tracker metrics and their step: an evaluation's curve values, or the final result's
    measurements (its row's numeric columns)."""
    step = int(result.get("step") or 0)
    if not result.get("final"):
        return {k: float(v) for k, v in (result.get("curve") or {}).items() if _number(v)}, step
    row = json.loads(result.get("row_json") or "{}")
    return {k: float(v) for k, v in row.items() if _number(v) and _measured(k)}, step


def _measured(column: str) -> bool:
    """A row column that is a measurement, not the trial's identity or a hyperparameter (those are params)."""
    return not (column in _IDENTITY or column.startswith("hp_") or column == "schema_version")


def ended(result: dict[str, Any] | None, failed: bool) -> tuple[str, str | None]:
    """The trial's row status and error: ``failed`` when Tune saw it fail, else what its row says
    (``stopped`` when a scheduler ended it before its final report)."""
    if failed:
        return "failed", None
    result = result or {}
    if not result.get("final"):
        return "stopped", None
    row = json.loads(result.get("row_json") or "{}")
    return row.get("status") or "ok", row.get("error")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _guarded(method: Callable) -> Callable:
    """Run a tracker callback's method; on its first error warn in one line and switch the tracker off."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.bench_off:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # a tracker never stops the run nor costs a row
            self.bench_off = True
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            print(
                f"bench: warning: tracker {self.bench_name} is off for this run ({reason}); the rows still go to "
                "the run folder",
                file=sys.stderr,
                flush=True,
            )
            return None

    return call


def callbacks(spec: TrackingSpec, context: Context) -> list[Any]:
    """One Ray Tune callback per tracker of ``spec`` (their packages were checked by ``check_installed``)."""
    made: list[Any] = []
    if spec.mlflow is not None:
        made.append(_mlflow(spec.mlflow, context))
    if spec.wandb is not None:
        made.append(_wandb(spec.wandb, context))
    if spec.tensorboard is not None:
        made.append(_tensorboard(spec.tensorboard, context))
    return made


# ---------------------------------------------------------------------------------------------------------
# MLflow


def _mlflow(spec: MLflowSpec, context: Context) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowTracker(MLflowLoggerCallback):
        bench_name, bench_off = "mlflow", False

        @_guarded
        def setup(self, *args: Any, **kwargs: Any) -> None:
            _reachable(self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
            super().setup(*args, **kwargs)

        @_guarded
        def log_trial_start(self, trial: Any) -> None:
            if trial in self._trial_runs:  # a retried trial logs into its first run
                return
            view = context.view(trial)
            run = self.mlflow_util.start_run(tags={**self.tags, **view.tags}, run_name=view.name)
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=view.params)

        @_guarded
        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            values, step = metrics(result)
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=values, step=step)

        @_guarded
        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            import mlflow

            run_id = self._trial_runs.pop(trial)
            status, error = ended(trial.last_result, failed)
            client = mlflow.MlflowClient()
            client.set_tag(run_id, "status", status)
            if error or failed:
                client.set_tag(run_id, "error", (error or getattr(trial, "error_msg", None) or "trial failed")[:5000])
            self.mlflow_util.end_run(run_id=run_id, status=_RUN_STATUS.get(status, "FINISHED"))

    return MLflowTracker(tracking_uri=spec.tracking_uri, experiment_name=spec.experiment_name or context.suite, tags={})


def _reachable(uri: str | None) -> None:
    """An HTTP tracking server answers its health check within seconds, or the tracker is switched off
    (MLflow's own client retries for minutes)."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{uri} does not answer: {getattr(error, 'reason', error)}") from None


# ---------------------------------------------------------------------------------------------------------
# Weights & Biases


def _wandb(spec: WandbSpec, context: Context) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    folder = Path(spec.dir) if spec.dir else context.run_dir
    kwargs: dict[str, Any] = {"dir": str(folder)}
    if spec.mode:
        kwargs["mode"] = spec.mode

    class WandbTracker(WandbLoggerCallback):
        bench_name, bench_off = "wandb", False

        @_guarded
        def setup(self, *args: Any, **kwargs: Any) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            if spec.mode:  # Ray's callback reads the mode from the environment (offline: no API key needed)
                os.environ["WANDB_MODE"] = spec.mode
            super().setup(*args, **kwargs)

        @_guarded
        def log_trial_start(self, trial: Any) -> None:
            view = context.view(trial)
            self._start_logging_actor(
                trial,
                list(self._exclude_results) + list(self.excludes),
                id=view.tags["trial_id"],
                name=view.name,
                resume="allow",
                allow_val_change=True,
                group=spec.group or view.tags["run_id"],
                project=self.project,
                config={**view.params, **view.tags},
                tags=[context.suite, context.run_id],
                **self.kwargs,
            )

        @_guarded
        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            values, step = metrics(result)
            logged: dict[str, Any] = {**values, "step": step}
            if result.get("final"):  # the run's config gains how the trial ended (W&B logs numbers only)
                status, error = ended(result, False)
                logged["config"] = {"status": status, **({"error": error} if error else {})}
            super().log_trial_result(iteration, trial, logged)

        @_guarded
        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            super().log_trial_end(trial, failed=failed)

    return WandbTracker(project=spec.project or context.suite, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# TensorBoard


def _tensorboard(spec: TensorBoardSpec, context: Context) -> Any:
    from ray.tune.logger import TBXLoggerCallback

    root = Path(spec.log_dir) if spec.log_dir else context.run_dir / "tensorboard"

    class TensorBoardTracker(TBXLoggerCallback):
        bench_name, bench_off = "tensorboard", False

        @_guarded
        def log_trial_start(self, trial: Any) -> None:
            if trial in self._trial_writer:
                return
            view = context.view(trial)
            folder = root / _folder_name(view)
            self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
            self._trial_result[trial] = {}
            self._trial_writer[trial].add_text("trial", json.dumps({**view.params, **view.tags}, default=str))

        @_guarded
        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if trial not in self._trial_writer:
                self.log_trial_start(trial)
            values, step = metrics(result)
            writer = self._trial_writer[trial]
            for key, value in values.items():
                writer.add_scalar(key, value, global_step=step)
            self._trial_result[trial].update(values)
            writer.flush()

        @_guarded
        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            from tensorboardX.summary import hparams

            writer = self._trial_writer.pop(trial, None)
            final = self._trial_result.pop(trial, {})
            if writer is None:
                return
            view = context.view(trial)
            status, error = ended(trial.last_result, failed)
            writer.add_text("status", status + (f": {error}" if error else ""))
            params = {k: v for k, v in {**view.params, **view.tags, "status": status}.items() if _hparam(v)}
            for summary in hparams(params, {k: v for k, v in final.items() if k.startswith("metric_")}):
                writer.file_writer.add_summary(summary)
            writer.close()

    return TensorBoardTracker()


def _folder_name(view: TrialView) -> str:
    """A readable folder per trial, unique by its trial id."""
    readable = re.sub(r"[^A-Za-z0-9_.=-]+", "_", view.name).strip("_")[:120]
    return f"{readable}_{view.tags['trial_id']}"


def _hparam(value: Any) -> bool:
    return isinstance(value, str | bool | int | float)
