"""Leaderboards: ranked entries per cell or per regime cell, the overall ranking, and their display forms.

The functions here take rows already prepared and selected (`bench.analysis.cells.prepare`,
`bench.analysis.selection.select_hparams`) and the search cost; `bench.analysis.Analysis` computes those once
and calls them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.cells import CELL, DATA_REGIMES, ENTRY, REGIME, SIMILARITY_REGIMES
from bench.analysis.stats import LOGIT_CLIP, aggregate, rank_with_ties
from bench.utils.tables import format_table


def dataset_board(selected: pd.DataFrame, cost: pd.DataFrame, labels: dict[str, str], metric: str) -> pd.DataFrame:
    """Ranked entries per cell (dataset x data size): see `bench.analysis.Analysis.leaderboard` for the columns.

    Args:
        selected: rows of the selected settings (`select_hparams`), not empty.
        cost: `search_cost` of every row of the runs.
        labels: dataset -> display name (`dataset_labels`).
        metric: the column ranked (percent).
    """
    stats = aggregate(selected, CELL + ["per_class"] + ENTRY, metric)
    info = selected.groupby(CELL + ["entry"], dropna=False).agg(
        selected=("selected", "first"), selection=("selection", "first"), n_settings=("n_settings", "first")
    )
    stats = stats.merge(info.reset_index(), on=CELL + ["entry"], how="left")
    stats = stats.merge(cost, on=CELL + ["entry"], how="left")
    ranked = rank_with_ties(stats, CELL)
    ranked["_size"] = ranked["per_class"].fillna(np.inf)
    ranked = ranked.sort_values(
        ["dataset", "_size", "rank_position", "mean", "entry"],
        ascending=[True, True, True, False, True],
        kind="stable",
    )
    ranked.insert(ranked.columns.get_loc("dataset") + 1, "dataset_name", ranked["dataset"].map(labels))
    return ranked.drop(columns="_size").reset_index(drop=True)


def regime_board(selected: pd.DataFrame, cost: pd.DataFrame, labels: dict[str, str], metric: str) -> pd.DataFrame:
    """Ranked entries per regime cell (similarity regime x data regime); empty when no row has both regimes.

    Per seed, an entry's cells common to every entry of its regime cell (`common_cells`) are averaged, then
    statistics are taken over seeds. Arguments as `dataset_board`.
    """
    usable, pooled = regime_seeds(selected, metric)
    if usable.empty:
        return pd.DataFrame()
    stats = aggregate(pooled, REGIME + ENTRY, metric)
    cells = usable[REGIME + ["entry", "dataset", "data"]].drop_duplicates()
    cover = usable.groupby(REGIME + ["entry"]).agg(
        datasets=("dataset", lambda s: ", ".join(sorted({labels.get(d, d) for d in s}))),
        similarity_source=("similarity_source", lambda s: ", ".join(sorted(set(s.dropna())))),
        cells_left_out=("cells_left_out", "first"),
    )
    cover["n_cells"] = cells.groupby(REGIME + ["entry"]).size()
    tuned = usable[usable["n_settings"] > 1][REGIME + ["entry", "dataset", "data"]].drop_duplicates()
    cover["tuned_cells"] = tuned.groupby(REGIME + ["entry"]).size()
    cover["tuned_cells"] = cover["tuned_cells"].fillna(0).astype(int)
    cell_cost = cells.merge(cost, on=CELL + ["entry"], how="left")
    cover = cover.join(cell_cost.groupby(REGIME + ["entry"])[["trials_run", "trials_stopped", "compute_seconds"]].sum())
    stats = stats.merge(cover.reset_index(), on=REGIME + ["entry"], how="left")
    ranked = rank_with_ties(stats, REGIME)
    order = {r: i for i, r in enumerate(SIMILARITY_REGIMES + DATA_REGIMES)}
    ranked["_s"], ranked["_d"] = ranked["similarity_regime"].map(order), ranked["data_regime"].map(order)
    ranked = ranked.sort_values(
        ["_s", "_d", "rank_position", "mean", "entry"], ascending=[True, True, True, False, True], kind="stable"
    )
    return ranked.drop(columns=["_s", "_d"]).reset_index(drop=True)


def regime_seeds(selected: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usable, pooled): the selected rows of cells common to every entry of their regime cell
    (`common_cells`), and per (regime cell, entry, seed) the mean of `metric` (and of macro-F1, validation top-1,
    train seconds) over those cells: one value per seed, the unit the regime statistics and paired tests use."""
    usable = common_cells(selected[selected["similarity_regime"].notna() & selected["data_regime"].notna()])
    if usable.empty:
        return usable, pd.DataFrame(columns=REGIME + ENTRY + ["seed", metric])
    per_seed = usable.groupby(REGIME + ENTRY + ["seed"], dropna=False)
    columns = [c for c in (metric, "metric_macro_f1", "metric_val_top1", "train_seconds") if c in usable]
    return usable, per_seed[columns].mean().reset_index()


