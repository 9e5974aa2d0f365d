"""Selected hyperparameters at the edges of the searched space, and what lies beyond (bench.analysis.edges)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.analysis.edges import POSITIONS, classify, edge_counts, edge_table, extend, geometric
from bench.suite.search import SearchSpec

LR_GRID = [1e-4, 1e-3, 1e-2]
LR_RANGE = {"loguniform": [1e-4, 1e-1]}  # three decades: with 3 samples the edges are half a decade wide


def test_a_lists_smallest_and_largest_values_are_its_edges() -> None:
    assert [classify(v, LR_GRID) for v in LR_GRID] == ["lower edge", "interior", "upper edge"]
    assert classify(1e-4, [1e-2, 1e-4, 1e-3]) == "lower edge"  # order in the suite does not matter
    assert classify(5e-5, LR_GRID) == "lower edge"  # beyond a bound counts as that edge
    assert classify(32, {"choice": [16, 32, 64]}) == "interior"
    assert classify(64, {"choice": [16, 32, 64]}) == "upper edge"
    assert classify(0.1, [0.1]) == "only value"


@pytest.mark.parametrize("dimension", [["sgd", "adamw"], {"choice": ["sgd", "adamw"]}, [True, False], [0.1, "x"]])
def test_values_that_are_not_all_numbers_are_categorical(dimension: list | dict) -> None:
    assert classify("sgd", dimension) == "categorical"


def test_a_range_has_edges_of_half_the_average_gap_between_draws() -> None:
    edge = 1e-4 * 10**0.5  # 1/(2*3) of three decades above the lower bound
    assert classify(edge * 0.99, LR_RANGE, samples=3) == "lower edge"
    assert classify(edge * 1.01, LR_RANGE, samples=3) == "interior"
    assert classify(1e-1 / 10**0.5 * 1.01, LR_RANGE, samples=3) == "upper edge"
    assert classify(1e-1 / 10**0.5 * 0.99, LR_RANGE, samples=3) == "interior"
    # in log space: 0.005 is 5% of the linear width but 57% of the log width
    assert classify(0.005, LR_RANGE, samples=3) == "interior"
    assert classify(0.005, {"uniform": [1e-4, 1e-1]}, samples=3) == "lower edge"
    assert classify(0.1, {"uniform": [0.0, 1.0]}, samples=5) == "lower edge"
    assert classify(0.11, {"uniform": [0.0, 1.0]}, samples=5) == "interior"
    assert classify(0.9, {"uniform": [0.0, 1.0]}, samples=5) == "upper edge"
    assert classify(-0.5, {"uniform": [0.0, 1.0]}, samples=5) == "lower edge"


def test_a_range_calls_one_draw_in_samples_an_edge_by_chance() -> None:
    rng = np.random.default_rng(0)
    draws = np.exp(rng.uniform(math.log(1e-4), math.log(1e-1), 20_000))
    at_edge = np.mean([classify(v, LR_RANGE, samples=4) != "interior" for v in draws])
    assert at_edge == pytest.approx(1 / 4, abs=0.015)  # sd of the share is 0.003


def test_classify_refuses_what_it_cannot_place() -> None:
    with pytest.raises(ValueError, match="samples"):
        classify(1e-3, LR_RANGE)
    with pytest.raises(ValueError, match="expected a number"):
        classify("fast", LR_GRID)
    with pytest.raises(ValueError, match="expected a list of values"):
        classify(1.0, {"normal": [0, 1]})
    with pytest.raises(ValueError, match="non-empty list"):
        classify(1.0, [])
    with pytest.raises(ValueError, match="loguniform"):
        classify(1.0, {"loguniform": [0.0, 1.0]}, samples=2)


def test_the_suites_own_dimensions_and_points_are_classified() -> None:
    spec = SearchSpec(
        samples=4,
        space={"lr": {"loguniform": [1e-4, 1e-1]}, "optimizer": ["sgd", "adamw"], "batch_size": [16, 32, 64]},
    )
    space = spec.space_for("full")
    seen = {name: {classify(p[name], space[name], spec.samples) for p in spec.points("full")} for name in space}
    assert seen["optimizer"] == {"categorical"}
    assert seen["batch_size"] == {"lower edge", "interior", "upper edge"}
    assert seen["lr"] <= {"lower edge", "interior", "upper edge"}


def test_grid_spacing_is_recognised() -> None:
    assert geometric([16, 32, 64]) and geometric([1e-4, 3e-4, 1e-3, 3e-3]) and geometric([1e-3, 1e-2])
    assert not geometric([0.9, 0.95, 0.99]) and not geometric([0.0, 0.1, 0.2]) and not geometric([0.5, 0.9])
    assert not geometric([1.0])


def test_extend_continues_a_grid_beyond_its_edge() -> None:
    assert extend(LR_GRID, 1e-2, steps=2) == pytest.approx([0.1, 1.0])
    assert extend(LR_GRID, 1e-4, steps=2) == pytest.approx([1e-5, 1e-6])
    assert extend([1e-4, 3e-4, 1e-3], 1e-4) == pytest.approx([1e-4 / 3], rel=1e-5)  # the outermost gap, as a ratio
    assert extend([0.0, 0.05, 0.1], 0.1, steps=2) == pytest.approx([0.15, 0.2])
    batch = extend([16, 32, 64], 64, steps=2)
    assert batch == [128, 256] and all(isinstance(v, int) for v in batch)
    assert extend([16, 32, 64], 16, steps=3) == [8, 4, 2]


def test_extend_stays_inside_limits() -> None:
    assert extend([0.0, 0.05, 0.1], 0.0) == []  # non-negative values are not extended below 0
    assert extend([0.0, 0.05, 0.1], 0.0, limits=(-1.0, 1.0)) == pytest.approx([-0.05])
    assert extend([0.9, 0.95, 0.99], 0.99, limits=(0.0, 1.0)) == []
    assert extend([1, 2, 4], 1, steps=2) == []  # a geometric grid of integers stays above 0


def test_extend_continues_a_range_by_the_average_gap_between_draws() -> None:
    lower = extend({"loguniform": [1e-4, 1e-2]}, 1.1e-4, steps=2, samples=4)  # half a decade per step
    assert lower == pytest.approx([1e-4 / 10**0.5, 1e-5], rel=1e-5)
    assert extend({"uniform": [0.5, 1.0]}, 0.99, steps=2, samples=5) == pytest.approx([1.1, 1.2])
    assert extend({"uniform": [0.5, 1.0]}, 0.99, samples=5, limits=(0.0, 1.0)) == []


def test_extend_has_nothing_beyond_an_interior_or_categorical_value() -> None:
    assert extend(LR_GRID, 1e-3) == []
    assert extend(["sgd", "adamw"], "sgd") == []
    assert extend([0.1], 0.1) == []
    with pytest.raises(ValueError, match="steps"):
        extend(LR_GRID, 1e-2, steps=0)


def selected_rows() -> pd.DataFrame:
    """Selected settings of two cells, two seeds each, for a searched strategy and one run at fixed settings."""
    rows = []
    for dataset, lr, optimizer in (("flowers", 1e-2, "sgd"), ("pets", 1e-3, "adamw")):
        for seed in (0, 1):
            rows.append(("full", dataset, lr, optimizer, seed))
            rows.append(("linear_probe", dataset, 0.1, "sgd", seed))
    frame = pd.DataFrame(rows, columns=["strategy", "dataset", "hp_lr", "hp_optimizer", "seed"])
    return frame.assign(data="10%", entry="resnet18 / " + frame["strategy"])


SPACES = {"full": {"lr": LR_GRID, "optimizer": ["sgd", "adamw"]}}


def test_edge_table_classifies_each_cells_selected_value() -> None:
    table = edge_table(selected_rows(), SPACES)
    assert list(table.columns) == ["dataset", "data", "entry", "strategy", "dimension", "value", "position"]
    assert set(table["strategy"]) == {"full"}  # linear_probe has no searched space
    positions = table.set_index(["dataset", "dimension"])["position"].to_dict()
    assert positions == {
        ("flowers", "lr"): "upper edge",
        ("flowers", "optimizer"): "categorical",
        ("pets", "lr"): "interior",
        ("pets", "optimizer"): "categorical",
    }


def test_edge_table_refuses_ambiguous_or_missing_values() -> None:
    rows = selected_rows()
    rows.loc[0, "hp_lr"] = 1e-4  # two settings in one cell: not the output of a selection
    with pytest.raises(ValueError, match="expected one selected value of hp_lr, got 2"):
        edge_table(rows, SPACES)
    with pytest.raises(ValueError, match="'hp_optimizer'"):
        edge_table(selected_rows().drop(columns="hp_optimizer"), SPACES)
    with pytest.raises(ValueError, match="'strategy'"):
        edge_table(selected_rows(), SPACES, keys=("dataset",))
    with pytest.raises(ValueError, match="samples"):
        edge_table(selected_rows(), {"full": {"lr": LR_RANGE}})


def test_edge_counts_per_strategy() -> None:
    table = edge_table(selected_rows(), {**SPACES, "linear_probe": {"lr": [0.1, 1.0]}})
    counts = edge_counts(table).set_index("strategy")
    assert list(counts.columns) == [*POSITIONS, "total"]
    assert counts.loc["full"].to_dict() == {
        "interior": 1, "lower edge": 0, "upper edge": 1, "only value": 0, "categorical": 2, "total": 4,
    }  # fmt: skip
    assert counts.loc["linear_probe", "lower edge"] == 2 and counts.loc["linear_probe", "total"] == 2
    by_dimension = edge_counts(table, by=("strategy", "dimension"))
    assert len(by_dimension) == 3 and by_dimension["total"].sum() == len(table)
    assert edge_counts(table.iloc[:0]).empty
