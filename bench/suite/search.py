"""A suite's ``search:`` block: the hyperparameter space searched in every cell, and the points drawn from it.

A dimension is a list (every value, crossed with the other lists, as ``tune.grid_search``) or a range:
``{loguniform: [low, high]}``, ``{uniform: [low, high]}`` or ``{choice: [a, b, ...]}``, drawn ``samples`` times
(as Tune's ``num_samples``). ``by_strategy`` replaces dimensions for one strategy (``linear_probe``, ``full``,
``lp_ft``, ``partial``). Draws are a function of ``search.seed``, the strategy and the sample index alone, so two
runs of a suite draw the same points, every cell of a strategy gets the same points, and resume recognises them.
``protocol: two_stage`` searches on the grid's first seed only, then runs each cell's selected point (best
validation top-1) on every other seed (VTAB's two stages), so seed intervals are at fixed hyperparameters.
``extend: N`` (two-stage only) lets that search extend itself: a cell whose selection sits on the lowest or
highest value tried of a grid of numbers gets one point beyond it, up to ``N`` rounds (``Suite.search_rounds``);
``limits: {name: [low, high]}`` bounds those points. Ranges and choices never extend.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from bench.config import SEARCHABLE
from bench.suite.reading import shorten
from bench.suite.strict import Strict

RANGE_KINDS = ("loguniform", "uniform", "choice")


def strategy_keys() -> list[str]:
    """Registered strategies (plug-ins' included) and ``partial`` (0 < freeze < 1)."""
    from bench.models.strategies import strategy_names

    return [*strategy_names(), "partial"]


SIGNIFICANT_DIGITS = 6  # drawn numbers are rounded to this many significant digits (readable rows, same ids)


def _dimension(value: Any) -> list[Any] | dict[str, list[Any]]:
    if isinstance(value, list):
        if not value:
            raise ValueError("expected a non-empty list of values or a range, got []")
        if len({repr(v) for v in value}) != len(value):
            raise ValueError(f"expected distinct values, got {shorten(value)}")
        return value
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in RANGE_KINDS:
        raise ValueError(
            f"expected a list of values or one of {{loguniform: [low, high]}}, {{uniform: [low, high]}}, "
            f"{{choice: [...]}}, got {shorten(value)}"
        )
    kind, bounds = next(iter(value.items()))
    if kind == "choice":
        return {kind: _dimension(bounds)}
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
        raise ValueError(f"{kind}: expected [low, high], got {shorten(bounds)}")
    low, high = bounds
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"{kind}: expected {'0 < ' if kind == 'loguniform' else ''}low < high, got {bounds}")
    return {kind: [float(low), float(high)]}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


Space = dict[str, Any]


def _space(space: dict[str, Any]) -> Space:
    unknown = sorted(set(space) - set(SEARCHABLE))
    if unknown:
        raise ValueError(f"cannot search {', '.join(unknown)}: searchable are {', '.join(SEARCHABLE)}")
    return {name: _dimension(value) for name, value in space.items()}


class SchedulerSpec(Strict):
    """Early stopping within a cell (Ray Tune's schedulers on validation top-1 after each evaluation)."""

    kind: Literal["none", "asha", "median"] = "asha"  # HyperBand pauses trials, which needs checkpoints
    grace_evaluations: Annotated[int, Field(ge=1)] = 1  # no sample is stopped before this many evaluations
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0  # asha: keep 1/reduction_factor per rung


