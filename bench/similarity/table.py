"""`bench similarity SUITE`: the similarity and transferability table of a suite, without training anything.

One row per (backbone, weights, dataset, image size) of the suite (a scratch backbone is measured with its
pretrained twin's weights, as its trials are), computed by the same ``bench.training.trial.measure_similarity`` the
trials call and cached in the same place (``<cache>/similarity/``), so a later ``bench run`` with the same
cache folder reuses every number.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.suite import Suite

COLUMNS = (
    "dataset",
    "backbone",
    "img_size",
    "similarity_score",
    "similarity_regime",
    "bn_divergence",
    "transferability",
    "leep",
    "nce",
    "h_score",
    "max_softmax",
    "energy",
    "seconds",
    "error",
)


def similarity_table(suite: Suite, *, cache_dir: Path | None) -> pd.DataFrame:
    """Measure every (backbone, dataset) pair of ``suite``; a dataset that cannot be loaded gets an error row."""
    from bench import training  # torch and timm: only once the suite is known to be valid

    rows, seen = [], set()
    for trial in suite.trials():
        pair = (trial.backbone, trial.weights, trial.dataset, trial.dataset_root, trial.img_size)
        if pair in seen:
            continue
        seen.add(pair)
        config = dataclasses.replace(trial, cache_dir=str(cache_dir) if cache_dir else None, similarity=True)
        tic = time.perf_counter()
        row = {"dataset": trial.dataset, "backbone": trial.backbone, "img_size": trial.img_size}
        try:
            data = training.load_dataset(config)
            row.update(training.measure_similarity(config, data))
        except UserError as error:
            row["error"] = str(error)
        row["seconds"] = round(time.perf_counter() - tic, 1)
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(COLUMNS))


def format_similarity_table(table: pd.DataFrame, fmt: str = "md") -> str:
    from bench.utils.tables import format_table

    if fmt == "md" and table["error"].isna().all():
        table = table.drop(columns="error")
    return format_table(table, fmt)
