"""A search that extends itself (``search.extend``): which points each round adds, given the scores of the rounds
before it, and that they are the same trials in a fresh process (what ``bench run --resume`` relies on).

The scores are constructed over a suite's search trials (no training), so each cell's selection is known; the
expected points are worked out by hand from the grids (a step of the grid's spacing past the edge)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import bench_env

from bench.config import TrialConfig
from bench.errors import UserError
from bench.suite import Suite, load_suite

SUITE = """
name: extending
backbones: [efficientnet_lite0]
datasets: [digits, photo_patches]
grid: {{freeze: [{freeze}], data_fraction: [0.1, 1.0], seed: [0, 1]}}
train: {{img_size: 32, epochs: 2, batch_size: 32, probe: {{solver: sgd}}}}
search:
  protocol: two_stage
  extend: {extend}
  space: {space}
{limits}"""

LOG_GRID = "{lr: [1.0e-3, 3.0e-3, 1.0e-2]}"


def _suite(tmp_path: Path, *, space: str = LOG_GRID, extend: int = 2, limits: str = "", freeze: str = "full") -> Suite:
    path = tmp_path / "extending.yaml"
    path.write_text(
        SUITE.format(space=space, extend=extend, limits=f"  limits: {limits}\n" if limits else "", freeze=freeze)
    )
    return load_suite(path)


Scorer = Callable[[TrialConfig], float | None]


def _scores(trials: list[TrialConfig], score: Scorer) -> dict[str, float]:
    """trial_id -> validation top-1 of each trial ``score`` gives one (None: the trial did not finish)."""
    return {t.trial_id: s for t in trials if (s := score(t)) is not None}


def _cell(t: TrialConfig) -> tuple[str, float]:
    return t.dataset, t.data_fraction


def _best_at(best: dict[tuple[str, float], float | None], name: str = "lr") -> Scorer:
    """Per cell (dataset, data fraction): the value of ``name`` that scores best (closest wins), None: no score."""

    def score(t: TrialConfig) -> float | None:
        target = best[_cell(t)]
        return None if target is None else 100.0 - abs(getattr(t, name) - target) * 1e3

    return score


def test_each_cell_extends_past_its_own_edge_and_interior_cells_get_none(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    search = suite.trials()
    best = {("digits", 0.1): 1e-2, ("digits", 1.0): 3e-3, ("photo_patches", 0.1): 1e-3, ("photo_patches", 1.0): None}
    rounds = suite.search_rounds(_scores(search, _best_at(best)))
    assert rounds[0] == search
    # A log grid continues by its ratio past the edge, rounded as the search's draws are (6 significant digits);
    # the interior cell and the cell without a finished sample get nothing.
    assert sorted((*_cell(t), t.lr, t.seed) for t in rounds[1]) == [
        ("digits", 0.1, 0.0333333, 0),
        ("photo_patches", 0.1, 0.000333333, 0),
    ]
    for t in rounds[1]:  # the cell's own trial: same cell, new id
        assert t.cell_id in {s.cell_id for s in search} and t.trial_id not in {s.trial_id for s in search}
    # Scores only for the first round: the second extends nowhere (a new point without a score is still tried,
    # so the old selection is now interior).
    assert len(rounds) == 2


def test_a_second_round_follows_a_better_extension_and_extend_caps_the_rounds(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    best = {("digits", 0.1): 1.0, ("digits", 1.0): 3e-3, ("photo_patches", 0.1): 3e-3, ("photo_patches", 1.0): 3e-3}
    score = _best_at(best)  # digits 0.1: the larger the lr, the better
    val = _scores(suite.trials(), score)
    first = suite.search_rounds(val)[1]
    assert [t.lr for t in first] == [0.0333333]
    val |= _scores(first, score)
    rounds = suite.search_rounds(val)
    assert [t.lr for t in rounds[2]] == [0.111111]  # 0.0333333 x (0.0333333 / 0.01)
    assert rounds[1] == first  # the rounds before are recomputed the same from the same rows
    val |= _scores(rounds[2], score)
    assert len(suite.search_rounds(val)) == 3  # extend: 2 rounds, even with the selection still on the edge
    confirm, _ = suite.confirm_trials(val)  # the other seed runs the final selection
    assert {(*_cell(t), t.lr, t.seed) for t in confirm if _cell(t) == ("digits", 0.1)} == {("digits", 0.1, 0.111111, 1)}
    assert {t.lr for t in confirm if _cell(t) != ("digits", 0.1)} == {3e-3}


def test_a_linear_grid_steps_by_its_spacing_and_stays_at_or_above_zero(tmp_path: Path) -> None:
    suite = _suite(tmp_path, space="{lr: [1.0e-3], weight_decay: [1.0e-4, 2.0e-4, 3.0e-4]}")
    best = {("digits", 0.1): 1.0, ("digits", 1.0): 0.0, ("photo_patches", 0.1): 2e-4, ("photo_patches", 1.0): None}
    score = _best_at(best, "weight_decay")
    val = _scores(suite.trials(), score)
    first = suite.search_rounds(val)[1]
    assert sorted((*_cell(t), t.weight_decay) for t in first) == [("digits", 0.1, 4e-4), ("digits", 1.0, 0.0)]
    assert {t.lr for t in first} == {1e-3}  # the other dimensions stay at the selected point
    val |= _scores(first, score)
    second = suite.search_rounds(val)[2]  # below 0 is no weight decay: digits 1.0 stops at 0.0
    assert [(*_cell(t), t.weight_decay) for t in second] == [("digits", 0.1, 5e-4)]


def test_a_limit_stops_the_extension(tmp_path: Path) -> None:
    suite = _suite(tmp_path, limits="{lr: [1.0e-3, 2.0e-2]}")
    best = {("digits", 0.1): 1e-2, ("digits", 1.0): 1e-3, ("photo_patches", 0.1): 1e-3, ("photo_patches", 1.0): None}
    rounds = suite.search_rounds(_scores(suite.trials(), _best_at(best)))
    assert rounds[1:] == []  # 3.33e-2 is past the upper limit and 3.33e-4 past the lower one


def test_a_value_train_refuses_is_a_limit(tmp_path: Path) -> None:
    """train: takes momentum below 1: a selection at 0.9, the upper edge of 0.5, 0.7, 0.9, gets no point (1.1)."""
    suite = _suite(tmp_path, space="{lr: [1.0e-3], momentum: [0.5, 0.7, 0.9]}")
    best = {cell: 0.9 for cell in [("digits", 0.1), ("digits", 1.0), ("photo_patches", 0.1), ("photo_patches", 1.0)]}
    assert suite.search_rounds(_scores(suite.trials(), _best_at(best, "momentum")))[1:] == []


def test_probe_lr_follows_the_extended_lr(tmp_path: Path) -> None:
    suite = _suite(tmp_path, freeze="lp_ft", extend=1)
    best = {("digits", 0.1): 1e-2, ("digits", 1.0): None, ("photo_patches", 0.1): None, ("photo_patches", 1.0): None}
    (point,) = suite.search_rounds(_scores(suite.trials(), _best_at(best)))[1]
    assert (point.lr, point.probe_lr) == (0.0333333, 0.0333333)


def test_the_plan_states_the_most_extensions(tmp_path: Path) -> None:
    suite = _suite(tmp_path, space="{lr: [1.0e-3, 1.0e-2], weight_decay: [0.0, 1.0e-4], warmup_fraction: [0.1]}")
    assert suite.extension_bound() == 2 * 2 * 2 * 2  # datasets x data sizes x grids of 2+ numbers x rounds
    assert suite.trial_count() == 4 * 4 + 4  # the search and the other seed, without extensions
    every_cell_on_edges = {t.trial_id: 100.0 + t.lr + t.weight_decay for t in suite.trials()}
    rounds = suite.search_rounds(every_cell_on_edges)
    assert len(rounds[1]) == 4 * 2  # the bound, reached by a round where every grid of every cell is on an edge


def test_an_unextended_suite_saves_as_before(tmp_path: Path) -> None:
    """``extend: 0`` and ``limits: {}`` stay out of the saved suite, so runs started before these keys resume."""
    path = tmp_path / "plain.yaml"
    path.write_text(SUITE.split("  extend:")[0].format(freeze="full") + f"  space: {LOG_GRID}\n")
    suite = load_suite(path)
    assert "extend" not in suite.resolved["search"] and "limits" not in suite.resolved["search"]
    assert suite.search_rounds({t.trial_id: 1.0 for t in suite.trials()}) == [suite.trials()]
    assert _suite(tmp_path).resolved["search"]["extend"] == 2


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ("{extend: 1, space: {lr: [1.0e-3, 1.0e-2]}}", "search.extend: extends a two-stage search only"),
        ("{protocol: two_stage, extend: 1, space: {lr: {choice: [1.0e-3, 1.0e-2]}}}", "search.extend: extends grids"),
        ("{protocol: two_stage, extend: 1, space: {lr: [1.0e-3]}}", "search.extend: extends grids"),
        ("{protocol: two_stage, limits: {lr: [0, 1]}, space: {lr: [1.0e-3, 1.0e-2]}}", "search.limits: bounds"),
        ("{protocol: two_stage, extend: 1, limits: {lr: [2.0e-3, 1]}, space: {lr: [1.0e-3, 1.0e-2]}}", "without 0.001"),
        ("{protocol: two_stage, extend: 1, limits: {momentum: [0, 1]}, space: {lr: [1.0e-3, 1.0e-2]}}", "momentum"),
    ],
)
def test_an_extension_that_cannot_work_is_refused_in_one_line(tmp_path: Path, search: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SUITE.split("search:")[0].format(freeze="full") + f"search: {search}\n")
    with pytest.raises(UserError, match=message) as error:
        load_suite(path)
    assert "\n" not in str(error.value)


_PRINT_ROUNDS = """
import json, sys
from bench.suite import load_suite
suite = load_suite(sys.argv[1])
val = {t.trial_id: 100.0 + t.lr for t in suite.trials()}
first = suite.search_rounds(val)[1]
val |= {t.trial_id: 200.0 + t.lr for t in first}
print(json.dumps([[t.trial_id for t in r] for r in suite.search_rounds(val)]))
"""


@pytest.mark.parametrize("hash_seed", ["0", "777"])
def test_extension_trial_ids_are_the_same_in_a_fresh_process(tmp_path: Path, hash_seed: str) -> None:
    suite = _suite(tmp_path)
    val = {t.trial_id: 100.0 + t.lr for t in suite.trials()}
    first = suite.search_rounds(val)[1]
    val |= {t.trial_id: 200.0 + t.lr for t in first}
    here = [[t.trial_id for t in r] for r in suite.search_rounds(val)]
    assert [len(r) for r in here] == [12, 4, 4]  # every cell climbs lr twice
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_ROUNDS, str(suite.path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**bench_env(), "PYTHONHASHSEED": hash_seed},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == here
