"""``bench --version``: bench and the versions of what it runs on, read from package metadata.

Nothing here imports torch or Ray: importlib.metadata reads the installed distributions' records, which takes
milliseconds, so ``bench --version`` answers at once and also where torch itself would fail to import.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

# The distributions bench's results depend on, in the order they are printed.
STACK = ("torch", "torchvision", "timm", "ray")


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def version_text() -> str:
    """Two lines: bench's version, where it is imported from and the Python; then torch, torchvision, timm, Ray.

    bench's version is ``bench.__version__`` of the code that runs (pyproject.toml reads the same attribute), so a
    stale install's metadata cannot misreport it.
    """
    import bench

    where = Path(bench.__file__).resolve().parent
    stack = ", ".join(f"{name} {installed_version(name) or 'not installed'}" for name in STACK)
    return f"bench {bench.__version__} from {where} (Python {platform.python_version()})\n{stack}"
