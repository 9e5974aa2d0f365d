"""Where each cell's selected hyperparameter lies in the searched space: interior or at an edge, and what lies beyond.

A dimension is given as a suite's ``search:`` block writes it (``bench.suite.search``): a list of values (a grid),
``{choice: [...]}``, or a range ``{uniform: [low, high]}`` / ``{loguniform: [low, high]}``. A selected value at an
edge says the best setting may lie outside what was searched.

Rule for lists and choices of numbers: the smallest value is the "lower edge", the largest the "upper edge", any
other "interior"; a single value is the "only value"; values that are not all numbers are "categorical". Rule for
ranges: with ``samples`` draws, the draws lie on average width / samples apart, so a value within half that,
width / (2 samples), of a bound (its relative position x = (value - low) / (high - low), in log space for
loguniform, has x <= 1 / (2 samples)) is as close to the bound as the search could resolve: "lower edge" (or, with
x >= 1 - 1 / (2 samples), "upper edge"); other values are "interior". A value beyond a bound counts as that edge.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.suite.search import RANGE_KINDS, SIGNIFICANT_DIGITS

Position = Literal["interior", "lower edge", "upper edge", "only value", "categorical"]
POSITIONS: tuple[Position, ...] = ("interior", "lower edge", "upper edge", "only value", "categorical")
Dimension = Sequence[Any] | Mapping[str, Sequence[Any]]
EDGE_KEYS = ("dataset", "data", "entry", "strategy")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (bools, strings, NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _parts(dimension: Dimension) -> tuple[str, list[Any]]:
    """("list", values) for a list or a choice, (kind, [low, high]) for a range; ValueError otherwise."""
    if isinstance(dimension, Mapping):
        if len(dimension) != 1 or next(iter(dimension)) not in RANGE_KINDS:
            raise ValueError(f"expected a list of values or one of {', '.join(RANGE_KINDS)}, got {dimension!r}")
        ((kind, values),) = dimension.items()
        if kind == "choice":
            return "list", list(values)
        low, high = (_number(v) for v in values)
        if low is None or high is None or not low < high or (kind == "loguniform" and low <= 0):
            raise ValueError(f"{kind}: expected [low, high] with {'0 < ' if kind == 'loguniform' else ''}low < high")
        return kind, [low, high]
    if isinstance(dimension, (str, bytes)) or not isinstance(dimension, Sequence) or not dimension:
        raise ValueError(f"expected a non-empty list of values or a range, got {dimension!r}")
    return "list", list(dimension)


def edge_share(samples: int | None) -> float:
    """The share of a range's width, at each end, that counts as its edge: 1 / (2 samples).
    Raises ValueError when samples is missing or below 1."""
    if samples is None or samples < 1:
        raise ValueError(f"samples: a range needs the number of samples drawn from it (at least 1), got {samples}")
    return 1 / (2 * samples)


def classify(value: Any, dimension: Dimension, samples: int | None = None) -> Position:
    """The position of a selected `value` in `dimension` (see the module's rules); `samples`: the suite's
    ``search.samples``, needed for ranges only. Raises ValueError for a malformed dimension, a range without
    `samples`, or a value that is not a number in a dimension of numbers."""
    kind, values = _parts(dimension)
    if kind == "list":
        numeric = [_number(v) for v in values]
        if any(v is None for v in numeric):
            return "categorical"
        if len(set(numeric)) == 1:
            return "only value"
        low, high = min(numeric), max(numeric)
        x = _required_number(value)
        return "lower edge" if x <= low else "upper edge" if x >= high else "interior"
    share = edge_share(samples)
    position = _relative(_required_number(value), kind, values)
    return "lower edge" if position <= share else "upper edge" if position >= 1 - share else "interior"


def _required_number(value: Any) -> float:
    number = _number(value)
    if number is None:
        raise ValueError(f"expected a number in a dimension of numbers, got {value!r}")
    return number


def _relative(value: float, kind: str, bounds: list[float]) -> float:
    """(value - low) / (high - low), on logarithms for loguniform (a value <= 0 there is below the range)."""
    low, high = bounds
    if kind == "loguniform":
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low)) if value > 0 else -math.inf
    return (value - low) / (high - low)


def geometric(values: Sequence[float]) -> bool:
    """Whether a grid of numbers is spaced in log space: every value is positive and the gaps between the sorted
    values vary less (std / mean) as ratios than as differences; for two values, they are 10 or more apart."""
    grid = np.unique(np.asarray(values, dtype=float))
    if len(grid) < 2 or grid[0] <= 0:
        return False
    if len(grid) == 2:
        return bool(grid[1] / grid[0] >= 10)
    linear, log = np.diff(grid), np.diff(np.log(grid))
    return bool(log.std() / log.mean() < linear.std() / linear.mean())


def extend(
    dimension: Dimension,
    value: Any,
    steps: int = 1,
    samples: int | None = None,
    limits: tuple[float, float] | None = None,
) -> list[int | float]:
    """The next `steps` values beyond the edge `value` lies at, nearest first; [] when it lies at no edge.

    Lists and choices of numbers continue with the gap between their two outermost values at that edge, as a
    ratio when the grid is `geometric`, else as a difference; a grid of integers continues in integers. Ranges
    continue past their bound in steps of width / `samples` (the average gap between draws), in log space for
    loguniform. Values outside `limits` (inclusive) are left out; by default a dimension of non-negative values
    is not extended below 0, and a geometric one stays above 0. Values are rounded to the significant digits of
    the search's draws. Raises ValueError as ``classify`` does, or when steps < 1.
    """
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps}")
    position = classify(value, dimension, samples)
    if position not in ("lower edge", "upper edge"):
        return []
    kind, values = _parts(dimension)
    numbers_ = sorted({_required_number(v) for v in values})
    sign = -1 if position == "lower edge" else 1
    edge = numbers_[0] if sign < 0 else numbers_[-1]
    k = np.arange(1, steps + 1)
    if kind == "list":
        inner = numbers_[1] if sign < 0 else numbers_[-2]
        log = geometric(numbers_)
        new = edge * (edge / inner) ** k if log else edge + k * (edge - inner)
        integers = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
    else:
        low, high = numbers_
        if kind == "loguniform":
            new = edge * np.exp(sign * k * (math.log(high) - math.log(low)) / samples)
        else:
            new = edge + sign * k * (high - low) / samples
        integers, log = False, kind == "loguniform"
    low_limit, high_limit = limits if limits is not None else (0.0 if numbers_[0] >= 0 else -math.inf, math.inf)
    out: list[int | float] = []
    for v in new:
        rounded = int(round(v)) if integers else float(f"{v:.{SIGNIFICANT_DIGITS}g}")
        if low_limit <= rounded <= high_limit and (rounded > 0 or not log) and rounded not in numbers_ + out:
            out.append(rounded)
    return out


def edge_table(
    selected: pd.DataFrame,
    spaces: Mapping[str, Mapping[str, Dimension]],
    samples: int | None = None,
    keys: Sequence[str] = EDGE_KEYS,
) -> pd.DataFrame:
    """One row per (`keys` group, searched dimension): the group's selected value and its position.

    `selected`: rows of the selected settings (``select_hparams``), with the `keys` columns and ``hp_<name>``
    for every dimension searched; `spaces`: strategy -> {dimension name: dimension} (a suite's
    ``search.space_for(strategy)``), looked up by the rows' ``strategy``; rows of a strategy without a space are
    left out; `samples`: the suite's ``search.samples`` (needed for ranges). Returns the `keys` columns,
    dimension, value and position. Raises ValueError when `keys` lacks "strategy", a column is missing, or a
    group holds no or several values of one dimension.
    """
    if "strategy" not in keys:
        raise ValueError(f"keys: expected 'strategy' among them, got {list(keys)}")
    missing = [c for c in keys if c not in selected]
    if missing:
        raise ValueError(f"edge_table: missing column {', '.join(repr(c) for c in missing)}")
    rows = []
    for group_key, group in selected.groupby(list(keys), sort=True, dropna=False):
        labels = dict(zip(keys, group_key))
        space = spaces.get(labels["strategy"])
        for name, dimension in sorted((space or {}).items()):
            column = f"hp_{name}"
            if column not in group:
                raise ValueError(f"edge_table: missing column '{column}' for the searched dimension '{name}'")
            values = group[column].dropna().unique()
            if len(values) != 1:
                raise ValueError(f"{labels}: expected one selected value of {column}, got {len(values)}")
            value = values[0]
            rows.append({**labels, "dimension": name, "value": value, "position": classify(value, dimension, samples)})
    return pd.DataFrame(rows, columns=[*keys, "dimension", "value", "position"])


def edge_counts(table: pd.DataFrame, by: Sequence[str] = ("strategy",)) -> pd.DataFrame:
    """How many rows of an ``edge_table`` hold each position, per `by` group: the `by` columns, one column per
    position (``POSITIONS``, zeros included) and total. Raises ValueError when a column is missing."""
    missing = [c for c in (*by, "position") if c not in table]
    if missing:
        raise ValueError(f"edge_counts: missing column {', '.join(repr(c) for c in missing)}")
    counts = table.groupby([*by, "position"], sort=True).size().unstack("position", fill_value=0)
    counts = counts.reindex(columns=list(POSITIONS), fill_value=0).astype(int)
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index()


def searched_edges(
    selected: pd.DataFrame, attempts: pd.DataFrame, keys: Sequence[str] = EDGE_KEYS, skip: Sequence[str] = ()
) -> pd.DataFrame:
    """Each group's selected value of each dimension it searched, placed among the values the group tried.

    Needs no suite: the dimension is the list of values its samples took (``hp_<name>`` columns of `attempts`,
    finished, stopped and diverged samples alike), so for a grid it is the grid, and for a range the draws; a
    selection on the lowest or highest value tried was not bracketed by the search. Only dimensions with two or
    more distinct values in a group count; `skip` names hp columns that are not settings (hp_total_steps).

    Args:
        selected: rows of the selected settings (``select_hparams``) with the `keys` columns.
        attempts: every sample of the same runs, labelled like `selected` (strategy, entry, data).
        keys: the columns that name a group (a cell and an entry).
        skip: hp columns to leave out.

    Returns:
        The `keys` columns, dimension (without ``hp_``), value, position (``classify`` on the tried values) and
        tried (how many distinct values).
    """
    columns = [*keys, "dimension", "value", "position", "tried"]
    hp_cols = sorted(c for c in attempts.columns if c.startswith("hp_") and c not in skip and c in selected)
    if selected.empty or attempts.empty or not hp_cols:
        return pd.DataFrame(columns=columns)
    tried = attempts.groupby(list(keys), dropna=False, sort=True)
    chosen = selected.groupby(list(keys), dropna=False, sort=True)[hp_cols].first()
    rows = []
    for group_key, group in tried:
        if group_key not in chosen.index:
            continue
        for column in hp_cols:
            values = [v for v in group[column].dropna().unique()]
            value = chosen.loc[group_key, column]
            if len(values) < 2 or pd.isna(value):
                continue
            position = classify(value, values)
            labels = dict(zip(keys, group_key if isinstance(group_key, tuple) else (group_key,)))
            rows.append({**labels, "dimension": column[3:], "value": value, "position": position, "tried": len(values)})
    return pd.DataFrame(rows, columns=columns)