def common_cells(selected: pd.DataFrame) -> pd.DataFrame:
    """Within each regime cell, keep the (dataset, data) cells that every entry of it was measured on.

    Averaging entries over different sets of datasets would compare datasets, not strategies (a failed
    trial, or two merged suites, leaves such holes). `cells_left_out` counts what was dropped; where no cell
    is common to all entries, all are kept and `cells_left_out` is -1 (entries then are not comparable).
    """
    if selected.empty:
        return selected.assign(cells_left_out=pd.Series(dtype=int))
    parts = []
    for _, group in selected.groupby(REGIME, sort=False):
        coverage = group.groupby(CELL)["entry"].nunique()
        common = coverage[coverage == group["entry"].nunique()].index
        if len(common) == 0:
            parts.append(group.assign(cells_left_out=-1))
            continue
        keep = pd.MultiIndex.from_frame(group[CELL]).isin(common)
        parts.append(group[keep].assign(cells_left_out=len(coverage) - len(common)))
    return pd.concat(parts, ignore_index=True)


def overall_of(board: pd.DataFrame) -> pd.DataFrame:
    """Entries across datasets: mean rank and mean accuracy in logit space (Kornblith et al. 2019), from a
    dataset leaderboard (`dataset_board`).

    Each cell ranks its entries by mean (average ranks for equal means); an entry's rank on a dataset is the
    mean over that dataset's cells, and its overall rank the mean over datasets, so every dataset weighs the
    same whatever its number of data sizes. Likewise for logit(top-1); `logit_mean` maps the mean logit back
    to an accuracy (percent). Entries absent from some cells are ranked on the cells they have (see n_cells).
    """
    if board.empty:
        return pd.DataFrame()
    board = board.copy()
    board["cell_rank"] = board.groupby(CELL)["mean"].rank(ascending=False, method="average")
    clipped = (board["mean"] / 100).clip(LOGIT_CLIP, 1 - LOGIT_CLIP)  # metrics are percentages
    board["logit"] = np.log(clipped / (1 - clipped))
    per_dataset = board.groupby(ENTRY + ["dataset"]).agg(
        cell_rank=("cell_rank", "mean"), logit=("logit", "mean"), n_cells=("data", "size")
    )
    overall = (
        per_dataset.groupby(ENTRY)
        .agg(
            mean_rank=("cell_rank", "mean"),
            mean_logit=("logit", "mean"),
            n_datasets=("cell_rank", "size"),
            n_cells=("n_cells", "sum"),
        )
        .reset_index()
    )
    overall["logit_mean"] = 100 / (1 + np.exp(-overall["mean_logit"]))
    overall = overall.sort_values(["mean_rank", "mean_logit", "entry"], ascending=[True, False, True])
    overall.insert(0, "rank", range(1, len(overall) + 1))
    return overall.reset_index(drop=True)


