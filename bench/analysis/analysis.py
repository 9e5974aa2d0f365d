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
from bench.analysis.cells import CELL, METRIC, REGIME, dataset_labels, excluded_trials, of_runs, prepare, run_membership
from bench.analysis.edges import edge_counts, searched_edges
from bench.analysis.selection import SCHEDULE_COLUMNS, attempted, search_cost, select_hparams, tuned_runs
from bench.analysis.tuning_curves import tuning_curves
from bench.results.schema import DEFAULT_THRESHOLDS, DataThresholds
from bench.utils.tables import format_table

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
    def attempts(self) -> pd.DataFrame:
        """Every sample the runs tried (ok, stopped, diverged), labelled (``attempted``)."""
        return attempted(self.trials)

    @cached_property
    def regime_seeds(self) -> pd.DataFrame:
        """Per (regime cell, entry, seed): the metric averaged over the cells common to the regime cell's entries
        (``bench.analysis.tables.regime_seeds``); the values paired tests compare."""
        return tables.regime_seeds(self.selected, self.metric)[1] if not self.selected.empty else pd.DataFrame()

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
            self._boards[by] = self._with_quality(board, by)
        return self._boards[by]

    def _with_quality(self, board: pd.DataFrame, by: str) -> pd.DataFrame:
        """``board`` with edge_selections (searched dimensions whose selection lies on an edge of what was tried,
        ``edges``) and, where rows say it, converged_share (share of the selected trials that converged)."""
        if board.empty:
            return board
        cells = self.selected[CELL + ["entry", "similarity_regime", "data_regime"]].drop_duplicates(CELL + ["entry"])
        edges = self.edges()
        on_edge = edges[edges["position"].isin(("lower edge", "upper edge"))].merge(cells, on=CELL + ["entry"])
        keys = (CELL if by == "dataset" else REGIME) + ["entry"]
        counts = on_edge.groupby(keys).size().rename("edge_selections")
        board = board.merge(counts.reset_index(), on=keys, how="left")
        board["edge_selections"] = board["edge_selections"].fillna(0).astype(int)
        if "converged" in self.selected:
            flags = self.selected.assign(_c=self.selected["converged"].astype("boolean").astype(float))
            share = flags.groupby(keys)["_c"].mean().rename("converged_share")
            board = board.merge(share.reset_index(), on=keys, how="left")
        return board

    def edges(self) -> pd.DataFrame:
        """Per (cell, entry, searched dimension): the selected value's position among the values the search tried
        ("interior", "lower edge", "upper edge"; ``bench.analysis.edges.searched_edges``)."""
        return self._edges

    @cached_property
    def _edges(self) -> pd.DataFrame:
        return searched_edges(self.selected, self.attempts, keys=CELL + ["entry", "strategy"], skip=SCHEDULE_COLUMNS)

    def edge_counts(self) -> pd.DataFrame:
        """How many selections per strategy lie inside or on an edge of the search (``edge_counts``)."""
        return edge_counts(self.edges(), by=("strategy",))

    def tuning_curves(self) -> pd.DataFrame:
        """Expected best validation top-1, and the test top-1 of that selection, against the number of samples
        searched (Dodge et al. 2019), per (regime cell, entry): each cell's curve over the samples of its search
        seed (the seed that ran the most settings), averaged over the regime cell's (dataset, data size) cells.
        Columns: similarity_regime, data_regime, entry, strategy, n, expected_val, expected_test, cells."""
        rows = self.prepared.dropna(subset=["similarity_regime", "data_regime"])
        hp = sorted(c for c in rows.columns if c.startswith("hp_") and c not in SCHEDULE_COLUMNS)
        if rows.empty or not hp or "metric_val_top1" not in rows:
            return pd.DataFrame()
        settings = rows.groupby(CELL + ["entry", "seed"])[hp].apply(lambda g: len(g.drop_duplicates()))
        search_seed = (
            settings.reset_index(name="_n")
            .sort_values(["_n", "seed"], ascending=[False, True], kind="stable")
            .drop_duplicates(CELL + ["entry"])
        )
        searched = rows.merge(search_seed[CELL + ["entry", "seed"]], on=CELL + ["entry", "seed"])
        keys = REGIME + CELL + ["entry", "strategy"]
        curves = tuning_curves(searched, keys, sample=hp)
        n_max = curves.groupby(REGIME + ["entry"])["n_samples"].transform("min")
        curves = curves[curves["n"] <= n_max]
        out = curves.groupby(REGIME + ["entry", "strategy", "n"], sort=True).agg(
            expected_val=("expected_val", "mean"), expected_test=("expected_test", "mean"), cells=("dataset", "size")
        )
        return out.reset_index()

    def overall(self) -> pd.DataFrame:
        """Entries across datasets: mean rank and logit-mean accuracy (``bench.analysis.tables.overall_of``)."""
        return tables.overall_of(self.leaderboard("dataset"))

    def summary(self) -> str:
        """Best entry per dataset and data size, the markdown table ``bench run`` prints at the end."""
        return tables.summary_of(self.leaderboard("dataset"))

    def verdict_summary(self) -> str:
        """The measured regime cells' paired verdicts as a short markdown table (similarity, data, comparison,
        effect with its 95% interval, Holm p, seeds, verdict); "" when no regime cell was measured."""
        matrix = self.matrix()
        measured = matrix[matrix["verdict"] != "not measured"]
        if measured.empty:
            return ""
        return format_table(verdicts.verdict_lines(measured))

    def measured_matrix(self) -> pd.DataFrame:
        """The regime matrix of all these rows (``bench.analysis.verdicts.matrix_of``)."""
        return verdicts.matrix_of(self.leaderboard("regime"), self.regime_seeds, self.metric)

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

    def seed_variance(self) -> pd.DataFrame:
        """Per (cell, entry) that crosses data seeds with training seeds: the variance shares of each
        (``bench.analysis.outcomes.seed_variance_table``)."""
        return outcomes.seed_variance_table(self.selected, self.metric)

    def transferability_points(self) -> pd.DataFrame:
        """Per (dataset, backbone) at the largest data size: the estimates and the measured outcomes."""
        return outcomes.transferability_points(self.prepared, self.selected)
