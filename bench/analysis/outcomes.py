"""The report's outcome analyses: what pretraining buys, the freeze-depth profile, sensitivity to the learning
rate, and whether transferability estimates computed before training rank backbones as training does.
"""

from __future__ import annotations

import pandas as pd
from scipy import stats as st

from bench.analysis.cells import CELL
from bench.analysis.paired import seed_variance
from bench.analysis.stats import seed_stats
from bench.results.schema import DataThresholds

# Estimates computed before training (bench.similarity.scores); `transferability` is LogME.
ESTIMATES = ("similarity_score", "transferability", "leep", "nce", "h_score")


def pretraining_gain(selected: pd.DataFrame) -> pd.DataFrame:
    """Pretrained minus scratch test top-1 per (cell, backbone, strategy), paired by seed (same data subset)."""
    if selected.empty or selected["pretrained"].nunique() < 2:
        return pd.DataFrame()
    keys = CELL + ["per_class", "backbone", "strategy", "seed"]
    per_seed = selected.groupby(keys + ["pretrained"], dropna=False)["metric_top1"].mean().unstack("pretrained")
    if True not in per_seed or False not in per_seed:
        return pd.DataFrame()
    diff = (per_seed[True] - per_seed[False]).dropna().rename("gain").reset_index()
    rows = []
    for key, group in diff.groupby(keys[:-1], dropna=False):
        rows.append({**dict(zip(keys[:-1], key)), **seed_stats(group["gain"])})
    return pd.DataFrame(rows)


def freeze_profile(board: pd.DataFrame, selected: pd.DataFrame, thresholds: DataThresholds) -> pd.DataFrame:
    """Pretrained entries without lp_ft, with their frozen share (frozen_param_fraction, else freeze depth)."""
    frozen_source = (
        "frozen_param_fraction"
        if selected.get("frozen_param_fraction", pd.Series(dtype=float)).notna().any()
        else "freeze"
    )
    if frozen_source not in selected:
        return pd.DataFrame()
    frozen = (
        selected.assign(_f=pd.to_numeric(selected[frozen_source], errors="coerce"))
        .groupby(CELL + ["entry"])["_f"]
        .mean()
        .rename("frozen")
        .reset_index()
    )
    profile = board[board["pretrained"].astype(bool) & (board["strategy"] != "lp_ft")].merge(
        frozen, on=CELL + ["entry"]
    )
    profile = profile[profile["frozen"].notna()]
    profile["size_label"] = [
        f"{d} ({thresholds.regime(p) or 'size unknown'})" for d, p in zip(profile["data"], profile["per_class"])
    ]
    return profile


def hyperparameter_sensitivity(prepared: pd.DataFrame) -> pd.DataFrame:
    """Mean validation and test top-1 per (dataset, strategy, learning rate), over seeds, data sizes and
    backbones: how much a strategy's result depends on its learning rate."""
    if prepared.empty or "hp_lr" not in prepared:
        return pd.DataFrame()
    rows = prepared.assign(hp_lr=pd.to_numeric(prepared["hp_lr"], errors="coerce")).dropna(subset=["hp_lr"])
    points = rows.groupby(["dataset", "strategy", "hp_lr"]).agg(
        val_top1=("metric_val_top1", "mean"), test_top1=("metric_top1", "mean"), trials=("trial_id", "size")
    )
    return points.reset_index()


def transferability_points(prepared: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone) at the dataset's largest data size: the estimates and the measured outcomes."""
    measured = [c for c in ESTIMATES if c in prepared and prepared[c].notna().any()]
    if not measured or selected.empty:
        return pd.DataFrame()
    pretrained = selected[selected["pretrained"].astype(bool)]
    largest = pretrained[pretrained["per_class"] == pretrained.groupby("dataset")["per_class"].transform("max")]
    cell = largest.groupby(["dataset", "backbone", "entry", "strategy"])["metric_top1"].mean().reset_index()
    best = cell.groupby(["dataset", "backbone"])["metric_top1"].max().rename("best_top1")
    probe = (
        cell[cell["strategy"] == "linear_probe"]
        .groupby(["dataset", "backbone"])["metric_top1"]
        .max()
        .rename("probe_top1")
    )
    estimates = prepared.groupby(["dataset", "backbone"])[measured].mean()
    points = estimates.join(best, how="inner").join(probe, how="left")
    gains = pretraining_gain(selected)
    if not gains.empty:
        top = gains[gains["per_class"] == gains.groupby("dataset")["per_class"].transform("max")]
        points = points.join(top.groupby(["dataset", "backbone"])["mean"].max().rename("pretraining_gain"), how="left")
    return points.reset_index()


def rank_correlations(points: pd.DataFrame) -> pd.DataFrame:
    """Kendall tau (with its p) and Spearman rho of each estimate against each outcome, per dataset (>= 3
    backbones) and pooled: the question the transferability literature asks (does the estimate rank the
    backbones as training does?). Kendall's tau-b handles ties and reads as (concordant - discordant) pairs."""
    pairs = [
        (estimate, outcome)
        for estimate in ("transferability", "leep", "nce", "h_score")
        for outcome in ("probe_top1", "best_top1")
    ]
    pairs += [("similarity_score", "best_top1"), ("similarity_score", "pretraining_gain")]
    rows = []
    for estimate, outcome in pairs:
        if estimate not in points or outcome not in points:
            continue
        for scope, group in [("all (dataset, backbone) pairs", points)] + list(points.groupby("dataset")):
            usable = group[[estimate, outcome]].dropna()
            if len(usable) < 3 or usable[estimate].nunique() < 2 or usable[outcome].nunique() < 2:
                continue
            tau, p = st.kendalltau(usable[estimate], usable[outcome])
            rho = st.spearmanr(usable[estimate], usable[outcome]).statistic
            rows.append(
                {
                    "estimate": estimate,
                    "outcome": outcome,
                    "scope": scope,
                    "n": len(usable),
                    "kendall tau": round(float(tau), 3),
                    "p": round(float(p), 4),
                    "spearman rho": round(float(rho), 3),
                }
            )
    return pd.DataFrame(rows)


def seed_variance_table(selected: pd.DataFrame, metric: str = "metric_top1") -> pd.DataFrame:
    """Per (cell, entry) whose selected rows cross two or more data seeds (``data_seed``, the seed that draws the
    training subset) with two or more training seeds (``seed``): how much of the metric's variance comes from which
    data was drawn and how much from the training seed (``bench.analysis.paired.seed_variance``). Columns: the
    cell and entry, n_data_seeds, n_train_seeds, total (variance), share_data, share_train, share_residual, note.
    Empty when no cell crosses the two seeds."""
    if selected.empty or "data_seed" not in selected:
        return pd.DataFrame()
    rows = []
    for key, group in selected.groupby(CELL + ["entry"], sort=True):
        if group["data_seed"].nunique() < 2 or group["seed"].nunique() < 2:
            continue
        if (group["data_seed"] == group["seed"]).all():
            continue  # the two seeds move together: nothing to separate
        split = seed_variance(group, metric, data_seed="data_seed", train_seed="seed")
        rows.append(
            {
                **dict(zip(CELL + ["entry"], key)),
                "n_data_seeds": split.n_data_seeds,
                "n_train_seeds": split.n_train_seeds,
                "total": split.total,
                "share_data": split.share_data,
                "share_train": split.share_train,
                "share_residual": split.share_residual,
                "note": split.note,
            }
        )
    return pd.DataFrame(rows)
