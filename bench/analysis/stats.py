"""Statistics over seeds: means with Student-t 95% intervals, and ranks that tie where intervals overlap.

Every number a table shows is a mean over seeds with its interval, so no ranking rests on one seed's noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

LOGIT_CLIP = 1e-3  # accuracies are clipped to [0.1%, 99.9%] before the logit, so 0% or 100% stay finite


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


def aggregate(selected: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """One row per `keys` group: seed stats of `metric` plus means of the secondary columns."""
    per_seed = selected.groupby(keys + ["seed"], dropna=False, sort=True)
    extra = [c for c in ("metric_macro_f1", "metric_val_top1", "train_seconds") if c in selected and c != metric]
    seeds = per_seed[[metric] + extra].mean().reset_index()
    grouped = seeds.groupby(keys, dropna=False, sort=True)
    out = stats_frame(grouped[metric])
    if "metric_macro_f1" in extra:
        f1 = stats_frame(grouped["metric_macro_f1"])
        out["macro_f1_mean"], out["macro_f1_ci95"] = f1["mean"], f1["ci95"]
    if "metric_val_top1" in extra:
        out["val_top1_mean"] = grouped["metric_val_top1"].mean()
    if "train_seconds" in extra:
        out["train_seconds_mean"] = grouped["train_seconds"].mean()
    return out.reset_index()


def stats_frame(values: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
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
