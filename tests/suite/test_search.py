"""A suite's `search:` block: deterministic points per strategy, cells, counts, and what a suite may search."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bench_env

from bench.errors import UserError
from bench.suite import load_suite

SUITE = """
name: searched
backbones: [efficientnet_lite0]
datasets: [digits, photo_patches]
grid: {{freeze: [linear_probe, full, 0.5, lp_ft], data_fraction: [0.1, 1.0], seed: [0, 1]}}
train: {{img_size: 32, epochs: 2, batch_size: 32, probe: {{solver: sgd}}}}  # a stepped probe has an lr
search:
  samples: {samples}
  seed: {seed}
  space:
    lr: {{loguniform: [1.0e-4, 1.0e-2]}}
    weight_decay: [0.0, 1.0e-4]
  by_strategy:
    linear_probe: {{lr: {{loguniform: [1.0e-2, 1.0]}}}}
    lp_ft: {{lr: [3.0e-4], weight_decay: [0.0]}}
"""


def _suite(tmp_path: Path, *, samples: int = 3, seed: int = 0, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(SUITE.format(samples=samples, seed=seed))
    return load_suite(path)


GOLDEN_SUITE = """
name: golden
backbones: [efficientnet_lite0]
datasets: [digits]
grid: {freeze: [linear_probe, full], data_fraction: [0.1], seed: [0]}
train: {img_size: 32, epochs: 2, batch_size: 32, probe: {solver: sgd}}  # a stepped probe has a learning rate
search:
  samples: 2
  seed: 0
  space:
    lr: {loguniform: [1.0e-4, 1.0e-2]}
    weight_decay: [0.0, 1.0e-4]
  by_strategy:
    linear_probe: {lr: {loguniform: [1.0e-2, 1.0]}}
