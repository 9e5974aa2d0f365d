"""Leaderboards, the overall ranking and the regime matrix as functions of trial rows: the stable public API.

Each function is a thin wrapper over `bench.analysis.Analysis`, which prepares, selects and costs a set of rows
once; use the object directly when asking several questions of the same rows. Every number is a mean over seeds
with a Student-t 95% interval; where a suite swept a hyperparameter, the setting is chosen per cell on validation
top-1 and only its test metric is reported. (docs/design.md, "Vocabulary"; "Leaderboards and the report")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.analysis import Analysis
from bench.analysis.cells import (
    CELL,
    DATA_REGIMES,
    DECLARED_SIMILARITY,
    ENTRY,
    METRIC,
    REGIME,
    SIMILARITY_REGIMES,
    dataset_labels,
    excluded_trials,
    of_runs,
    prepare,
    run_membership,
    shown_datasets,
)
from bench.analysis.selection import search_cost, select_hparams, tuned_runs
from bench.analysis.stats import LOGIT_CLIP, intervals_overlap, rank_with_ties, seed_stats
from bench.analysis.tables import display_leaderboard, display_overall, pct
from bench.analysis.verdicts import display_matrix, textbook_advice
from bench.results.schema import DEFAULT_THRESHOLDS, DataThresholds
from bench.utils.tables import format_table, markdown_table, parse_table

__all__ = [
    "CELL",
    "DATA_REGIMES",
    "DECLARED_SIMILARITY",
    "DEFAULT_THRESHOLDS",
    "ENTRY",
    "LOGIT_CLIP",
    "METRIC",
    "REGIME",
    "SIMILARITY_REGIMES",
    "DataThresholds",
    "dataset_labels",
    "display_leaderboard",
    "display_matrix",
    "display_overall",
    "excluded_trials",
    "format_table",
    "intervals_overlap",
    "leaderboard",
    "leaderboard_command",
    "markdown_table",
    "measured_matrix",
    "of_runs",
    "overall_ranking",
    "parse_table",
    "pct",
    "prepare",
    "rank_with_ties",
    "regime_matrix",
    "run_membership",
    "run_summary",
    "search_cost",
    "seed_stats",
    "select_hparams",
    "shown_datasets",
    "textbook_advice",
    "tuned_runs",
]


def leaderboard(
    df: pd.DataFrame, by: str = "dataset", metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Ranked entries per cell or per regime cell: ``Analysis.of(df, thresholds, metric).leaderboard(by)``."""
    return Analysis.of(df, thresholds, metric).leaderboard(by)


def overall_ranking(
    df: pd.DataFrame, metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Entries across datasets, mean rank and logit-mean top-1: ``Analysis.of(df, ...).overall()``."""
    return Analysis.of(df, thresholds, metric).overall()


def measured_matrix(
    df: pd.DataFrame, metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """The regime matrix of every row, tuned or not: ``Analysis.of(df, ...).measured_matrix()``."""
    return Analysis.of(df, thresholds, metric).measured_matrix()


def regime_matrix(
    df: pd.DataFrame, metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """The regime matrix, tuned runs beside fixed ones: ``Analysis.of(df, ...).matrix()``."""
    return Analysis.of(df, thresholds, metric).matrix()


def run_summary(df: pd.DataFrame) -> str:
    """Best entry per dataset and data size, the markdown table ``bench run`` prints: ``Analysis.of(df).summary()``."""
    return Analysis.of(df).summary()


def leaderboard_command(run_dirs: Sequence[str | Path], by: str = "dataset", fmt: str = "md") -> str:
    """The text ``bench leaderboard`` prints (``bench.cli.leaderboard_text``)."""
    from bench.cli import leaderboard_text

    return leaderboard_text(run_dirs, by=by, fmt=fmt)
