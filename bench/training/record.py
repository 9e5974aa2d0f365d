"""What one try at a trial measured, collected step by step, and the trials.parquet row it makes.

``bench.training.trial`` fills a ``TrialRecord`` as the trial goes (similarity before training, each phase's
outcome after it, the test metrics last) and turns it into its row with ``row()``, through
``bench.results.schema.trial_row``, the one builder of trial rows.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from bench.config import TrialConfig
from bench.data import PreparedDataset
from bench.models import Backbone
from bench.models.freeze import FreezePlan
from bench.results.schema import DEFAULT_THRESHOLDS, SCHEMA_VERSION, trial_row
from bench.training import precision
from bench.training.compiled import CompileStats
from bench.training.convergence import converged
from bench.training.convex_probe import ProbeSelection
from bench.training.device import device_name, peak_memory_mb
from bench.training.loop import FitOutcome
from bench.training.phases import Phase


@dataclass
class TrialRecord:
    """One try at a trial: what it was given (config, dataset, backbone, splits, phases) and what it measured.

    ``scores``: the similarity columns (``bench.training.similarity``). ``epochs``: one evaluation row per
    validation, appended by the training loop. ``add_phase`` records each trained phase; ``metrics``: the test
    metrics, ``val_top1`` and ``kept_evaluation`` (``bench.training.trial``), empty unless the trial ended
    ``ok``."""

    config: TrialConfig
    run_id: str
    started_at: str
    device: torch.device
    data: PreparedDataset
    backbone: Backbone
    n_train: int
    n_val: int
    phases: list[Phase]
    compile_mode: str
    scores: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    plan: FreezePlan | None = None  # the last trained phase's
    frozen_paths: list[tuple[str, str]] = field(default_factory=list)  # (phase name, how its frozen part ran)
    train_seconds: float = 0.0
    images_seen: int = 0
    steps_run: int = 0  # optimiser steps over the phases
    stopped_on_plateau: bool = False  # the last phase ended on a validation plateau
    padded_convs: int = 0  # convolutions per eager step trained through bench.speedups.depthwise
    eval_folded_bn: int = 0  # BatchNorms folded for the last phase's evaluations
    phase_stats: list[CompileStats] = field(default_factory=list)  # each phase's compiling, evaluations included
    metrics: dict[str, Any] = field(default_factory=dict)
    probe: ProbeSelection | None = None  # a solved linear probe's selection (train.probe.solver lbfgs)

    def add_phase(
        self, phase: Phase, plan: FreezePlan, frozen_path: str, outcome: FitOutcome, stats: CompileStats, folded: int
    ) -> None:
        """Record a trained ``phase``: its freeze ``plan``, its ``frozen_path`` (``PhaseSetup.frozen_path``), the
        loop's ``outcome``, its compile ``stats`` (still counting while the test split is evaluated) and the
        number of BatchNorms its evaluations ``folded``. A diverged outcome sets ``status`` and ``error``."""
        self.plan = plan
        self.frozen_paths.append((phase.name, frozen_path))
        self.phase_stats.append(stats)
        self.eval_folded_bn = folded
        self.train_seconds += outcome.seconds
        self.images_seen += outcome.images_seen
        self.steps_run += outcome.steps
        self.stopped_on_plateau = outcome.plateau
        self.padded_convs = max(self.padded_convs, outcome.padded_convs)
        if outcome.diverged:
            self.status, self.error = "diverged", f"non-finite loss at step {outcome.steps} of phase '{phase.name}'"

    def row(self) -> dict[str, Any]:
        """The trials.parquet row (``bench.results.schema.trial_row``); peak memory is read now. Raises
        ValueError before any phase was recorded."""
        if self.plan is None:
            raise ValueError("a trial row needs at least one trained phase")
        plan, data = self.plan, self.data
        head_params = sum(p.numel() for p in self.backbone.head.parameters())
        val_scores = [r["val_top1"] for r in self.epochs if r["val_top1"] is not None]
        if len(self.phases) > 1:
            frozen_paths = [f"{name}: {path}" for name, path in self.frozen_paths]
        else:
            frozen_paths = [path for _, path in self.frozen_paths]
        compiling = CompileStats(self.compile_mode)
        for stats in self.phase_stats:
            compiling.add(stats)
        return trial_row(
            self.config,
            run_id=self.run_id,
            status=self.status,
            error=self.error,
            started_at=self.started_at,
            weights=self.backbone.weights,
            weights_sha256=self.backbone.weights_sha256,
            dataset_group=data.group,
            dataset_fingerprint=data.fingerprint,
            n_classes=data.n_classes,
            frozen_param_fraction=plan.frozen_param_fraction,
            freeze_groups=f"{plan.n_frozen_groups}/{plan.n_groups}",
            trainable_params=plan.backbone_params - plan.frozen_params + head_params,
            total_params=plan.backbone_params + head_params,
            n_train=self.n_train,
            n_val=self.n_val,
            n_test=len(data.y_test),
            images_per_class=self.n_train / data.n_classes,
            data_regime=DEFAULT_THRESHOLDS.regime(self.n_train / data.n_classes),
            hp_total_steps=sum(p.steps for p in self.phases),
            metric_top1=self.metrics.get("top1"),
            metric_macro_f1=self.metrics.get("macro_f1"),
            metric_nll=self.metrics.get("nll"),
            metric_val_top1=self.metrics.get("val_top1"),
            metric_best_val_top1=max(val_scores) if val_scores else None,
            converged=self.status == "ok" and self._converged(val_scores),
            stopped_on_plateau=self.stopped_on_plateau,
            evaluations=len(self.epochs),
            kept_evaluation=self.metrics.get("kept_evaluation"),
            **self._probe_columns(),
            steps_run=self.steps_run,
            feature_cache=any(path.endswith(("features", "prefix")) for path in frozen_paths),
            frozen_prefix=", ".join(frozen_paths),
            train_seconds=self.train_seconds,
            images_per_second=self.images_seen / self.train_seconds if self.train_seconds > 0 else None,
            peak_memory_mb=peak_memory_mb(self.device),
            device=device_name(self.device),
            precision=precision.name(self.device),
            node=socket.gethostname(),
            torch_version=torch.__version__,
            timm_version=_version("timm"),
            ray_version=_version("ray"),
            **self.scores,
            eval_folded_bn=self.eval_folded_bn,
            padded_depthwise_grad=self.padded_convs,
            compiled=compiling.mode,
            compile_seconds=compiling.seconds,
            compiled_steps=compiling.compiled_steps,
            **_data_columns(data),
        )

    def _converged(self, val_scores: list[float]) -> bool:
        """A solved probe converged when its solver did (the final fit's gradient within tolerance); a trained
        one by its validation curve (``bench.training.convergence.converged``)."""
        if self.probe is not None:
            return self.probe.fit.converged
        return converged(val_scores, stopped_on_plateau=self.stopped_on_plateau)

    def _probe_columns(self) -> dict[str, Any]:
        if self.probe is None:
            return {}
        return {"probe_c": self.probe.c, "probe_c_edge": self.probe.edge, "probe_iterations": self.probe.n_iter}

    def epoch_rows(self) -> list[dict[str, Any]]:
        """The epochs.parquet rows: each evaluation row with the schema version, run id and trial id."""
        for epoch_row in self.epochs:
            epoch_row.update(schema_version=SCHEMA_VERSION, run_id=self.run_id, trial_id=self.config.trial_id)
        return self.epochs


def _data_columns(data: PreparedDataset) -> dict[str, Any]:
    """Where the dataset's shards came from (nothing for a dataset prepared in memory)."""
    shards = data.meta.get("shards")
    if not shards:
        return {}
    return {
        "dataset_shards": sum(len(entries) for entries in shards.values()),
        "dataset_shard_format": data.meta.get("shard_format", "raw"),
        "dataset_decoded_by": data.meta.get("decoded_by_counts"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
