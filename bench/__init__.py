"""bench: transfer-learning benchmarks for image classification, measured on Ray Tune.

One shared core (``bench.training``) runs every trial; ``bench.runner`` schedules the trials a suite file
(``bench.suite``) describes on Ray Tune; results land in Parquet (``bench.results``) and become leaderboards
and reports (``bench.report``). The public API below is loaded on first use, so ``import bench`` is cheap.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "run_trial": "bench.training.trial",
    "TrialResult": "bench.training.trial",
    "TrialConfig": "bench.config",
    "load_suite": "bench.suite",
    "run_suite": "bench.runner.tune",
    "load_runs": "bench.results.store",
    "leaderboard": "bench.results.leaderboard",
    "write_report": "bench.report.build",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