def summary_of(board: pd.DataFrame) -> str:
    """Best entry per dataset and data size, from a dataset leaderboard, as the short markdown table
    `bench run` prints at the end."""
    if board.empty:
        return "_(no finished trial to rank)_\n"
    rows = []
    for (_, data), cell in board.groupby(CELL, sort=False):
        best = cell.iloc[0]
        tied = int((cell["rank"] == best["rank"]).sum()) - 1 if best["rank"].startswith("=") else 0
        runner = cell.iloc[1] if len(cell) > 1 else None
        rows.append(
            {
                "dataset": best["dataset_name"],
                "data": data,
                "best": best["entry"],
                "top-1 % (95% CI)": pct(best["mean"], best["ci95"]),
                "seeds": best["n_seeds"],
                "next": "" if runner is None else f"{runner['entry']} ({pct(runner['mean'])})",
                "tied with": tied or "",
            }
        )
    return format_table(pd.DataFrame(rows))


def pct(mean: float, half: float | None = None) -> str:
    """'81.2 ± 1.3' from a percentage and its interval half-width; one seed shows '81.2 (1 seed)'."""
    if mean is None or not np.isfinite(mean):
        return ""
    if half is None:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {half:.1f}" if np.isfinite(half) else f"{mean:.1f} (1 seed)"


def display_leaderboard(board: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader wants, percentages with their 95% half-widths.

    Where some entry searched or swept (several settings, or stopped samples): "edge" (the board's
    edge_selections: searched dimensions whose selected value is the lowest or highest value tried; blank when 0)
    and, last, "search cost". Where the board has converged_share (rows with a ``converged`` flag): "converged",
    the share of the selected trials that converged, in percent (blank where no selected trial carries the flag),
    before the search cost.
    """
    if board.empty:
        return board
    keys = [c for c in ("similarity_regime", "data_regime", "dataset", "data") if c in board]
    out = board[keys + ["rank", "entry"]].copy()
    if "dataset_name" in board:  # the short name; the full dataset string stays in the CSV
        out["dataset"] = board["dataset_name"]
    out["top-1 % (95% CI)"] = [pct(m, h) for m, h in zip(board["mean"], board["ci95"])]
    if "macro_f1_mean" in board:
        out["macro-F1 %"] = [pct(m, h) for m, h in zip(board["macro_f1_mean"], board["macro_f1_ci95"])]
    out["seeds"] = board["n_seeds"]
    if "n_cells" in board:
        out["cells"] = board["n_cells"]
    if "selected" in board:
        out["selected hp (val)"] = board["selected"]
    if "train_seconds_mean" in board:
        out["train s"] = board["train_seconds_mean"].map(lambda s: f"{s:.1f}" if np.isfinite(s) else "")
    searched = (
        ("n_settings" in board and (board["n_settings"] > 1).any())
        or ("tuned_cells" in board and (board["tuned_cells"] > 0).any())
        or ("trials_stopped" in board and (board["trials_stopped"] > 0).any())
    )
    if searched and "edge_selections" in board:
        out["edge"] = [str(int(n)) if n else "" for n in board["edge_selections"].fillna(0)]
    if "converged_share" in board and board["converged_share"].notna().any():
        out["converged"] = [f"{100 * s:.0f}%" if pd.notna(s) else "" for s in board["converged_share"]]
    if searched and "trials_run" in board:  # a sweep or a search: show what it cost (the last column)
        out["search cost"] = [
            cost_text(n, k, t)
            for n, k, t in zip(board["trials_run"], board["trials_stopped"], board["compute_seconds"])
        ]
    return out


def cost_text(trials: float, stopped: float, seconds: float) -> str:
    """'12 trials (4 stopped), 35 s': what a search behind an entry or a verdict cost."""
    return f"{int(trials)} trials ({int(stopped)} stopped), {seconds:.0f} s"


def display_overall(overall: pd.DataFrame) -> pd.DataFrame:
    if overall.empty:
        return overall
    return pd.DataFrame(
        {
            "rank": overall["rank"],
            "entry": overall["entry"],
            "mean rank": overall["mean_rank"].map("{:.2f}".format),
            "logit-mean top-1 %": overall["logit_mean"].map(lambda v: f"{v:.1f}"),
            "datasets": overall["n_datasets"],
            "cells": overall["n_cells"],
        }
    )