"""

# (freeze, lr, weight_decay, trial_id) of every trial of GOLDEN_SUITE, in order: computed once from the code and
# pinned, so that a change to how points are drawn or trials named (which would orphan every stored run's rows
# from `--resume` and from each other) fails here.
GOLDEN_TRIALS = [
    ["linear_probe", 0.0298199, 0.0, "cb9a0d78dd934e7f"],
    ["linear_probe", 0.0385915, 0.0, "8f79ab60aca4213d"],
    ["linear_probe", 0.0298199, 0.0001, "1c5e61c17c5af950"],
    ["linear_probe", 0.0385915, 0.0001, "4cfaf27d06c2fd70"],
    ["full", 0.00014508, 0.0, "110678b1ed2ec3a0"],
    ["full", 0.0023456, 0.0, "eb1d7d46102017d8"],
    ["full", 0.00014508, 0.0001, "7645a0fdc06b2f8a"],
    ["full", 0.0023456, 0.0001, "4157ca8695236250"],
]

_PRINT_TRIALS = """
import json, sys
from bench.suite import load_suite
print(json.dumps([[t.freeze, t.lr, t.weight_decay, t.trial_id] for t in load_suite(sys.argv[1]).trials()]))
"""


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_a_fresh_process_draws_the_golden_points_and_trial_ids(tmp_path: Path, hash_seed: str) -> None:
    """Points and ids depend on the suite alone: not on the process, its hash seed, or what ran before."""
    path = tmp_path / "golden.yaml"
    path.write_text(GOLDEN_SUITE)
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_TRIALS, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**bench_env(), "PYTHONHASHSEED": hash_seed},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == GOLDEN_TRIALS


def test_another_search_seed_moves_only_the_drawn_points(tmp_path: Path) -> None:
    first = [t.trial_id for t in _suite(tmp_path, name="a.yaml").trials()]
    assert len(set(first)) == len(first)
    other_seed = {t.trial_id for t in _suite(tmp_path, seed=1, name="c.yaml").trials()}
    lp_ft = {t.trial_id for t in _suite(tmp_path, name="d.yaml").trials() if t.freeze == "lp_ft"}
    assert set(first) - other_seed and lp_ft <= other_seed  # only drawn points move; lp_ft's grid stays


def test_count_is_arithmetic_and_every_cell_of_a_strategy_gets_the_same_points(tmp_path: Path) -> None:
    suite = _suite(tmp_path, samples=3)
    trials = suite.trials()
    assert suite.trial_count() == len(trials)
    cells_per_strategy = 2 * 2 * 2  # datasets x data sizes x seeds
    points = {"linear_probe": 3 * 2, "full": 3 * 2, "partial": 3 * 2, "lp_ft": 1}  # samples x weight_decay list
    for strategy, n in points.items():
        mine = [t for t in trials if t.strategy == strategy]
        assert len(mine) == cells_per_strategy * n
        per_cell: dict[str, set] = {}
        for t in mine:
            per_cell.setdefault(t.cell_id, set()).add((t.lr, t.weight_decay))
        assert len(per_cell) == cells_per_strategy
        assert len({frozenset(p) for p in per_cell.values()}) == 1  # the same points in every cell
        assert all(len(p) == n for p in per_cell.values())


def test_drawn_values_lie_in_their_strategy_s_range(tmp_path: Path) -> None:
    trials = _suite(tmp_path, samples=8).trials()
    probe = [t.lr for t in trials if t.strategy == "linear_probe"]
    full = [t.lr for t in trials if t.strategy == "full"]
    assert all(1e-2 <= lr <= 1.0 for lr in probe) and all(1e-4 <= lr <= 1e-2 for lr in full)
    logs = sorted({math.log10(lr) for lr in full})
    assert logs[-1] - logs[0] > 0.5  # spread over decades, as loguniform draws are
    lp_ft = {(t.lr, t.probe_lr, t.weight_decay) for t in trials if t.strategy == "lp_ft"}
    assert lp_ft == {(3e-4, 3e-4, 0.0)}  # the probe phase follows the searched lr, as it follows train.lr


def test_samples_of_a_cell_share_its_cell_and_differ_in_trial(tmp_path: Path) -> None:
    trials = [t for t in _suite(tmp_path).trials() if t.strategy == "full" and t.dataset == "digits"]
    by_cell: dict[str, list] = {}
    for t in trials:
        by_cell.setdefault(t.cell_id, []).append(t)
    for members in by_cell.values():
        identity = {(t.seed, t.data_fraction, t.freeze) for t in members}
        assert len(identity) == 1 and len({t.trial_id for t in members}) == len(members) == 6


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("{lr: {loguniform: [1.0e-2, 1.0e-3]}}", "low < high"),
        ("{batch_size: {uniform: [8, 64]}}", "batch_size"),
        ("{augment: {choice: [none, mixup]}}", "augment"),
        ("{epochs: [1, 2]}", "cannot search epochs"),
    ],
)
def test_a_bad_space_is_one_user_error(tmp_path: Path, space: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SUITE.format(samples=2, seed=0).split("search:")[0] + f"search: {{space: {space}}}\n")
    with pytest.raises(UserError, match=message):
        load_suite(path)


TWO_STAGE = """
name: two
backbones: [efficientnet_lite0]
datasets: [digits, photo_patches]
grid: {freeze: [linear_probe, full], data_fraction: [1.0], seed: [3, 1, 2]}
train: {img_size: 32, epochs: 2, batch_size: 32, probe: {solver: sgd}}
search:
  protocol: two_stage
  samples: 3
  space: {lr: {loguniform: [1.0e-4, 1.0e-1]}}
"""


def test_a_two_stage_search_runs_each_cell_s_selection_on_the_other_seeds(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(TWO_STAGE)
    suite = load_suite(path)
    search = suite.trials()
    assert {t.seed for t in search} == {3} and len(search) == 2 * 2 * 3  # the first seed: datasets x freeze x samples
    # Validation picks; a cell with no finished sample (photo_patches, full) has nothing to select.
    val = {
        t.trial_id: 100.0 - t.lr * 100 if t.strategy == "full" else t.lr  # full: the smallest lr; probes: the largest
        for t in search
        if (t.dataset, t.strategy) != ("photo_patches", "full")
    }
    confirm, unselected = suite.confirm_trials(val)
    assert [(t.dataset, t.strategy) for t in unselected] == [("photo_patches", "full")]
    assert len(confirm) == 3 * 2 and {t.seed for t in confirm} == {1, 2}
    for t in confirm:
        searched = [s for s in search if s.dataset == t.dataset and s.strategy == t.strategy]
        best = max(searched, key=lambda s: val[s.trial_id])
        assert t.lr == best.lr and t.trial_id == dataclasses.replace(best, seed=t.seed).trial_id
    assert suite.trial_count() == len(search) + 4 * 2  # cells x the other seeds
    assert suite.confirm_trials({}) == ([], _first_per_cell(search))  # nothing finished: nothing to confirm


def _first_per_cell(trials: list) -> list:
    first: dict = {}
    for t in trials:
        first.setdefault(t.cell_id, t)
    return list(first.values())
