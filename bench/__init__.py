"""bench: transfer-learning benchmarks for image classification, measured on Ray Tune.

One shared core (``bench.training``) runs every trial; ``bench.runner`` schedules the trials a suite file
(``bench.suite``) describes on Ray Tune; results land in Parquet (``bench.results``), are analysed once
(``bench.analysis``) and become leaderboards and reports (``bench.report``). The public API below is loaded on
first use, so ``import bench`` is cheap.
"""

from bench.utils.lazy import lazy_exports

__version__ = "0.1.0"

_API = {
    "run_trial": "bench.training.trial",
    "TrialResult": "bench.training.trial",
    "TrialConfig": "bench.config",
    "load_suite": "bench.suite",
    "run_suite": "bench.runner.tune",
    "load_runs": "bench.results.store",
    "leaderboard": "bench.results.leaderboard",
    "Analysis": "bench.analysis",
    "write_report": "bench.report.build",
}
__all__ = ["__version__", *_API]
__getattr__ = lazy_exports(__name__, _API)
