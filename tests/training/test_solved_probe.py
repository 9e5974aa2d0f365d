"""The linear_probe strategy solved in a real trial (train.probe.solver lbfgs) against scikit-learn's
LogisticRegression fitted on the same frozen features, and the stepped probe kept beside it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bench.config import TrialConfig
from bench.errors import UserError
from bench.models import Normalize, build_backbone
from bench.speedups.features import compute_features
from bench.training.inputs import select_indices
from bench.training.trial import load_dataset, run_trial

GRID = (0.01, 0.1, 1.0, 10.0)
CONFIG = TrialConfig(
    backbone="efficientnet_lite0",
    dataset="digits",
    img_size=32,
    data_fraction=0.3,
    steps=8,
    batch_size=32,
    probe_refit=False,
    probe_c_grid=GRID,
    similarity=False,
)


def _features(config: TrialConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The frozen pooled features of the trial's training subset, validation split and test split, computed here
    from the dataset and the pretrained body, independently of the trial."""
    data = load_dataset(config)
    train_idx, val_idx = select_indices(data.y_train, config)
    backbone = build_backbone(config.backbone, data.n_classes, pretrained=True, head_seed=0, img_size=config.img_size)
    normalize = Normalize(backbone.mean, backbone.std)
    cpu = torch.device("cpu")

    def rows(images: object) -> np.ndarray:
        return compute_features(backbone.body, images, normalize, device=cpu, batch_size=64).double().numpy()

    return {
        "train": (rows(data.x_train.take(train_idx)), data.y_train[train_idx]),
        "val": (rows(data.x_train.take(val_idx)), data.y_train[val_idx]),
        "test": (rows(data.x_test), data.y_test),
    }


@pytest.mark.slow
def test_a_solved_probe_selects_and_scores_as_scikit_learn_does_on_the_same_features() -> None:
    row = run_trial(CONFIG).row
    assert row["status"] == "ok" and row["probe_solver"] == "lbfgs" and row["converged"]
    assert row["frozen_prefix"] == "features" and row["evaluations"] == 1 and row["probe_iterations"] > 0
    split = _features(CONFIG)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split["train"], split["val"], split["test"]
    fits = {c: LogisticRegression(C=c, tol=1e-8, max_iter=20_000).fit(x_train, y_train) for c in GRID}
    correct = {c: int((fit.predict(x_val) == y_val).sum()) for c, fit in fits.items()}
    best = min(c for c in GRID if correct[c] == max(correct.values()))  # ties: the smaller C, as the probe's rule
    assert row["probe_c"] == best
    assert row["probe_c_edge"] == ("lower" if best == GRID[0] else "upper" if best == GRID[-1] else "interior")
    assert row["metric_val_top1"] == pytest.approx(100 * correct[best] / len(y_val), abs=1e-6)
    # float32 features and solver against float64 scikit-learn: at most one test image may fall the other way.
    sklearn_top1 = 100 * float((fits[best].predict(x_test) == y_test).mean())
    assert abs(row["metric_top1"] - sklearn_top1) <= 100 / len(y_test) + 1e-9


@pytest.mark.slow
def test_the_stepped_probe_stays_and_a_solved_one_needs_fixed_features_cached_or_not() -> None:
    stepped = run_trial(dataclasses.replace(CONFIG, probe_solver="sgd")).row
    assert stepped["status"] == "ok" and stepped["probe_solver"] == "sgd" and stepped.get("probe_c") is None
    assert stepped["steps_run"] == 8 and stepped["evaluations"] >= 1
    with pytest.raises(UserError, match="fixed frozen features"):
        run_trial(dataclasses.replace(CONFIG, augment="flip"))
    cached = run_trial(CONFIG).row
    uncached = run_trial(dataclasses.replace(CONFIG, feature_cache=False)).row  # the features computed in the trial
    assert uncached["feature_cache"] is False and uncached["probe_c"] == cached["probe_c"]
    assert abs(uncached["metric_top1"] - cached["metric_top1"]) <= 100 / uncached["n_test"] + 1e-9
