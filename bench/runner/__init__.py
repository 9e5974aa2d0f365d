"""Running a suite: Ray Tune (the only place Ray is imported), run folders and their lock, memory.

``run_suite`` is loaded on first use, so importing ``bench.runner.run_dir`` does not import Ray.
"""

from typing import Any

__all__ = ["RunSummary", "run_suite"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bench.runner import tune

        return getattr(tune, name)
    raise AttributeError(f"module 'bench.runner' has no attribute {name!r}")
