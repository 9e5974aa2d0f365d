"""Early stopping within a cell, without Ray running: samples (Tune's own ``Trial``, built as Ray Tune's scheduler
tests build theirs) report validation top-1 curves evaluation by evaluation, as the worker reports them, to the
scheduler a search runs (``PerCellScheduler``), and each stop must be the one the rule gives by hand within the
sample's own cell.

The cells differ only by seed or only by dataset, never by strategy: a scheduler that pooled every sample of a
strategy would stop the weak samples of the seed-1 cell and of the harder dataset because the digits samples of
seed 0 score higher.
"""

from __future__ import annotations

import dataclasses

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from bench.config import TrialConfig
from bench.runner.schedulers import PerCellScheduler, scheduler_factory
from bench.runner.worker import evaluation_report

CELL_A = TrialConfig(backbone="efficientnet_lite0", dataset="digits", freeze="linear_probe", seed=0)
CELL_B = dataclasses.replace(CELL_A, seed=1)  # differs from A only by seed
CELL_C = dataclasses.replace(CELL_A, dataset="photo_patches")  # differs from A only by dataset

WEAK = [55.0, 58.0, 59.0, 60.0]  # a curve that is weak among A's samples


class _Controller:
    """Tune's controller as the median stopping rule reads it: the live trials, none of them waiting to start
    (so a trial without enough samples to compare with continues)."""

    def get_live_trials(self) -> list[Trial]:
        return []


def _sample(name: str, cell: TrialConfig, lr: float) -> Trial:
    config = dataclasses.replace(cell, lr=lr)
    return Trial("__fake", config={"trial": config.to_dict()}, trial_id=name, stub=True)


def _play(scheduler: TrialScheduler, curves: dict[str, tuple[TrialConfig, list[float]]]) -> dict[str, int | None]:
    """Each sample (name: its cell and its validation top-1 after each evaluation) reports one evaluation at a
    time, in the order given, as samples running side by side do; a stopped sample reports no more, and is then
    completed with its last result, as Tune does. Returns the evaluation at which each sample was stopped (None:
    it ran to its end), so that every decision is checked: CONTINUE before that evaluation, STOP at it."""
    controller = _Controller()
    trials = {name: _sample(name, cell, lr=1e-3 * (i + 1)) for i, (name, (cell, _)) in enumerate(curves.items())}
    for trial in trials.values():
        scheduler.on_trial_add(controller, trial)
    stopped: dict[str, int] = {}
    epochs: dict[str, list[dict]] = {name: [] for name in curves}
    for evaluation in range(1, max(len(curve) for _, curve in curves.values()) + 1):
        for name, (_, curve) in curves.items():
            if name in stopped or evaluation > len(curve):
                continue
            epochs[name].append({"phase": "train", "step": 10 * evaluation, "val_top1": curve[evaluation - 1]})
            result = evaluation_report(epochs[name], started_at="", final=False)  # as the worker reports it
            decision = scheduler.on_trial_result(controller, trials[name], result)
            assert decision in (TrialScheduler.CONTINUE, TrialScheduler.STOP), (name, evaluation, decision)
            if decision == TrialScheduler.STOP:
                stopped[name] = evaluation
                scheduler.on_trial_complete(controller, trials[name], result)
    return {name: stopped.get(name) for name in curves}


def _asha(grace: int, reduction_factor: float) -> PerCellScheduler:
    return PerCellScheduler(scheduler_factory("asha", grace_evaluations=grace, reduction_factor=reduction_factor))


def _median(grace: int) -> PerCellScheduler:
    return PerCellScheduler(scheduler_factory("median", grace_evaluations=grace, reduction_factor=2))


def test_asha_stops_a_sample_only_against_its_own_cell() -> None:
    """Grace 1, reduction factor 2: rungs at evaluations 1, 2, 4 (1 * 2**k); a sample reaching a rung is stopped
    when below the rung's cutoff, the (1 - 1/2) quantile (the median, interpolated) of the values its cell
    recorded there before it; stopped samples' values stay recorded. Evaluation 3 is no rung: nothing stops."""
    curves = {
        "a1": (CELL_A, [58.0, 66.0, 74.0, 80.0]),
        "a2": (CELL_A, [60.0, 70.0, 80.0, 85.0]),
        "a3": (CELL_A, WEAK),
        "a4": (CELL_A, [62.0, 68.0, 10.0, 72.0]),
        "b1": (CELL_B, [50.0, 52.0, 54.0, 56.0]),
        "b2": (CELL_B, WEAK),
        "c1": (CELL_C, [40.0, 50.0, 56.0, 58.0]),
        "c2": (CELL_C, WEAK),
        "c3": (CELL_C, [48.0, 49.0, 50.0, 51.0]),
    }
    expected = {
        # rung 1, A: a1 58 (none before), a2 60 >= 58; a3 55 < median(58, 60) = 59: stop;
        # a4 62 >= median(58, 60, 55) = 58. Rung 2: a1 66, a2 70 >= 66, a4 68 >= median(66, 70) = 68.
        # Evaluation 3: no rung, a4's 10 is never compared. Rung 4: a1 80, a2 85, a4 72 < median(80, 85) = 82.5.
        "a1": None,
        "a2": None,
        "a3": 1,
        "a4": 4,
        # B (seed 1): b1 first at every rung; b2 (a3's curve) >= b1 at every rung: 55 >= 50, 58 >= 52, 60 >= 56.
        "b1": None,
        "b2": None,
        # C (another dataset): rung 1: c1 40, c2 55, c3 48 >= median(40, 55) = 47.5; rung 2: c1 50, c2 58,
        # c3 49 < median(50, 58) = 54: stop. c2 (a3's curve) is C's best sample.
        "c1": None,
        "c2": None,
        "c3": 2,
    }
    assert _play(_asha(grace=1, reduction_factor=2), curves) == expected


