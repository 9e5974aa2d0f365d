"""Writes that readers see whole or not at all: a temporary file beside the target, then a rename.

Every file bench shares between processes goes through here: cache and bookkeeping files (prepared datasets'
pointers, frozen features, similarity scores, the run folder's suite.yaml and env.json), and the Parquet
result tables (`bench.results.store`), which write ``durable=True``: a finished trial's row must survive a crash,
not only a race, so the file and its folder are fsynced around the rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], object], *, durable: bool = False) -> None:
    """``write(tmp)`` to a fresh temporary file beside ``path``, then rename it over ``path``; ``durable``: the
    file's bytes reach the disk before the rename, and the rename itself after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        _fsync(path.parent)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
