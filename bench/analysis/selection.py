"""Hyperparameter selection on validation, and what each search cost.

Where a suite swept or searched a hyperparameter, each (cell, entry) keeps the setting with the best mean
validation top-1 (`select_hparams`); the test metric never takes part. `search_cost` counts every trial behind an
entry, stopped samples included, and `tuned_runs` names the runs that searched.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.cells import CELL, METRIC, column, labelled, run_membership

SCHEDULE_COLUMNS = ("hp_total_steps",)  # derived from the data and the budget (unset on a stopped row): not a setting


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
    rows["_hp_key"] = setting_key(rows, hp_cols)
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
    label_cols = [c for c in hp_cols if c not in SCHEDULE_COLUMNS]
    attempts = rows
    if tried is not None and not tried.empty:
        attempts = attempted(tried)
        attempts = attempts[[c for c in group_keys + label_cols if c in attempts]].reindex(
            columns=group_keys + label_cols
        )
    attempts = attempts.assign(_label_key=setting_key(attempts, label_cols))
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
        chosen_values = best[group_keys + ["_hp_key"]].merge(values, on=group_keys + ["_hp_key"], how="left")
        chosen_values = chosen_values.merge(n_values.reset_index(), on=group_keys, how="left")
        parts = [
            np.where(chosen_values[f"_n_{c}"].fillna(1) > 1, [f"{c}={_fmt_value(v)}" for v in chosen_values[c]], "")
            for c in label_cols
        ]
        best["selected"] = [", ".join(p for p in row if p) for row in zip(*parts)]
    else:
        best["selected"] = ""
    chosen = rows.merge(
        best[group_keys + ["_hp_key", "n_settings", "selection", "selected"]], on=group_keys + ["_hp_key"]
    )
    return chosen.drop(columns="_hp_key").reset_index(drop=True)


def attempted(trials: pd.DataFrame) -> pd.DataFrame:
    """The samples a search tried (status ok, stopped or diverged; failed rows tried nothing), labelled with
    strategy, entry and data like ``prepare``'s rows."""
    return labelled(trials[trials["status"].isin(("ok", "stopped", "diverged"))].copy())


def search_cost(df: pd.DataFrame) -> pd.DataFrame:
    """What each (dataset, data size, entry) cost, every trial counted whatever its status: trials_run,
    trials_stopped (ended early by a search's scheduler) and compute_seconds (their training seconds summed)."""
    rows = labelled(df.copy())
    rows["_stopped"] = rows["status"] == "stopped"
    rows["_seconds"] = pd.to_numeric(column(rows, "train_seconds", None), errors="coerce").fillna(0.0)
    cost = rows.groupby(CELL + ["entry"], dropna=False).agg(
        trials_run=("trial_id", "size"), trials_stopped=("_stopped", "sum"), compute_seconds=("_seconds", "sum")
    )
    return cost.reset_index()


def tuned_runs(df: pd.DataFrame) -> set[str]:
    """The runs (see ``run_membership``) in which some (cell, entry, seed) ran more than one hyperparameter
    setting: a search or a sweep."""
    rows = attempted(df)
    hp_cols = sorted(c for c in rows.columns if c.startswith("hp_") and c not in SCHEDULE_COLUMNS)
    if rows.empty or not hp_cols:
        return set()
    rows["_hp"] = setting_key(rows, hp_cols)
    rows = rows.assign(_run=run_membership(rows)).explode("_run")
    settings = rows.groupby(["_run", *CELL, "entry", "seed"], dropna=False)["_hp"].nunique()
    return {run for (run, *_), n in settings.items() if n > 1}


def _hp_text(rows: pd.DataFrame, hp_cols: list[str]) -> pd.DataFrame:
    """``rows[hp_cols]`` as text, a missing value as ""."""
    return rows[hp_cols].astype(object).where(rows[hp_cols].notna(), "").astype(str)


def setting_key(rows: pd.DataFrame, hp_cols: list[str]) -> pd.Series:
    """One string per row naming its combination of ``hp_cols`` (missing values included)."""
    if not hp_cols:
        return pd.Series("", index=rows.index)
    return _hp_text(rows, hp_cols).agg("|".join, axis=1)


def _fmt_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
