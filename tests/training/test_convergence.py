"""Convergence, measured: the row's rule on constructed curves, early stopping on a validation plateau, and the
best evaluation's weights put back before the test evaluation (real fits and real trials)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from bench import training as core
from bench.config import TrialConfig
from bench.errors import UserError
from bench.suite import load_suite
from bench.training.convergence import (
    CONVERGENCE_TOLERANCE,
    CONVERGENCE_WINDOW,
    BestWeights,
    Plateau,
    converged,
)

BASE = TrialConfig(
    backbone="efficientnet_lite0",
    dataset="digits",
    img_size=32,
    steps=60,
    eval_every_steps=5,
    batch_size=32,
    lr=3e-2,
    freeze="linear_probe",
    similarity=False,
    probe_solver="sgd",  # these tests train the loop: the stepped probe (the solved one: test_solved_probe.py)
)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield


# ---------------------------------------------------------------------------------------------------------
# the rule, on constructed curves


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([], False),
        ([70.0, 70.0], False),  # fewer evaluations than the window
        ([70.0, 70.0, 70.0], True),  # flat: ties are no new best
        ([50.0, 61.0, 60.5, 60.2], True),  # within the tolerance, below the best
        ([81.0, 80.0, 81.0, 80.0], True),  # a spread of exactly the tolerance
        ([50.0, 60.0, 60.5, 60.2], False),  # flat, but 60.5 is a new best: still rising
        ([70.0, 70.0, 70.01], False),  # the last one is a new best
        ([50.0, 61.0, 58.0, 60.0], False),  # below the best, but spread over 3 points
        ([50.0, 55.0, 60.0, 65.0], False),  # rising
        ([90.0, 40.0, 41.0, 40.5], True),  # flat well below an early best: converged, to a worse place
    ],
)
def test_the_rule_on_constructed_curves(curve, expected):
    assert CONVERGENCE_WINDOW == 3 and CONVERGENCE_TOLERANCE == 1.0  # the documented rule (results/README.md)
    assert converged(curve) is expected


def test_a_plateau_stop_is_converged_and_bad_values_are_refused():
    assert converged([10.0], stopped_on_plateau=True)
    assert not converged([10.0, 20.0], stopped_on_plateau=False)
    with pytest.raises(ValueError, match="finite"):
        converged([10.0, math.nan, 10.0])


def test_a_plateau_is_patience_evaluations_without_a_gain_above_min_delta():
    plateau = Plateau(patience=2, min_delta=0.5)
    # 10 (first: a gain), 10.4 (+0.4: none), 10.6 (+0.6: a gain, the count restarts), 10.9, 11.0 (+0.3, +0.4)
    assert [plateau.reached(v) for v in [10.0, 10.4, 10.6, 10.9, 11.0]] == [False, False, False, False, True]
    assert plateau.best == 10.6
    assert not Plateau(patience=1).reached(None)  # no validation split: never a plateau
    for bad in [{"patience": 0}, {"patience": 2, "min_delta": -1.0}]:
        with pytest.raises(ValueError, match="patience"):
            Plateau(**bad)


# ---------------------------------------------------------------------------------------------------------
# the kept weights


def test_best_weights_keep_what_each_phase_trains_and_restore_it_across_phases():
    torch.manual_seed(0)
    body, head = nn.Linear(4, 4), nn.Linear(4, 2)
    kept = BestWeights()
    with pytest.raises(ValueError, match="nothing to restore"):
        kept.restore()
    kept.watch(head)  # a probe phase trains the head alone
    at_best = {name: t.detach().clone() for name, t in nn.Sequential(body, head).state_dict().items()}
    kept.offer(50.0, 1)
    with torch.no_grad():
        head.weight.add_(1.0)
    kept.offer(50.0, 2)  # a tie: the earlier evaluation stays
    kept.offer(None, 3)  # no validation score
    kept.watch(nn.Sequential(body, head))  # the fine-tune phase trains both; the body is as at the best
    with torch.no_grad():
        body.weight.mul_(3.0)
        head.bias.sub_(2.0)
    kept.offer(40.0, 4)
    kept.restore()
    assert kept.evaluation == 1 and kept.top1 == 50.0
    for name, tensor in nn.Sequential(body, head).state_dict().items():
        assert torch.equal(tensor, at_best[name]), name


def _blobs(n: int, seed: int) -> core.Split:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    inputs = centres[labels] + 1.5 * torch.randn(n, 4, generator=generator)
    return core.Split(inputs, labels)


def test_fit_puts_back_the_weights_of_its_best_evaluation_buffers_included():
    """A real fit of a small model with BatchNorm; each evaluation's weights are copied as it is recorded, and
    what ``BestWeights`` restores must equal the copy of the best evaluation, tensor for tensor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    config = TrialConfig(backbone="-", dataset="-", optimizer="sgd", lr=0.5, eval_every_steps=2, device="cpu")
    phase = core.Phase("train", 0.0, config.lr, 30, 8)
    snapshots: list[dict[str, torch.Tensor]] = []
    log: list[dict] = []
    best = BestWeights()
    best.watch(model)

    def copy_weights(rows: list[dict]) -> None:
        snapshots.append({name: t.detach().clone() for name, t in model.state_dict().items()})

    validation = core.Validation(_blobs(30, 1), log, every_steps=2, best=best, on_evaluation=copy_weights)
    outcome = core.fit(
        model,
        _blobs(64, 0),
        validation,
        prepare=lambda b, train: b,
        phase=phase,
        config=config,
        device=torch.device("cpu"),
    )
    curve = [row["val_top1"] for row in log]
    assert not outcome.diverged and len(curve) == 15 == len(snapshots)
    assert best.evaluation == int(np.argmax(curve)) + 1  # the first of the best
    assert best.evaluation < len(curve), curve  # else this test would not tell a restore from no restore
    best.restore()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[best.evaluation - 1][name]), name
    assert any(not torch.equal(snapshots[-1][n], snapshots[best.evaluation - 1][n]) for n in snapshots[-1])


