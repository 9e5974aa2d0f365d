"""Running a suite: Ray Tune (the only place Ray is imported), run folders and their lock.

``run_suite`` is loaded on first use, so importing ``bench.runner.run_dir`` does not import Ray.
"""

from bench.utils.lazy import lazy_exports

__all__ = ["RunSummary", "run_suite"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "bench.runner.tune"))