def test_asha_rungs_follow_the_grace_period_and_the_reduction_factor() -> None:
    """Grace 2, reduction factor 3: rungs at evaluations 2 and 6 (2 * 3**k); the cutoff is the 2/3 quantile."""
    curves = {
        "a1": (CELL_A, [10.0, 72.0, 74.0, 76.0, 78.0, 80.0]),
        "a2": (CELL_A, [10.0, 75.0, 77.0, 79.0, 81.0, 90.0]),
        "a3": (CELL_A, [0.0, 73.5, 73.5, 73.5, 73.5, 73.5]),
        "a4": (CELL_A, [0.0, 74.2, 1.0, 1.0, 1.0, 83.0]),
        "a5": (CELL_A, [0.0, 73.9, 99.0, 99.0, 99.0, 99.0]),
    }
    expected = {
        # evaluation 1 is before the grace period: a3, a4, a5 far below the others continue.
        # Rung 2: a1 72, a2 75; a3 73.5 < 72 + 2/3 * 3 = 74: stop (not below the median, 73.5, but below the 2/3
        # quantile); a4 74.2 >= the 2/3 quantile of (72, 73.5, 75) = 73.5 + 1/3 * 1.5 = 74; a5 73.9 < the 2/3
        # quantile of (72, 73.5, 74.2, 75) = 74.2: stop. Evaluations 3 to 5 are no rung: a4's 1.0 is never compared.
        # Rung 6: a1 80, a2 90; a4 83 < 80 + 2/3 * 10 = 86.7: stop.
        "a1": None,
        "a2": None,
        "a3": 2,
        "a4": 6,
        "a5": 2,
    }
    assert _play(_asha(grace=2, reduction_factor=3), curves) == expected


MEDIAN_CURVES = {
    "a1": (CELL_A, [60.0, 70.0, 80.0]),
    "a2": (CELL_A, [62.0, 72.0, 82.0]),
    "a3": (CELL_A, WEAK[:3]),
    "b1": (CELL_B, [40.0, 45.0, 50.0]),
    "b2": (CELL_B, [45.0, 48.0, 52.0]),
    "b3": (CELL_B, WEAK[:3]),
    "c1": (CELL_C, [20.0, 30.0, 40.0]),
    "c2": (CELL_C, [24.0, 34.0, 50.0]),
    "c3": (CELL_C, WEAK[:3]),
    "c4": (CELL_C, [35.0, 10.0, 12.0]),
}


@pytest.mark.parametrize(
    ("grace", "expected"),
    [
        # Grace 1. A: at 1, a3's best 55 < median(60, 62) = 61: stop. B: at 1, b3's best 55 >= median(40, 45);
        # at 2, 58 >= median(42.5, 46.5); at 3, 59 >= median(45, 48.3). C: c3 (a3's curve) is C's best; c4 at 1:
        # best 35 >= median(20, 24, 55) = 24; at 2: best 35 >= median(25, 29, 56.5) = 29, though its current 10
        # is below; at 3: best 35 < median(30, 36, 57.3) = 36: stop.
        (1, {"a3": 1, "c4": 3}),
        # Grace 2: nothing is compared at evaluation 1, and the running means start at evaluation 2.
        # A: at 2, a3's best max(55, 58) = 58 < median(70, 72) = 71: stop. B: at 2, b3's 58 >= median(45, 48);
        # at 3, 59 >= median(47.5, 50). C: c4 at 2: best 35 >= median(30, 34, 58) = 34; at 3: 35 < median(35,
        # 42, 58.5) = 42: stop.
        (2, {"a3": 2, "c4": 3}),
    ],
)
def test_the_median_rule_stops_a_sample_only_against_its_own_cell(grace: int, expected: dict[str, int]) -> None:
    """A sample at evaluation t >= grace is stopped when its best value so far is below the median of the
    running means (over evaluations grace..t) of the other samples of its cell that have reached t; with fewer
    than 2 such samples it continues. The samples of a cell report in the order given."""
    stopped = _play(_median(grace), MEDIAN_CURVES)
    assert stopped == {name: expected.get(name) for name in MEDIAN_CURVES}


def test_an_unknown_scheduler_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'hyperband'"):
        scheduler_factory("hyperband", grace_evaluations=1, reduction_factor=2)