# ---------------------------------------------------------------------------------------------------------
# real trials: digits at 32 px, efficientnet_lite0


def _trial(**changes) -> core.TrialResult:
    return core.run_trial(dataclasses.replace(BASE, **changes))


@pytest.mark.slow
def test_a_flat_validation_curve_ends_the_trial_before_its_budget():
    result = _trial(lr=1e-7, early_stop_patience=2, early_stop_min_delta=0.1)  # the head barely moves
    row, curve = result.row, [e["val_top1"] for e in result.epochs]
    assert row["status"] == "ok" and row["stopped_on_plateau"] is True and row["converged"] is True
    assert row["evaluations"] == len(curve) == 3  # the first, then two without a gain
    assert row["steps_run"] == result.epochs[-1]["step"] == 15 < row["hp_total_steps"] == 60
    assert row["kept_evaluation"] == 3 and row["metric_val_top1"] == curve[-1]
    assert (row["early_stop_patience"], row["early_stop_min_delta"], row["keep_best"]) == (2, 0.1, False)
    plain = _trial(lr=1e-7)
    assert plain.row["stopped_on_plateau"] is False and plain.row["evaluations"] == 12
    assert plain.row["steps_run"] == 60 and plain.row["early_stop_patience"] is None


@pytest.mark.slow
def test_a_plateau_ends_the_probe_phase_and_the_fine_tune_phase_still_runs():
    result = _trial(freeze="lp_ft", steps=20, eval_every_steps=2, lr=1e-7, probe_lr=1e-7, early_stop_patience=2)
    phases = [e["phase"] for e in result.epochs]
    assert phases[:3] == ["probe"] * 3 and "probe" not in phases[3:]  # the probe stopped after 3 of its 5
    assert phases.count("finetune") >= 1 and result.row["status"] == "ok"
    assert result.epochs[2]["step"] == 6  # of the probe's 10 steps


@pytest.mark.slow
def test_keep_best_tests_the_best_evaluations_weights_on_the_cached_features():
    """The same trial with and without ``keep_best`` trains the same curve; with it, the head of the best
    evaluation is put back, and its validation top-1, measured again on the restored weights, is that
    evaluation's to the last bit."""
    last = _trial()
    best = _trial(keep_best=True)
    curve = [e["val_top1"] for e in best.epochs]
    assert curve == [e["val_top1"] for e in last.epochs]
    kept = best.row["kept_evaluation"]
    assert kept == int(np.argmax(curve)) + 1 < len(curve), curve  # an earlier evaluation than the last
    assert best.row["metric_val_top1"] == curve[kept - 1] == best.row["metric_best_val_top1"]
    assert best.row["metric_val_top1"] != last.row["metric_val_top1"] == curve[-1]
    assert last.row["kept_evaluation"] == len(curve) and best.row["frozen_prefix"] == "features"
    assert best.row["metric_top1"] != last.row["metric_top1"]


def test_trial_ids_are_unchanged_by_the_defaults_and_changed_by_the_keys():
    explicit = dataclasses.replace(BASE, early_stop_patience=None, early_stop_min_delta=0.0, keep_best=False)
    assert explicit.trial_id == BASE.trial_id and explicit.cell_id == BASE.cell_id
    assert not {"early_stop_patience", "early_stop_min_delta", "keep_best"} & set(BASE.identity())
    for changes in [{"early_stop_patience": 3}, {"keep_best": True}]:
        changed = dataclasses.replace(BASE, **changes)
        assert changed.trial_id != BASE.trial_id and changed.cell_id != BASE.cell_id


def _suite_trials(tmp_path, train: dict) -> list[TrialConfig]:
    data = {
        "name": "plateaus",
        "backbones": ["efficientnet_lite0"],
        "datasets": ["digits"],
        "grid": {"freeze": ["linear_probe"], "data_fraction": [0.5]},
        "train": {"epochs": 3, **train},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_suite(path).trials()


def test_suite_keys_reach_the_trials_and_bad_values_are_one_line(tmp_path):
    (plain,) = _suite_trials(tmp_path, {})
    assert (plain.early_stop_patience, plain.early_stop_min_delta, plain.keep_best) == (None, 0.0, False)
    (set_,) = _suite_trials(tmp_path, {"early_stop": {"patience": 3, "min_delta": 1}, "keep_best": True})
    assert (set_.early_stop_patience, set_.early_stop_min_delta, set_.keep_best) == (3, 1.0, True)
    (default_delta,) = _suite_trials(tmp_path, {"early_stop": {"patience": 2}})
    assert default_delta.early_stop_min_delta == 0.0
    for bad in [{"early_stop": {"patience": 0}}, {"early_stop": {"min_delta": 1.0}}, {"keep_best": "yes"}]:
        with pytest.raises(UserError, match="train.(early_stop|keep_best)") as caught:
            _suite_trials(tmp_path, bad)
        assert len(str(caught.value).splitlines()) <= 3
