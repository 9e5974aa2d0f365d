"""Ranked, seed-aggregated leaderboards, the overall ranking and the measured regime matrix.

``leaderboard``, ``overall_ranking`` and ``regime_matrix`` take trial rows (``ok`` rows with a test top-1 count,
see ``prepare``) and return DataFrames that ``bench leaderboard``, ``bench report`` and the Python API share. Every
number is a mean over seeds with a Student-t 95% interval, so no ranking rests on one seed's noise: entries whose
interval overlaps the leader's share its rank ("=1"). Where a suite swept a hyperparameter, the setting is chosen
per cell on validation top-1 and only its test metric is reported (``select_hparams``). An *entry* is (backbone,
pretrained, strategy), a *cell* (dataset, data size), a *regime cell* (similarity regime, data regime).
(docs/design.md, "Vocabulary"; "Leaderboards and the report")
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from bench.errors import UserError
from bench.results.schema import DEFAULT_THRESHOLDS, DataThresholds

METRIC = "metric_top1"
CELL = ["dataset", "data"]
ENTRY = ["entry", "backbone", "pretrained", "strategy"]
REGIME = ["similarity_regime", "data_regime"]
SIMILARITY_REGIMES = ("high", "low")
DATA_REGIMES = ("scarce", "limited", "sufficient")
DECLARED_SIMILARITY = {"natural": "high", "specialized": "low", "structured": "low"}
_SCHEDULE_COLUMNS = ("hp_total_steps",)  # derived from the data and the budget (unset on a stopped row): not a setting
LOGIT_CLIP = 1e-3  # accuracies are clipped to [0.1%, 99.9%] before the logit, so 0% or 100% stay finite


# The textbook matrix (docs/design.md, "What it answers"): advice text and the strategies that count as
# following it.
_FINE_TUNE = {"full", "lp_ft"}


def textbook_advice(similarity_regime: str, data_regime: str) -> tuple[str, set[str] | None]:
    """(advice, strategies that follow it); None = "no safe recipe", judged by whether any strategy wins."""
    if similarity_regime == "high":
        return "linear probe (feature extraction)", {"linear_probe"}
    if data_regime == "sufficient":
        return "full fine-tune", _FINE_TUNE
    return "no safe recipe (risk of overfitting)", None


# --------------------------------------------------------------------------------------------- preparation


def prepare(df: pd.DataFrame, thresholds: DataThresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Rows usable for statistics (status ok, finite metric) with the derived columns every table uses.

    Adds: strategy (from the `strategy` column, else from `freeze`), entry, data (cell size label),
    per_class (training images per class, the cell's median), data_regime (recomputed from per_class with
    `thresholds`), similarity_regime (measured, else the dataset's declared group) and similarity_source.
    """
    missing = [c for c in ("trial_id", "status", "backbone", "dataset", METRIC) if c not in df.columns]
    if missing:
        raise UserError(f"trial table: missing column {', '.join(repr(m) for m in missing)}")
    rows = df[(df["status"] == "ok") & pd.to_numeric(df[METRIC], errors="coerce").notna()].copy()
    if rows.empty:
        return rows.assign(**{c: pd.Series(dtype=object) for c in ENTRY + ["data", "per_class"] + REGIME})
    rows = _labelled(rows)

    per_class = pd.to_numeric(_column(rows, "n_train", None), errors="coerce") / pd.to_numeric(
        _column(rows, "n_classes", None), errors="coerce"
    )
    shots = pd.to_numeric(_column(rows, "shots", None), errors="coerce")
    rows["per_class"] = per_class.fillna(shots).groupby([rows["dataset"], rows["data"]]).transform("median")
    recomputed = rows["per_class"].map(thresholds.regime)
    rows["data_regime"] = recomputed.where(recomputed.notna(), _column(rows, "data_regime", None))

    declared = _column(rows, "dataset_group", None).map(DECLARED_SIMILARITY)
    measured = _column(rows, "similarity_regime", None)
    measured = measured.where(measured.isin(SIMILARITY_REGIMES))
    rows["similarity_source"] = np.where(measured.notna(), "measured", np.where(declared.notna(), "declared", None))
    rows["similarity_regime"] = measured.where(measured.notna(), declared)
    for metric in ("metric_top1", "metric_macro_f1", "metric_val_top1", "train_seconds"):
        if metric in rows:
            rows[metric] = pd.to_numeric(rows[metric], errors="coerce")
    return rows.reset_index(drop=True)


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with pretrained, strategy, entry and data (the cell's size label) filled in."""
    rows["pretrained"] = _column(rows, "pretrained", True).map(lambda v: True if v is None or pd.isna(v) else bool(v))
    rows["strategy"] = [
        _strategy_label(s, f) for s, f in zip(_column(rows, "strategy", None), _column(rows, "freeze", None))
    ]
    rows["entry"] = [
        f"{b}{'' if p else ' scratch'} / {s}" for b, p, s in zip(rows["backbone"], rows["pretrained"], rows["strategy"])
    ]
    rows["data"] = [
        _size_label(f, s) for f, s in zip(_column(rows, "data_fraction", None), _column(rows, "shots", None))
    ]
    return rows


def dataset_labels(df: pd.DataFrame) -> dict[str, str]:
    """Dataset string -> the name tables and figures show: its rows' `dataset_name` (derived from the string
    for tables without the column). Names must tell datasets apart: where two datasets of the rows share one
    (two merged runs naming different data alike), those show their full dataset strings instead."""
    from bench.results.store import dataset_names

    if df.empty or "dataset" not in df:
        return {}
    frame = df[["dataset"]].assign(dataset_name=dataset_names(df)).dropna(subset=["dataset"])
    labels = frame.drop_duplicates("dataset").set_index("dataset")["dataset_name"].fillna("").astype(str).to_dict()
    labels = {str(d): name or str(d) for d, name in labels.items()}
    counts = pd.Series(list(labels.values())).value_counts()
    clashing = set(counts[counts > 1].index)
    labels = {d: d if name in clashing else name for d, name in labels.items()}
    if len(set(labels.values())) < len(labels):  # a short name equal to another's full string: all in full
        return {d: d for d in labels}
    return labels


def shown_datasets(df: pd.DataFrame) -> pd.DataFrame:
    """`df` (trial rows) with `dataset` replaced by its display label (`dataset_labels`), for renderers that
    group and show by dataset: the labels are unique, so every grouping is unchanged."""
    if df.empty or "dataset" not in df:
        return df
    labels = dataset_labels(df)
    return df.assign(dataset=df["dataset"].map(lambda d: labels.get(str(d), d) if isinstance(d, str) else d))


def search_cost(df: pd.DataFrame) -> pd.DataFrame:
    """What each (dataset, data size, entry) cost, every trial counted whatever its status: trials_run,
    trials_stopped (ended early by a search's scheduler) and compute_seconds (their training seconds summed)."""
    rows = _labelled(df.copy())
    rows["_stopped"] = rows["status"] == "stopped"
    rows["_seconds"] = pd.to_numeric(_column(rows, "train_seconds", None), errors="coerce").fillna(0.0)
    cost = rows.groupby(CELL + ["entry"], dropna=False).agg(
        trials_run=("trial_id", "size"), trials_stopped=("_stopped", "sum"), compute_seconds=("_seconds", "sum")
    )
    return cost.reset_index()


def excluded_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The rows `prepare` leaves out of every statistic: failed, diverged, or ok without a test metric."""
    metric = pd.to_numeric(df[METRIC], errors="coerce") if METRIC in df else pd.Series(np.nan, index=df.index)
    keep = [
        c
        for c in (
            "trial_id",
            "status",
            "error",
            "backbone",
            "pretrained",
            "dataset",
            "freeze",
            "strategy",
            "data_fraction",
            "shots",
            "seed",
            "hp_lr",
            "run_dir",
        )
        if c in df
    ]
    return df.loc[(df["status"] != "ok") | metric.isna(), keep].reset_index(drop=True)


def _column(df: pd.DataFrame, name: str, default: object) -> pd.Series:
    if name in df:
        return df[name].astype(object).where(df[name].notna(), None)
    return pd.Series([default] * len(df), index=df.index, dtype=object)


def _strategy_label(strategy: object, freeze: object) -> str:
    if isinstance(strategy, str) and strategy and strategy != "partial":
        return strategy
    if freeze is None or (isinstance(freeze, float) and math.isnan(freeze)):
        return strategy if isinstance(strategy, str) and strategy else "unknown"
    depth = float(freeze)
    if depth >= 1.0:
        return "linear_probe"
    if depth <= 0.0:
        return "full"
    return f"freeze {depth:g}"


def _size_label(fraction: object, shots: object) -> str:
    if shots is not None and not (isinstance(shots, float) and math.isnan(shots)):
        return f"{int(shots)}-shot"
    if fraction is not None and not (isinstance(fraction, float) and math.isnan(fraction)):
        return f"{float(fraction) * 100:g}%"
    return "all"


# --------------------------------------------------------------------------------------------- statistics


def seed_stats(values: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float]:
    """n, mean, sample std and the Student-t 95% interval of the mean; one value has no interval (NaN)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(st.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"n_seeds": n, "mean": mean, "std": std, "ci95": half, "ci_low": mean - half, "ci_high": mean + half}


def intervals_overlap(a_low: float, a_high: float, b_low: float, b_high: float) -> bool:
    """Closed-interval overlap; a missing interval (one seed) overlaps only an equal point."""
    if any(math.isnan(v) for v in (a_low, a_high, b_low, b_high)):
        return False
    return a_low <= b_high and b_low <= a_high


def select_hparams(prepared: pd.DataFrame, metric: str = METRIC, tried: pd.DataFrame | None = None) -> pd.DataFrame:
    """Keep, per (cell, entry), the rows of the hyperparameter setting with the best mean validation top-1.

    A setting is one combination of the `hp_*` columns; validation top-1 is averaged over that setting's
    seeds, and only the settings measured on the most seeds compete (so an entry's interval comes from seeds
    at one setting: a two-stage search, or a sample stopped early on some seed). The test metric never takes
    part. `tried`: every row of the runs (stopped samples included), so that a cell whose search ended with one
    finished sample still counts its settings. Adds `selected` ("hp_lr=0.001", or "" when nothing was swept),
    `n_settings` (settings tried), and `selection` ("val_top1", "single setting", or "no validation metric"
    when settings differ but none has a validation score: then the first setting in hp order is kept).
    """
    if prepared.empty:
        return prepared.assign(selected=pd.Series(dtype=object), n_settings=0, selection=pd.Series(dtype=object))
    group_keys = CELL + ["entry"]
    hp_cols = sorted(c for c in prepared.columns if c.startswith("hp_"))
    rows = prepared.copy()
    rows["_hp_key"] = _setting_key(rows, hp_cols)
    val = rows["metric_val_top1"] if "metric_val_top1" in rows else pd.Series(np.nan, index=rows.index)
    settings = (
        rows.assign(_val=val)
        .groupby(group_keys + ["_hp_key"], sort=True, dropna=False)
        .agg(_val=("_val", "mean"), _seeds=("seed", "nunique"))
        .reset_index()
    )
    settings["_score"] = settings["_val"].fillna(-np.inf)
    # The settings measured on the most seeds compete (a two-stage search ran only its selection on every
    # seed); among them the best mean validation top-1 wins, the first in hp order on a tie.
    ranked = settings.sort_values(["_seeds", "_score"], ascending=False, kind="stable")
    best = ranked.groupby(group_keys, sort=False).head(1)

    # What was tried: the finished settings, and with `tried` the stopped and diverged samples too.
    label_cols = [c for c in hp_cols if c not in _SCHEDULE_COLUMNS]
    attempts = rows
    if tried is not None and not tried.empty:
        attempts = _labelled(tried[tried["status"].isin(("ok", "stopped", "diverged"))].copy())
        attempts = attempts[[c for c in group_keys + label_cols if c in attempts]].reindex(
            columns=group_keys + label_cols
        )
    attempts = attempts.assign(_label_key=_setting_key(attempts, label_cols))
    n_settings = attempts.groupby(group_keys, dropna=False)["_label_key"].nunique().rename("n_settings")
    best = best.merge(n_settings.reset_index(), on=group_keys, how="left")
    best["n_settings"] = best["n_settings"].fillna(1).clip(lower=1).astype(int)
    best = best.assign(
        selection=np.where(
            best["n_settings"] == 1,
            "single setting",
            np.where(np.isfinite(best["_score"]), "val_top1", "no validation metric"),
        )
    )
    if label_cols:
        # Label the chosen setting by the hp columns that vary inside its (cell, entry): "hp_lr=0.001".
        text = _hp_text(attempts, label_cols)
        n_values = text.groupby([attempts[k] for k in group_keys], sort=False).nunique().add_prefix("_n_")
        values = rows[group_keys + ["_hp_key"] + label_cols].drop_duplicates(group_keys + ["_hp_key"])
        labelled = best[group_keys + ["_hp_key"]].merge(values, on=group_keys + ["_hp_key"], how="left")
        labelled = labelled.merge(n_values.reset_index(), on=group_keys, how="left")
        parts = [
            np.where(labelled[f"_n_{c}"].fillna(1) > 1, [f"{c}={_fmt_value(v)}" for v in labelled[c]], "")
            for c in label_cols
        ]
        best["selected"] = [", ".join(p for p in row if p) for row in zip(*parts)]
    else:
        best["selected"] = ""
    chosen = rows.merge(
        best[group_keys + ["_hp_key", "n_settings", "selection", "selected"]], on=group_keys + ["_hp_key"]
    )
    return chosen.drop(columns="_hp_key").reset_index(drop=True)


def _hp_text(rows: pd.DataFrame, hp_cols: list[str]) -> pd.DataFrame:
    """``rows[hp_cols]`` as text, a missing value as ""."""
    return rows[hp_cols].astype(object).where(rows[hp_cols].notna(), "").astype(str)


def _setting_key(rows: pd.DataFrame, hp_cols: list[str]) -> pd.Series:
    """One string per row naming its combination of ``hp_cols`` (missing values included)."""
    if not hp_cols:
        return pd.Series("", index=rows.index)
    return _hp_text(rows, hp_cols).agg("|".join, axis=1)


def _fmt_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _aggregate(selected: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """One row per `keys` group: seed stats of `metric` plus means of the secondary columns."""
    per_seed = selected.groupby(keys + ["seed"], dropna=False, sort=True)
    extra = [c for c in ("metric_macro_f1", "metric_val_top1", "train_seconds") if c in selected and c != metric]
    seeds = per_seed[[metric] + extra].mean().reset_index()
    grouped = seeds.groupby(keys, dropna=False, sort=True)
    out = _stats_frame(grouped[metric])
    if "metric_macro_f1" in extra:
        f1 = _stats_frame(grouped["metric_macro_f1"])
        out["macro_f1_mean"], out["macro_f1_ci95"] = f1["mean"], f1["ci95"]
    if "metric_val_top1" in extra:
        out["val_top1_mean"] = grouped["metric_val_top1"].mean()
    if "train_seconds" in extra:
        out["train_seconds_mean"] = grouped["train_seconds"].mean()
    return out.reset_index()


def _stats_frame(values: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
    """`seed_stats` for every group at once (same formulas, vectorised)."""
    out = values.agg(["count", "mean"]).rename(columns={"count": "n_seeds"})
    out["std"] = values.std(ddof=1)
    n = out["n_seeds"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(n > 1, st.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
        out["ci95"] = t * out["std"] / np.sqrt(n)
    out.loc[out["n_seeds"] < 2, ["std", "ci95"]] = np.nan
    out["ci_low"], out["ci_high"] = out["mean"] - out["ci95"], out["mean"] + out["ci95"]
    return out


def rank_with_ties(stats: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Sort each group by mean (best first) and rank it, sharing a rank where intervals overlap.

    The best remaining entry opens a tie group holding every remaining entry whose interval overlaps its own;
    the group's rank is the position of its first member, shown "=k" when the group has several members.
    """
    out = []
    for _, group in stats.groupby(group_keys, dropna=False, sort=True) if group_keys else [(None, stats)]:
        group = group.sort_values(["mean", "entry"], ascending=[False, True]).copy()
        low, high = group["ci_low"].to_numpy(dtype=float), group["ci_high"].to_numpy(dtype=float)
        ranks, labels = [0] * len(group), [""] * len(group)
        remaining = list(range(len(group)))
        position = 1
        while remaining:
            lead = remaining[0]
            members = [lead] + [i for i in remaining[1:] if intervals_overlap(low[lead], high[lead], low[i], high[i])]
            for i in members:
                ranks[i] = position
                labels[i] = f"={position}" if len(members) > 1 else str(position)
            taken = set(members)
            remaining = [i for i in remaining if i not in taken]
            position += len(members)
        group.insert(0, "rank", labels)
        group.insert(1, "rank_position", ranks)
        out.append(group)
    return pd.concat(out, ignore_index=True) if out else stats.assign(rank=pd.Series(dtype=object))


# --------------------------------------------------------------------------------------------- tables


def leaderboard(
    df: pd.DataFrame,
    by: str = "dataset",
    metric: str = METRIC,
    thresholds: DataThresholds = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Ranked entries per cell (`by="dataset"`: dataset x data size) or per regime cell (`by="regime"`).

    Columns: the group keys, rank ("1", "=1", ...), rank_position, entry, backbone, pretrained, strategy,
    n_seeds, mean, std, ci95 (half width), ci_low, ci_high of `metric` (percent, as the core writes it), macro_f1_mean,
    macro_f1_ci95, val_top1_mean, train_seconds_mean, selected (the chosen hp setting), for datasets the cost of
    the entry's search (``search_cost``: trials_run, trials_stopped, compute_seconds), and for regimes
    n_cells / datasets / cells_left_out (the cells averaged per seed before the statistics: those common to
    every entry of the regime cell, see `_common_cells`), tuned_cells (those of them whose setting was
    selected among several) and the search cost summed over them.
    """
    selected = select_hparams(prepare(df, thresholds), metric, tried=df)
    if selected.empty:
        return pd.DataFrame()
    if by == "dataset":
        stats = _aggregate(selected, CELL + ["per_class"] + ENTRY, metric)
        info = selected.groupby(CELL + ["entry"], dropna=False).agg(
            selected=("selected", "first"), selection=("selection", "first"), n_settings=("n_settings", "first")
        )
        stats = stats.merge(info.reset_index(), on=CELL + ["entry"], how="left")
        stats = stats.merge(search_cost(df), on=CELL + ["entry"], how="left")
        ranked = rank_with_ties(stats, CELL)
        ranked["_size"] = ranked["per_class"].fillna(np.inf)
        ranked = ranked.sort_values(
            ["dataset", "_size", "rank_position", "mean", "entry"],
            ascending=[True, True, True, False, True],
            kind="stable",
        )
        ranked.insert(ranked.columns.get_loc("dataset") + 1, "dataset_name", ranked["dataset"].map(dataset_labels(df)))
        return ranked.drop(columns="_size").reset_index(drop=True)
    if by == "regime":
        usable = _common_cells(selected[selected["similarity_regime"].notna() & selected["data_regime"].notna()])
        if usable.empty:
            return pd.DataFrame()
        # Per seed, average the entry's cells inside the regime cell; then statistics over seeds.
        per_seed = usable.groupby(REGIME + ENTRY + ["seed"], dropna=False)
        pooled = (
            per_seed[[c for c in (metric, "metric_macro_f1", "metric_val_top1", "train_seconds") if c in usable]]
            .mean()
            .reset_index()
        )
        stats = _aggregate(pooled, REGIME + ENTRY, metric)
        cells = usable[REGIME + ["entry", "dataset", "data"]].drop_duplicates()
        labels = dataset_labels(df)
        cover = usable.groupby(REGIME + ["entry"]).agg(
            datasets=("dataset", lambda s: ", ".join(sorted({labels.get(d, d) for d in s}))),
            similarity_source=("similarity_source", lambda s: ", ".join(sorted(set(s.dropna())))),
            cells_left_out=("cells_left_out", "first"),
        )
        cover["n_cells"] = cells.groupby(REGIME + ["entry"]).size()
        tuned = usable[usable["n_settings"] > 1][REGIME + ["entry", "dataset", "data"]].drop_duplicates()
        cover["tuned_cells"] = tuned.groupby(REGIME + ["entry"]).size()
        cover["tuned_cells"] = cover["tuned_cells"].fillna(0).astype(int)
        cost = cells.merge(search_cost(df), on=CELL + ["entry"], how="left")
        cover = cover.join(cost.groupby(REGIME + ["entry"])[["trials_run", "trials_stopped", "compute_seconds"]].sum())
        stats = stats.merge(cover.reset_index(), on=REGIME + ["entry"], how="left")
        ranked = rank_with_ties(stats, REGIME)
        order = {r: i for i, r in enumerate(SIMILARITY_REGIMES + DATA_REGIMES)}
        ranked["_s"], ranked["_d"] = ranked["similarity_regime"].map(order), ranked["data_regime"].map(order)
        ranked = ranked.sort_values(
            ["_s", "_d", "rank_position", "mean", "entry"], ascending=[True, True, True, False, True], kind="stable"
        )
        return ranked.drop(columns=["_s", "_d"]).reset_index(drop=True)
    raise UserError(f"--by: expected 'dataset' or 'regime', got {by!r}")


def _common_cells(selected: pd.DataFrame) -> pd.DataFrame:
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


def overall_ranking(
    df: pd.DataFrame, metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Entries across datasets: mean rank and mean accuracy in logit space (Kornblith et al. 2019).

    Each cell ranks its entries by mean (average ranks for equal means); an entry's rank on a dataset is the
    mean over that dataset's cells, and its overall rank the mean over datasets, so every dataset weighs the
    same whatever its number of data sizes. Likewise for logit(top-1); `logit_mean` maps the mean logit back
    to an accuracy (percent). Entries absent from some cells are ranked on the cells they have (see n_cells).
    """
    board = leaderboard(df, by="dataset", metric=metric, thresholds=thresholds)
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


def regime_matrix(
    df: pd.DataFrame, metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """The measured regime matrix (``measured_matrix``), stating for each cell whether its verdict was reached
    with tuned or fixed hyperparameters. Where the rows hold both runs that searched or swept hyperparameters
    and runs at fixed ones, the matrix is the tuned runs', and fixed_verdict / fixed_best_entry /
    verdict_changed say what the fixed runs concluded and whether tuning changed the verdict."""
    tuned = tuned_runs(df)
    fixed_runs = set().union(*run_membership(df)) - tuned
    if not tuned or not fixed_runs:
        return measured_matrix(df, metric, thresholds)
    matrix = measured_matrix(of_runs(df, tuned), metric, thresholds)
    fixed = measured_matrix(of_runs(df, fixed_runs), metric, thresholds)
    matrix["fixed_verdict"] = fixed["verdict"].to_numpy()
    matrix["fixed_best_entry"] = fixed.get("best_entry", pd.Series([None] * len(fixed))).to_numpy()
    measured = (matrix["verdict"] != "not measured") & (matrix["fixed_verdict"] != "not measured")
    matrix["verdict_changed"] = np.where(measured, matrix["verdict"] != matrix["fixed_verdict"], None)
    return matrix


def run_membership(df: pd.DataFrame) -> pd.Series:
    """The runs each row belongs to, as a tuple: ``runs`` (``load_runs``: a trial present in several runs
    belongs to each), else ``run_id``, else ``run_dir``; rows with none of them are one run named ""."""
    if "runs" in df:
        return df["runs"].map(lambda runs: tuple(runs) if isinstance(runs, (tuple, list)) and len(runs) else ("",))
    for column in ("run_id", "run_dir"):
        if column in df and df[column].notna().any():
            return df[column].map(lambda run: ("" if pd.isna(run) else str(run),))
    return pd.Series([("",)] * len(df), index=df.index, dtype=object)


def of_runs(df: pd.DataFrame, runs: set[str]) -> pd.DataFrame:
    """The rows that belong to one of ``runs`` (see ``run_membership``)."""
    return df[[bool(set(member) & runs) for member in run_membership(df)]]


def tuned_runs(df: pd.DataFrame) -> set[str]:
    """The runs (see ``run_membership``) in which some (cell, entry, seed) ran more than one hyperparameter
    setting: a search or a sweep."""
    rows = _labelled(df[df["status"].isin(("ok", "stopped", "diverged"))].copy())
    hp_cols = sorted(c for c in rows.columns if c.startswith("hp_") and c not in _SCHEDULE_COLUMNS)
    if rows.empty or not hp_cols:
        return set()
    rows["_hp"] = _setting_key(rows, hp_cols)
    rows = rows.assign(_run=run_membership(rows)).explode("_run")
    settings = rows.groupby(["_run", *CELL, "entry", "seed"], dropna=False)["_hp"].nunique()
    return {run for (run, *_), n in settings.items() if n > 1}


def measured_matrix(
    df: pd.DataFrame, metric: str = METRIC, thresholds: DataThresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """The measured 2x3 matrix beside the textbook one: one row per (similarity regime, data regime).

    best_*: the best entry of the cell; runner_up_*: the best entry of a different strategy (pretrained vs
    scratch counts as different); margin = best mean - runner-up mean. Verdict rule:
    - cells with advice (high: linear probe; low + sufficient: full or lp_ft): compare the best entry that
      follows the advice with the best one that does not. Intervals overlap (or either has one seed): "no clear
      winner"; the advised one higher: "agrees"; lower: "disagrees".
    - low + scarce/limited ("no safe recipe"): "agrees" when the best and the runner-up overlap (no strategy
      is reliably better, as the textbook expects), "disagrees" when the best clearly beats the runner-up (a
      recipe exists here), "no clear winner" when one seed leaves no interval.
    A cell with no trial has verdict "not measured". similarity_source says whether the similarity regime was
    measured or taken from the declared dataset group (natural = high, others = low). hyperparameters: "tuned"
    where every cell of the best and the runner-up entries selected its setting among several on validation,
    "fixed" where none did, "partly tuned" otherwise; trials_run / trials_stopped / compute_seconds: what every
    entry of the regime cell cost, its search included.
    """
    board = leaderboard(df, by="regime", metric=metric, thresholds=thresholds)
    rows = []
    for sim in SIMILARITY_REGIMES:
        for data in DATA_REGIMES:
            advice, advised = textbook_advice(sim, data)
            cell = (
                board[(board["similarity_regime"] == sim) & (board["data_regime"] == data)]
                if not board.empty
                else board
            )
            row: dict[str, object] = {"similarity_regime": sim, "data_regime": data, "advice": advice}
            if cell.empty:
                rows.append({**row, "verdict": "not measured", "reason": "no trial in this cell"})
                continue
            cell = cell.sort_values(["mean", "entry"], ascending=[False, True])
            key = cell["strategy"] + np.where(cell["pretrained"].astype(bool), "", " (scratch)")
            best = cell.iloc[0]
            others = cell[key != key.iloc[0]]
            runner = others.iloc[0] if not others.empty else None
            row.update(
                best_entry=best["entry"],
                best_strategy=key.iloc[0],
                mean=best["mean"],
                ci95=best["ci95"],
                ci_low=best["ci_low"],
                ci_high=best["ci_high"],
                n_seeds=best["n_seeds"],
                runner_up_entry=None if runner is None else runner["entry"],
                runner_up_strategy=None if runner is None else key.loc[runner.name],
                runner_up_mean=np.nan if runner is None else runner["mean"],
                margin=np.nan if runner is None else best["mean"] - runner["mean"],
                datasets=", ".join(sorted(set(", ".join(cell["datasets"]).split(", ")))),
                similarity_source=", ".join(sorted(set(", ".join(cell["similarity_source"]).split(", ")) - {""})),
                hyperparameters=_tuning(cell.iloc[[0]] if runner is None else cell.loc[[best.name, runner.name]]),
                trials_run=int(cell["trials_run"].sum()),
                trials_stopped=int(cell["trials_stopped"].sum()),
                compute_seconds=float(cell["compute_seconds"].sum()),
            )
            row["verdict"], row["reason"] = _verdict(cell, key, advised)
            rows.append(row)
    return pd.DataFrame(rows)


def _tuning(entries: pd.DataFrame) -> str:
    if (entries["tuned_cells"] == entries["n_cells"]).all():
        return "tuned"
    return "fixed" if (entries["tuned_cells"] == 0).all() else "partly tuned"


def _verdict(cell: pd.DataFrame, key: pd.Series, advised: set[str] | None) -> tuple[str, str]:
    def separated(a: pd.Series, b: pd.Series) -> bool | None:
        if a["n_seeds"] < 2 or b["n_seeds"] < 2:
            return None
        return not intervals_overlap(a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"])

    pretrained = cell["pretrained"].astype(bool)
    if advised is None:
        best = cell.iloc[0]
        others = cell[key != key.iloc[0]]
        if others.empty:
            return "no clear winner", "only one strategy measured"
        sep = separated(best, others.iloc[0])
        if sep is None:
            return "no clear winner", "fewer than 2 seeds: no interval"
        if sep:
            return "disagrees", f"{key.iloc[0]} beats {key.loc[others.index[0]]} beyond the 95% intervals"
        return "agrees", f"{key.iloc[0]} and {key.loc[others.index[0]]} overlap: no strategy reliably better"
    follows = cell["strategy"].isin(advised) & pretrained
    if not follows.any():
        return "no clear winner", "the advised strategy was not measured"
    if follows.all():
        return "agrees", "only the advised strategy was measured"
    a, b = cell[follows].iloc[0], cell[~follows].iloc[0]
    sep = separated(a, b)
    if sep is None:
        return "no clear winner", "fewer than 2 seeds: no interval"
    if not sep:
        return "no clear winner", f"{key.loc[a.name]} and {key.loc[b.name]} overlap"
    if a["mean"] > b["mean"]:
        return "agrees", f"{key.loc[a.name]} beats {key.loc[b.name]} beyond the 95% intervals"
    return "disagrees", f"{key.loc[b.name]} beats {key.loc[a.name]} beyond the 95% intervals"


# --------------------------------------------------------------------------------------------- rendering


def format_table(df: pd.DataFrame, fmt: str = "md", digits: int = 4) -> str:
    """A DataFrame as a GitHub markdown table (floats to `digits` significant digits) or as CSV."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt != "md":
        raise UserError(f"--format: expected 'md' or 'csv', got {fmt!r}")
    if df.empty:
        return "_(no rows)_\n"

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows of cells under ``header`` as ``format_table`` writes a DataFrame."""
    return format_table(pd.DataFrame([list(row) for row in rows], columns=list(header))).rstrip("\n")


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text`` as dicts (for tests and scripts)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return []
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def pct(mean: float, half: float | None = None) -> str:
    """'81.2 ± 1.3' from a percentage and its interval half-width; one seed shows '81.2 (1 seed)'."""
    if mean is None or not np.isfinite(mean):
        return ""
    if half is None:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {half:.1f}" if np.isfinite(half) else f"{mean:.1f} (1 seed)"


def display_leaderboard(board: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader wants, percentages with their 95% half-widths."""
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
    searched = ("n_settings" in board and (board["n_settings"] > 1).any()) or (
        "trials_stopped" in board and (board["trials_stopped"] > 0).any()
    )
    if searched and "trials_run" in board:  # a sweep or a search: show what it cost
        out["search cost"] = [
            _cost_text(n, k, t)
            for n, k, t in zip(board["trials_run"], board["trials_stopped"], board["compute_seconds"])
        ]
    return out


def _cost_text(trials: float, stopped: float, seconds: float) -> str:
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


def display_matrix(matrix: pd.DataFrame) -> pd.DataFrame:
    out = []
    for _, r in matrix.iterrows():
        measured = r.get("verdict") != "not measured"
        out.append(
            {
                "similarity": r["similarity_regime"],
                "data": r["data_regime"],
                "best strategy": r.get("best_entry", "") if measured else "",
                "top-1 % (95% CI)": pct(r["mean"], r["ci95"]) if measured else "",
                "margin (pts)": f"{r['margin']:+.1f} vs {r['runner_up_entry']}"
                if measured and pd.notna(r.get("margin"))
                else "",
                "textbook": r["advice"],
                "verdict": r["verdict"],
                "why": r["reason"],
                "hyperparameters": r.get("hyperparameters", "") if measured else "",
            }
        )
        if "trials_run" in matrix and matrix["hyperparameters"].isin(("tuned", "partly tuned")).any():
            out[-1]["search cost"] = (
                _cost_text(r["trials_run"], r["trials_stopped"], r["compute_seconds"]) if measured else ""
            )
        if "fixed_verdict" in matrix:
            out[-1]["at fixed hyperparameters"] = (
                r["fixed_verdict"]
                if r["fixed_verdict"] == "not measured"
                else f"{r['fixed_verdict']} ({r['fixed_best_entry']})"
            )
            out[-1]["verdict changed"] = {True: "yes", False: "no"}.get(r["verdict_changed"], "")
    return pd.DataFrame(out)


def run_summary(df: pd.DataFrame) -> str:
    """Best entry per dataset and data size, as the short markdown table `bench run` prints at the end."""
    board = leaderboard(df, by="dataset")
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


def leaderboard_command(run_dirs: Sequence[str | Path], by: str = "dataset", fmt: str = "md") -> str:
    """`bench leaderboard`: the ranked table (and, in md, the overall ranking and regime matrix).

    Problems met while loading (a truncated file, a missing column) go to stderr, one line each, so CSV on
    stdout stays clean.
    """
    from bench.results.store import load_runs

    if by not in ("dataset", "regime"):
        raise UserError(f"--by: expected 'dataset' or 'regime', got {by!r}")
    if fmt not in ("md", "csv"):
        raise UserError(f"--format: expected 'md' or 'csv', got {fmt!r}")
    data = load_runs(run_dirs)
    for problem in data.problems:
        print(f"warning: {problem}", file=sys.stderr)
    board = leaderboard(data.trials, by=by)
    if fmt == "csv":
        return format_table(board, "csv")
    parts = [
        f"## Leaderboard by {by} (test top-1, mean over seeds, 95% Student-t interval; '=k' = tied)\n",
        format_table(display_leaderboard(board)),
    ]
    if by == "dataset":
        parts += [
            "\n## Overall ranking (mean rank across datasets; mean top-1 in logit space)\n",
            format_table(display_overall(overall_ranking(data.trials))),
        ]
    else:
        parts += [
            "\n## Regime matrix, measured vs textbook\n",
            format_table(display_matrix(regime_matrix(data.trials))),
        ]
    excluded = excluded_trials(data.trials)
    if not excluded.empty:
        parts.append(f"\n{len(excluded)} trial(s) failed or diverged and are left out of these statistics.\n")
    return "".join(parts)
