"""Results: the schema of a result row, the Parquet tables of a run folder, and leaderboards.

``schema`` needs no pyarrow; the store's names (``load_runs``, ``RunData``, ``upsert_trials``, ...) are loaded
on first use, so the training core can build rows without importing pyarrow.
"""

from bench.results.schema import (
    DEFAULT_THRESHOLDS,
    EPOCH_COLUMNS,
    SCHEMA_VERSION,
    SIMILARITY_COLUMNS,
    STATUSES,
    TRIAL_COLUMNS,
    DataThresholds,
    trial_row,
    utc_now,
)
from bench.utils.lazy import lazy_exports

_STORE = (
    "EPOCHS_FILE",
    "TRIALS_FILE",
    "RunData",
    "find_run_dirs",
    "load_runs",
    "read_table",
    "replace_epochs",
    "upsert_trials",
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EPOCH_COLUMNS",
    "SCHEMA_VERSION",
    "SIMILARITY_COLUMNS",
    "STATUSES",
    "TRIAL_COLUMNS",
    "DataThresholds",
    "trial_row",
    "utc_now",
    *_STORE,
]

__getattr__ = lazy_exports(__name__, dict.fromkeys(_STORE, "bench.results.store"))
