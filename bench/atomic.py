"""Writes that readers see whole or not at all: a temporary file beside the target, then a rename.

Every cache and bookkeeping file bench shares between processes (prepared datasets' pointers, frozen
features, similarity scores, the run folder's suite.yaml and env.json) goes through here. The Parquet result
tables add an fsync on top (`bench.results`): a finished trial's row must survive a crash, not only a race.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """``write(tmp)`` to a fresh temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
