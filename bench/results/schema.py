"""The result schema: every fact about a result row, in one place, with no Parquet dependency.

``trials.parquet`` holds one row per trial and ``epochs.parquet`` one row per validation evaluation
(docs/design.md, "Run folder"). The contract columns and their types are listed here; ``trial_row`` is the
only function that builds a trial row, for every status (``ok``, ``diverged`` and ``failed``), so the training
core and the runner cannot disagree on a column. The store (``bench.results.store``) maps the type names to
Arrow types; the training core imports this module without importing pyarrow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.config import TrialConfig
from bench.data.names import display_name

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged", "stopped")  # stopped: ended early by a search's scheduler

# The contract columns of trials.parquet, in contract order, with their Arrow type names.
TRIAL_COLUMNS: dict[str, str] = {
    "schema_version": "int64",
    "suite": "string",
    "run_id": "string",
    "trial_id": "string",
    "status": "string",  # ok | failed | diverged
    "error": "string",
    "backbone": "string",
    "pretrained": "bool",
    "weights": "string",
    "dataset": "string",
    "dataset_group": "string",  # natural | specialized | structured
    "n_classes": "int64",
    "similarity_score": "double",
    "transferability": "double",
    "similarity_regime": "string",  # high | low
    "freeze": "double",  # 0 = train everything ... 1 = linear probe
    "frozen_param_fraction": "double",
    "trainable_params": "int64",
    "total_params": "int64",
    "data_fraction": "double",
    "shots": "int64",
    "n_train": "int64",
    "data_regime": "string",  # scarce | limited | sufficient
    "seed": "int64",
    "hp_lr": "double",
    "hp_epochs": "int64",
    "hp_steps": "int64",
    "hp_batch_size": "int64",
    "hp_optimizer": "string",
    "hp_img_size": "int64",
    "hp_augment": "string",
    "metric_top1": "double",
    "metric_macro_f1": "double",
    "metric_nll": "double",
    "metric_val_top1": "double",
    "train_seconds": "double",
    "images_per_second": "double",
    "peak_memory_mb": "double",
    "device": "string",
    "node": "string",
    "torch_version": "string",
    "timm_version": "string",
    "ray_version": "string",
    "started_at": "string",  # ISO 8601, UTC
    "finished_at": "string",  # ISO 8601, UTC
}

# One row per trial per evaluation.
EPOCH_COLUMNS: dict[str, str] = {
    "schema_version": "int64",
    "run_id": "string",
    "trial_id": "string",
    "epoch": "int64",
    "step": "int64",
    "phase": "string",  # probe | finetune | train
    "train_loss": "double",
    "val_top1": "double",
    "val_nll": "double",
    "lr": "double",
    "elapsed_seconds": "double",
}

# Without these a trials table cannot be ranked at all; other missing contract columns are filled with nulls.
ESSENTIAL_TRIAL_COLUMNS = ("trial_id", "status", "backbone", "dataset", "metric_top1")
ESSENTIAL_EPOCH_COLUMNS = ("trial_id", "epoch")

# Similarity to ImageNet and transferability of the frozen features: null where they were not measured.
SIMILARITY_COLUMNS = (
    "similarity_score",
    "transferability",
    "similarity_regime",
    "similarity_method",
    "bn_divergence",
    "leep",
    "nce",
    "h_score",
    "max_softmax",
    "energy",
)

# Every column a trial row may carry, in the order it is written (contract columns and the extras).
ROW_COLUMNS = (
    "schema_version",
    "suite",
    "run_id",
    "trial_id",
    "cell_id",
    "status",
    "error",
    "backbone",
    "pretrained",
    "weights",
    "weights_sha256",
    "dataset",
    "dataset_name",  # the short name tables show (bench.data.names.display_name); older tables: derived on read
    "dataset_group",
    "dataset_fingerprint",
    "n_classes",
    "freeze",
    "strategy",
    "freeze_depth",
    "frozen_param_fraction",
    "freeze_groups",
    "trainable_params",
    "total_params",
    "data_fraction",
    "shots",
    "n_train",
    "n_val",
    "n_test",
    "images_per_class",
    "data_regime",
    "seed",
    "data_seed",  # the seed that drew the training subset: the trial's data_seed, else its seed
    "hp_lr",
    "hp_probe_lr",
    "hp_epochs",
    "hp_steps",
    "hp_total_steps",
    "steps_run",
    "hp_batch_size",
    "hp_optimizer",
    "hp_weight_decay",
    "hp_img_size",
    "hp_augment",
    "hp_momentum",
    "hp_warmup_fraction",
    "hp_label_smoothing",
    "metric_top1",
    "metric_macro_f1",
    "metric_nll",
    "metric_val_top1",
    "metric_best_val_top1",
    # train.early_stop and train.keep_best (not hp_ columns: no search varies them within a cell)
    "early_stop_patience",
    "early_stop_min_delta",
    "keep_best",
    "converged",  # bench.training.convergence.converged
    "stopped_on_plateau",
    "evaluations",
    "kept_evaluation",  # 1-based: the evaluation whose weights gave the test metrics
    # linear_probe: solved (lbfgs: C chosen on validation, bench.training.convex_probe) or stepped (sgd)
    "probe_solver",
    "probe_c",  # the chosen inverse L2 strength (scikit-learn's C)
    "probe_c_edge",  # where probe_c lies on its grid: lower, upper or interior
    "probe_iterations",  # L-BFGS iterations over the whole path and the refit
    "feature_cache",
    "frozen_prefix",
    "train_seconds",
    "images_per_second",
    "peak_memory_mb",
    "device",
    "precision",
    "node",
    "torch_version",
    "timm_version",
    "ray_version",
    "started_at",
    "finished_at",
    *SIMILARITY_COLUMNS,
    "eval_folded_bn",
    "padded_depthwise_grad",
    "compiled",
    "compile_seconds",
    "compiled_steps",
    "batch_size_used",
    "oom_halvings",
    "batch_size_search",
    "dataset_shards",  # shards of the prepared dataset (bench.data.shards)
    "dataset_shard_format",  # raw | jpeg (lossy: other pixels, another dataset_fingerprint)
    "dataset_decoded_by",  # which node decoded how many of them: "<address>/<node id> <count>, ..."
    "dataset_copied_mb",  # shard bytes this trial copied into its node's cache before it started
)


@dataclass(frozen=True)
class DataThresholds:
    """Training images per class: scarce < ``limited``, limited < ``sufficient``, else sufficient."""

    limited: float = 10
    sufficient: float = 100

    def regime(self, per_class: float | None) -> str | None:
        if per_class is None or not np.isfinite(per_class):
            return None
        if per_class < self.limited:
            return "scarce"
        return "limited" if per_class < self.sufficient else "sufficient"


DEFAULT_THRESHOLDS = DataThresholds()


def utc_now() -> str:
    """Now, as the tables' ``started_at`` / ``finished_at`` write it: ISO 8601 in UTC, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def trial_row(
    config: TrialConfig,
    *,
    run_id: str,
    status: str,
    error: str | None,
    started_at: str,
    finished_at: str | None = None,
    **measured: Any,
) -> dict[str, Any]:
    """One trials.parquet row: the trial's identity and hyperparameters from ``config``, then what was
    ``measured`` (any of ``ROW_COLUMNS``), in ``ROW_COLUMNS`` order. A failed trial passes nothing measured
    and its row carries its identity and error only."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    unknown = sorted(set(measured) - set(ROW_COLUMNS))
    if unknown:
        raise ValueError(f"not result columns: {unknown}")
    values = {
        "suite": config.suite,
        "run_id": run_id,
        "trial_id": config.trial_id,
        "cell_id": config.cell_id,
        "status": status,
        "error": error,
        "backbone": config.backbone,
        "pretrained": config.pretrained,
        "dataset": config.dataset,
        "dataset_name": display_name(config.dataset),
        "freeze": str(config.freeze),
        "strategy": config.strategy,
        "freeze_depth": config.freeze_fraction,
        "data_fraction": config.data_fraction,
        "shots": config.shots,
        "seed": config.seed,
        "data_seed": config.subset_seed,
        "hp_lr": config.lr,
        "hp_probe_lr": config.probe_lr,
        "hp_epochs": config.epochs,
        "hp_steps": config.steps,
        "hp_batch_size": config.fixed_batch_size,
        "hp_optimizer": config.optimizer,
        "hp_weight_decay": config.weight_decay,
        "hp_img_size": config.img_size,
        "hp_augment": config.augment,
        "hp_momentum": config.momentum,
        "hp_warmup_fraction": config.warmup_fraction,
        "hp_label_smoothing": config.label_smoothing,
        "early_stop_patience": config.early_stop_patience,
        "early_stop_min_delta": config.early_stop_min_delta if config.early_stop_patience is not None else None,
        "keep_best": config.keep_best,
        "probe_solver": config.probe_solver if config.strategy == "linear_probe" else None,
        "started_at": started_at,
        "finished_at": finished_at or utc_now(),
        "schema_version": SCHEMA_VERSION,
        **measured,
    }
    return {name: values[name] for name in ROW_COLUMNS if name in values}
