"""`Analysis`: a set of trial rows prepared, selected and costed once, answering every question asked of it.

    analysis = Analysis.of(load_runs([run_dir]).trials)
    analysis.leaderboard("dataset"); analysis.overall(); analysis.matrix(); analysis.pretraining_gain()

Each answer is computed on first use and kept, so `bench report` runs the prepare -> select -> cost chain once
whatever the number of tables it shows. The functions of `bench.results.leaderboard` are thin wrappers over it.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from bench.analysis import outcomes, tables, verdicts
from bench.analysis.cells import METRIC, dataset_labels, excluded_trials, of_runs, prepare, run_membership
from bench.analysis.selection import search_cost, select_hparams, tuned_runs
from bench.results.schema import DEFAULT_THRESHOLDS, DataThresholds

GROUPINGS = ("dataset", "regime")


class Analysis:
    """The statistics of one set of trial rows (every status: stopped and failed rows count in the cost).

    Args:
        trials: rows of ``trials.parquet`` (``bench.results.store.load_runs(...).trials``), columns as in
            results/README.md; at least trial_id, status, backbone, dataset and the metric.
        thresholds: the images-per-class cuts between data regimes.
        metric: the column tables rank and verdicts compare (percent).

    Raises:
        UserError: (on first use) the rows lack a required column.
    """

    def __init__(
        self, trials: pd.DataFrame, thresholds: DataThresholds = DEFAULT_THRESHOLDS, metric: str = METRIC
    ) -> None:
        self.trials = trials
        self.thresholds = thresholds
        self.metric = metric
        self._boards: dict[str, pd.DataFrame] = {}

    @classmethod
    def of(
        cls, trials: pd.DataFrame, thresholds: DataThresholds = DEFAULT_THRESHOLDS, metric: str = METRIC
    ) -> Analysis:
        """The analysis of ``trials`` (see the class)."""
        return cls(trials, thresholds, metric)

    def of_runs(self, runs: set[str]) -> Analysis:
        """The analysis of the rows that belong to one of ``runs`` (``bench.analysis.cells.run_membership``)."""
        return Analysis(of_runs(self.trials, runs), self.thresholds, self.metric)

    # ------------------------------------------------------------------------------- computed once

    @cached_property
    def prepared(self) -> pd.DataFrame:
        """The rows usable for statistics, with the derived columns (``bench.analysis.cells.prepare``)."""
        return prepare(self.trials, self.thresholds)

    @cached_property
    def selected(self) -> pd.DataFrame:
        """The prepared rows of each (cell, entry)'s selected setting (``select_hparams``)."""
        return select_hparams(self.prepared, self.metric, tried=self.trials)

    @cached_property
    def cost(self) -> pd.DataFrame:
        """What each (dataset, data size, entry) cost (``search_cost``)."""
        return search_cost(self.trials)

    @cached_property
    def labels(self) -> dict[str, str]:
        """Dataset string -> display name (``dataset_labels``)."""
        return dataset_labels(self.trials)

    @cached_property
    def tuned_runs(self) -> set[str]:
        """The runs that searched or swept a hyperparameter (``tuned_runs``)."""
        return tuned_runs(self.trials)

    @cached_property
    def excluded(self) -> pd.DataFrame:
        """The rows left out of every statistic: failed, diverged, or ok without a test metric."""
        return excluded_trials(self.trials)

    # ------------------------------------------------------------------------------- tables

    def leaderboard(self, by: str = "dataset") -> pd.DataFrame:
        """Ranked entries per cell (``by="dataset"``: dataset x data size) or per regime cell (``"regime"``).

        Columns: the group keys, rank ("1", "=1", ...), rank_position, entry, backbone, pretrained, strategy,
        n_seeds, mean, std, ci95 (half width), ci_low, ci_high of the metric (percent, as the core writes it),
        macro_f1_mean, macro_f1_ci95, val_top1_mean, train_seconds_mean, selected (the chosen hp setting), the
        cost of the entry's search (trials_run, trials_stopped, compute_seconds); for datasets dataset_name; for
        regimes n_cells / datasets / cells_left_out (the cells averaged per seed before the statistics: those
        common to every entry of the regime cell), tuned_cells (those whose setting was selected among several)
        and the search cost summed over them. Empty when no row is usable.

        Raises:
            ValueError: ``by`` is not one of ``GROUPINGS``.
        """
        if by not in GROUPINGS:
            raise ValueError(f"leaderboard grouping must be one of {', '.join(GROUPINGS)}, got {by!r}")
        if by not in self._boards:
            if self.selected.empty:
                board = pd.DataFrame()
            elif by == "dataset":
                board = tables.dataset_board(self.selected, self.cost, self.labels, self.metric)
            else:
                board = tables.regime_board(self.selected, self.cost, self.labels, self.metric)
            self._boards[by] = board
        return self._boards[by]

    def overall(self) -> pd.DataFrame:
        """Entries across datasets: mean rank and logit-mean accuracy (``bench.analysis.tables.overall_of``)."""
        return tables.overall_of(self.leaderboard("dataset"))

    def summary(self) -> str:
        """Best entry per dataset and data size, the markdown table ``bench run`` prints at the end."""
        return tables.summary_of(self.leaderboard("dataset"))

    def measured_matrix(self) -> pd.DataFrame:
        """The regime matrix of all these rows (``bench.analysis.verdicts.matrix_of``)."""
        return verdicts.matrix_of(self.leaderboard("regime"))

    def matrix(self) -> pd.DataFrame:
        """The regime matrix, stating for each cell whether its verdict was reached with tuned or fixed
        hyperparameters.

        Where the rows hold both runs that searched or swept hyperparameters and runs at fixed ones, the matrix is
        the tuned runs', and fixed_verdict / fixed_best_entry / verdict_changed say what the fixed runs concluded
        and whether tuning changed the verdict.
        """
        tuned = self.tuned_runs
        fixed_runs = set().union(*run_membership(self.trials)) - tuned
        if not tuned or not fixed_runs:
            return self.measured_matrix()
        matrix = self.of_runs(tuned).measured_matrix()
        fixed = self.of_runs(fixed_runs).measured_matrix()
        matrix["fixed_verdict"] = fixed["verdict"].to_numpy()
        matrix["fixed_best_entry"] = fixed.get("best_entry", pd.Series([None] * len(fixed))).to_numpy()
        measured = (matrix["verdict"] != "not measured") & (matrix["fixed_verdict"] != "not measured")
        matrix["verdict_changed"] = np.where(measured, matrix["verdict"] != matrix["fixed_verdict"], None)
        return matrix

    # ------------------------------------------------------------------------------- the report's questions

    def pretraining_gain(self) -> pd.DataFrame:
        """Pretrained minus scratch test top-1 per (cell, backbone, strategy), paired by seed."""
        return outcomes.pretraining_gain(self.selected)

    def freeze_profile(self) -> pd.DataFrame:
        """Pretrained entries without lp_ft, with their frozen share (``bench.analysis.outcomes``)."""
        return outcomes.freeze_profile(self.leaderboard("dataset"), self.selected, self.thresholds)

    def sensitivity(self) -> pd.DataFrame:
        """Mean validation and test top-1 per (dataset, strategy, learning rate)."""
        return outcomes.hyperparameter_sensitivity(self.prepared)

    def transferability_points(self) -> pd.DataFrame:
        """Per (dataset, backbone) at the largest data size: the estimates and the measured outcomes."""
        return outcomes.transferability_points(self.prepared, self.selected)
