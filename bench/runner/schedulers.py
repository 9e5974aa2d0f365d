"""Early stopping within a cell: one Ray Tune scheduler per cell, so a sample is only compared with its own cell.

A hyperparameter search runs several samples of every cell (backbone, weights, strategy, dataset, data size,
seed). ASHA or the median stopping rule, given every trial of a suite at once, would stop a sample on a hard
dataset because samples on an easy one score higher; ``PerCellScheduler`` keeps one instance per cell and routes
each trial's results to its own. Trials report ``val_top1`` after each evaluation, counted by ``evaluation``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from bench.config import TrialConfig

METRIC = "val_top1"
TIME_ATTR = "evaluation"
MAX_EVALUATIONS = 10_000  # ASHA's max_t: rungs past a trial's last evaluation are never reached


def scheduler_factory(kind: str, *, grace_evaluations: int, reduction_factor: float) -> Callable[[], TrialScheduler]:
    """A maker of one cell's scheduler: ``asha`` (asynchronous successive halving) or ``median``."""
    if kind == "asha":
        return lambda: AsyncHyperBandScheduler(
            time_attr=TIME_ATTR,
            metric=METRIC,
            mode="max",
            grace_period=grace_evaluations,
            reduction_factor=reduction_factor,
            max_t=MAX_EVALUATIONS,
        )
    if kind == "median":
        return lambda: MedianStoppingRule(
            time_attr=TIME_ATTR, metric=METRIC, mode="max", grace_period=grace_evaluations, min_samples_required=2
        )
    raise ValueError(f"unknown scheduler {kind!r}")


def cell_of(trial: Trial) -> str:
    """The cell (``TrialConfig.cell_id``) of a Tune trial whose config is ``{"trial": TrialConfig.to_dict()}``."""
    return TrialConfig.from_dict(trial.config["trial"]).cell_id


class PerCellScheduler(FIFOScheduler):
    """Trials start in Tune's order (FIFO); each trial's results go to the scheduler of its cell."""

    def __init__(self, make: Callable[[], TrialScheduler]) -> None:
        super().__init__()
        self._make = make
        self._cells: dict[str, TrialScheduler] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each cell's scheduler has its metric and mode

    def _of(self, trial: Trial) -> TrialScheduler:
        cell = cell_of(trial)
        if cell not in self._cells:
            self._cells[cell] = self._make()
        return self._cells[cell]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"PerCellScheduler: {len(self._cells)} cell(s)"
