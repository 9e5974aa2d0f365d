"""The seed that draws the training subset and the seed that initialises training are separable: `data_seed`
moves the subset alone, `seed` everything else; unset, the subset follows `seed` as it always did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.config import TrialConfig
from bench.data import split_train_val, stratified_subset
from bench.results.schema import trial_row
from bench.suite import load_suite
from bench.training.inputs import select_indices
from bench.training.trial import _build, load_dataset

BASE = TrialConfig(backbone="efficientnet_lite0", dataset="digits", img_size=32, data_fraction=0.3, device="cpu")
LABELS = np.repeat(np.arange(10), 40)  # 10 classes of 40 training images


def _train_idx(**changes) -> np.ndarray:
    return select_indices(LABELS, dataclasses.replace(BASE, **changes))[0]


def test_unset_data_seed_draws_the_subset_the_seed_always_drew():
    for seed in (0, 1, 17):
        pool, _ = split_train_val(LABELS, BASE.val_fraction)
        before = pool[stratified_subset(LABELS[pool], seed=seed, data_fraction=BASE.data_fraction)]
        assert np.array_equal(_train_idx(seed=seed), before)
        assert np.array_equal(_train_idx(seed=seed, data_seed=seed), before)


def test_the_subset_follows_data_seed_and_not_seed():
    assert np.array_equal(_train_idx(seed=0, data_seed=5), _train_idx(seed=1, data_seed=5))
    assert np.array_equal(_train_idx(seed=3, data_seed=5), _train_idx(seed=5))
    assert not np.array_equal(_train_idx(seed=0, data_seed=5), _train_idx(seed=0, data_seed=6))
    assert not np.array_equal(_train_idx(seed=0, data_seed=5), _train_idx(seed=0))
    # the validation split stays canonical whatever the seeds
    val = [select_indices(LABELS, dataclasses.replace(BASE, seed=s, data_seed=d))[1] for s, d in [(0, None), (1, 9)]]
    assert np.array_equal(*val)


@pytest.mark.slow
def test_a_built_trial_draws_its_subset_by_data_seed_and_its_head_by_seed():
    torch.set_num_threads(2)
    data = load_dataset(BASE)
    built = {
        (seed, data_seed): _build(
            dataclasses.replace(BASE, seed=seed, data_seed=data_seed), data, torch.device("cpu"), 32
        )
        for seed, data_seed in [(0, 4), (1, 4), (0, 7)]
    }
    assert np.array_equal(built[0, 4].train_idx, built[1, 4].train_idx)  # same data seed: the same images
    assert not torch.equal(built[0, 4].backbone.head.weight, built[1, 4].backbone.head.weight)  # other init
    assert not np.array_equal(built[0, 4].train_idx, built[0, 7].train_idx)  # other data seed: other images
    assert torch.equal(built[0, 4].backbone.head.weight, built[0, 7].backbone.head.weight)  # the same init
    assert len(built[0, 4].train_idx) == len(built[0, 7].train_idx)  # the same size, stratified


def test_rows_carry_the_effective_data_seed_and_the_seed():
    def row(**changes) -> dict:
        return trial_row(dataclasses.replace(BASE, **changes), run_id="r", status="failed", error="x", started_at="")

    assert (row(seed=2)["seed"], row(seed=2)["data_seed"]) == (2, 2)
    assert (row(seed=2, data_seed=9)["seed"], row(seed=2, data_seed=9)["data_seed"]) == (2, 9)


def test_trial_ids_change_only_where_the_subset_does():
    assert "data_seed" not in BASE.identity()
    same = dataclasses.replace(BASE, seed=3, data_seed=3)  # the subset an unset data_seed draws
    assert same.trial_id == dataclasses.replace(BASE, seed=3).trial_id
    other = dataclasses.replace(BASE, seed=3, data_seed=4)
    assert other.trial_id != same.trial_id and other.cell_id != same.cell_id


def _suite(tmp_path: Path, grid: dict, **extra) -> list[TrialConfig]:
    data = {
        "name": "seeds",
        "backbones": ["efficientnet_lite0"],
        "datasets": ["digits"],
        "grid": {"freeze": ["linear_probe"], "data_fraction": [0.5], **grid},
        "train": {"epochs": 1},
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    suite = load_suite(path)
    trials = suite.trials()
    assert suite.trial_count() == len(trials)
    return trials


def test_grid_data_seed_crosses_the_seeds_and_keeps_the_ids_of_the_diagonal(tmp_path: Path):
    plain = _suite(tmp_path, {"seed": [0, 1]})
    crossed = _suite(tmp_path, {"seed": [0, 1], "data_seed": [0, 1]})
    assert [(t.seed, t.data_seed) for t in plain] == [(0, None), (1, None)]
    assert [(t.seed, t.subset_seed) for t in crossed] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({t.trial_id for t in crossed}) == 4
    diagonal = [t.trial_id for t in crossed if t.seed == t.subset_seed]
    assert diagonal == [t.trial_id for t in plain]  # a run without data_seed resumes into these


def test_a_two_stage_search_selects_per_data_seed_and_confirms_on_the_other_seeds(tmp_path: Path):
    path = tmp_path / "suite.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "backbones": ["efficientnet_lite0"],
                "datasets": ["digits"],
                "grid": {"freeze": ["linear_probe"], "data_fraction": [0.5], "seed": [0, 1], "data_seed": [5, 6]},
                "train": {"epochs": 1, "probe": {"solver": "sgd"}},  # a stepped probe has an lr to search
                "search": {"space": {"lr": [0.001, 0.01]}, "protocol": "two_stage"},
            }
        )
    )
    suite = load_suite(path)
    search = suite.trials()
    assert sorted((t.seed, t.data_seed, t.lr) for t in search) == [(0, d, lr) for d in (5, 6) for lr in (0.001, 0.01)]
    # data seed 5 selects lr 0.01, data seed 6 lr 0.001
    scores = {t.trial_id: (90.0 if (t.data_seed == 5) == (t.lr == 0.01) else 80.0) for t in search}
    confirm, missing = suite.confirm_trials(scores)
    assert not missing
    assert sorted((t.seed, t.data_seed, t.lr) for t in confirm) == [(1, 5, 0.01), (1, 6, 0.001)]
