"""Cells and labels: which rows count, and the names every table groups by.

`prepare` keeps the rows usable for statistics and adds the derived columns (strategy, entry, data size label,
images per class, data and similarity regimes); the rest names datasets for display and says which runs a row
belongs to. Vocabulary (docs/design.md, "Vocabulary"): an *entry* is (backbone, pretrained, strategy), a *cell*
(dataset, data size), a *regime cell* (similarity regime, data regime).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.errors import UserError
from bench.results.schema import DEFAULT_THRESHOLDS, DataThresholds

METRIC = "metric_top1"
CELL = ["dataset", "data"]
ENTRY = ["entry", "backbone", "pretrained", "strategy"]
REGIME = ["similarity_regime", "data_regime"]
SIMILARITY_REGIMES = ("high", "low")
DATA_REGIMES = ("scarce", "limited", "sufficient")
DECLARED_SIMILARITY = {"natural": "high", "specialized": "low", "structured": "low"}


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
    rows = labelled(rows)

    per_class = pd.to_numeric(column(rows, "n_train", None), errors="coerce") / pd.to_numeric(
        column(rows, "n_classes", None), errors="coerce"
    )
    shots = pd.to_numeric(column(rows, "shots", None), errors="coerce")
    rows["per_class"] = per_class.fillna(shots).groupby([rows["dataset"], rows["data"]]).transform("median")
    recomputed = rows["per_class"].map(thresholds.regime)
    rows["data_regime"] = recomputed.where(recomputed.notna(), column(rows, "data_regime", None))

    declared = column(rows, "dataset_group", None).map(DECLARED_SIMILARITY)
    measured = column(rows, "similarity_regime", None)
    measured = measured.where(measured.isin(SIMILARITY_REGIMES))
    rows["similarity_source"] = np.where(measured.notna(), "measured", np.where(declared.notna(), "declared", None))
    rows["similarity_regime"] = measured.where(measured.notna(), declared)
    for metric in ("metric_top1", "metric_macro_f1", "metric_val_top1", "train_seconds"):
        if metric in rows:
            rows[metric] = pd.to_numeric(rows[metric], errors="coerce")
    return rows.reset_index(drop=True)


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with pretrained, strategy, entry and data (the cell's size label) filled in."""
    rows["pretrained"] = column(rows, "pretrained", True).map(lambda v: True if v is None or pd.isna(v) else bool(v))
    rows["strategy"] = [
        _strategy_label(s, f) for s, f in zip(column(rows, "strategy", None), column(rows, "freeze", None))
    ]
    rows["entry"] = [
        f"{b}{'' if p else ' scratch'} / {s}" for b, p, s in zip(rows["backbone"], rows["pretrained"], rows["strategy"])
    ]
    rows["data"] = [_size_label(f, s) for f, s in zip(column(rows, "data_fraction", None), column(rows, "shots", None))]
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


def column(df: pd.DataFrame, name: str, default: object) -> pd.Series:
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