class SearchSpec(Strict):
    samples: Annotated[int, Field(ge=1)] = 1
    protocol: Literal["every_seed", "two_stage"] = "every_seed"
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    space: dict[str, Any]
    by_strategy: dict[str, dict[str, Any]] = {}  # strategy name or partial (0 < freeze < 1) -> its space
    scheduler: SchedulerSpec = SchedulerSpec()
    extend: Annotated[int, Field(ge=0)] = 0  # rounds of one point past each edge a cell's selection sits on
    limits: dict[str, Any] = {}  # name -> [low, high]: no extension passes these (inclusive)

    @field_validator("space")
    @classmethod
    def _valid_space(cls, space: dict[str, Any]) -> Space:
        if not space:
            raise ValueError("expected at least one hyperparameter to search, got none")
        return _space(space)

    @field_validator("by_strategy")
    @classmethod
    def _valid_strategy_spaces(cls, spaces: dict[str, dict[str, Any]]) -> dict[str, Space]:
        known = strategy_keys()
        for strategy in spaces:
            if strategy not in known:
                raise ValueError(f"unknown strategy '{strategy}'; expected one of {', '.join(known)}")
        return {strategy: _space(space) for strategy, space in spaces.items()}

    @field_validator("limits")
    @classmethod
    def _valid_limits(cls, limits: dict[str, Any]) -> dict[str, list[float]]:
        for name, bounds in limits.items():
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
                _refuse(f"search.limits.{name}", f"expected [low, high], got {shorten(bounds)}")
            if not bounds[0] < bounds[1]:
                _refuse(f"search.limits.{name}", f"expected low < high, got {shorten(bounds)}")
        return {name: [float(low), float(high)] for name, (low, high) in limits.items()}

    @model_validator(mode="after")
    def _extendable(self) -> SearchSpec:
        """``extend`` needs a two-stage search and a grid of numbers to extend; ``limits`` needs ``extend`` and
        names such a grid, whose values it holds."""
        if self.extend and self.protocol != "two_stage":
            _refuse(
                "search.extend", f"extends a two-stage search only: expected protocol: two_stage, got {self.protocol}"
            )
        grids = {name: values for key in strategy_keys() for name, values in self._grids(key).items()}
        if self.extend and not grids:
            _refuse(
                "search.extend",
                "extends grids of numbers only (a list of two or more numbers; ranges and choices never extend): "
                "expected one in search.space or search.by_strategy, got none",
            )
        if self.limits and not self.extend:
            _refuse("search.limits", "bounds the points of search.extend: expected extend >= 1, got 0")
        for name, (low, high) in self.limits.items():
            if name not in grids:
                expected = ", ".join(sorted(grids))
                _refuse(f"search.limits.{name}", f"expected a searched grid of numbers ({expected}), got {name}")
            outside = [v for key in strategy_keys() for v in self._grids(key).get(name, []) if not low <= v <= high]
            if outside:
                _refuse(
                    f"search.limits.{name}",
                    f"expected bounds that hold the searched {name} values, got "
                    f"[{low:g}, {high:g}] without {outside[0]:g}",
                )
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``extend: 0`` and ``limits: {}``: a suite saved before these keys existed resumes."""
        data = handler(self)
        if not self.extend:
            data.pop("extend", None)
        if not self.limits:
            data.pop("limits", None)
        return data

    def extendable(self, strategy: str) -> list[str]:
        """The dimensions of ``strategy``'s space that ``extend`` extends, by name: lists of two or more numbers."""
        return sorted(self._grids(strategy))

    def _grids(self, strategy: str) -> dict[str, list[float]]:
        return {
            name: values
            for name, values in self.space_for(strategy).items()
            if isinstance(values, list) and len(values) > 1 and all(_is_number(v) for v in values)
        }

    def space_for(self, strategy: str) -> Space:
        return {**self.space, **self.by_strategy.get(strategy, {})}

    def points(self, strategy: str) -> list[dict[str, Any]]:
        """The hyperparameter points every cell of ``strategy`` runs: each combination of the list dimensions,
        crossed with ``samples`` draws of the ranges (a space of lists only is its grid, once)."""
        space = self.space_for(strategy)
        grid = {name: values for name, values in sorted(space.items()) if isinstance(values, list)}
        ranges = {name: dim for name, dim in sorted(space.items()) if isinstance(dim, dict)}
        points = []
        for combination in itertools.product(*grid.values()):
            for sample in range(self.samples if ranges else 1):
                rng = np.random.default_rng([self.seed, _stable(strategy), sample])
                drawn = {name: _draw(dim, rng) for name, dim in ranges.items()}
                points.append({**dict(zip(grid, combination)), **drawn})
        return points

    def size(self, strategy: str) -> int:
        return len(self.points(strategy))


def _refuse(key: str, message: str) -> None:
    """A validation error that names its own key path (``bench.suite.messages`` prints it as one line)."""
    raise PydanticCustomError("search_value", "search value", {"key": key, "message": message})


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _draw(dimension: dict[str, list[Any]], rng: np.random.Generator) -> Any:
    ((kind, values),) = dimension.items()
    if kind == "choice":
        return values[int(rng.integers(len(values)))]
    low, high = values
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "loguniform" else rng.uniform(low, high)
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
