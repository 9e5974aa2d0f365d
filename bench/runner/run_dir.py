"""Run folders: where a run lives, who may write it, and what it records about its environment.

``<out>/<suite name>/<run id>/`` holds ``suite.yaml`` (resolved), ``env.json``, ``trials.parquet`` and
``epochs.parquet``. A run id is a UTC timestamp, so folders sort by start time and ``--resume`` picks the newest.
A lock file stops two ``bench run`` processes from writing one folder at once.

``--out`` may also be a URI (``s3://bucket/prefix``, any ``pyarrow.fs`` URI; ``bench.results.remote``): ``open_run``
then gives the runner a local staging folder named after the run id, downloads the run's files into it on
``--resume``, holds a ``LeaseLock`` on the remote run folder instead of the ``flock``, and ``sync`` uploads each
file the runner has just written as one object. The dataset and feature caches stay local (``DEFAULT_URI_CACHE``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import yaml

import bench
from bench.errors import UserError
from bench.results import remote
from bench.results.schema import utc_now
from bench.utils.atomic import atomic_write_text

LOCK_FILE = ".lock"
DEFAULT_URI_CACHE = Path(".bench_cache")  # a URI --out: datasets and features stay in ./.bench_cache
PACKAGES = ("torch", "torchvision", "timm", "ray", "numpy", "pandas", "pyarrow", "scikit-learn", "pydantic")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def suite_folder(out: Path, suite_name: str) -> Path:
    folder = (out / suite_name).resolve()
    if out.resolve() not in folder.parents:  # suite names are validated; this is the last line of defence
        raise UserError(f"suite name '{suite_name}' would write outside '{out}'")
    return folder


def latest_run(out: Path, suite_name: str) -> Path | None:
    folder = suite_folder(out, suite_name)
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    return runs[-1] if runs else None


def create_run_dir(out: Path, suite_name: str) -> Path:
    folder = suite_folder(out, suite_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output folder '{folder}': {error.strerror}") from None
    run_id = new_run_id()
    run_dir = folder / run_id
    suffix = 1
    while run_dir.exists():  # two runs started within one second
        run_dir = folder / f"{run_id}-{suffix}"
        suffix += 1
    run_dir.mkdir()
    return run_dir


@dataclass(frozen=True)
class OpenRun:
    """A run folder opened for writing: ``path`` is where the runner writes (the run folder itself, or the local
    staging copy of a remote one; its name is the run id), ``location`` how the user names the run folder (a
    path or a URI), ``cache`` the default dataset and feature cache."""

    path: Path
    location: str
    cache: Path


_MIRRORS: dict[Path, tuple[remote.Remote, remote.LeaseLock]] = {}  # staging folder -> remote run folder, lock


@contextlib.contextmanager
def open_run(out: str | Path, suite_name: str, *, resume: bool) -> Iterator[OpenRun]:
    """Open a new run of ``suite_name`` under ``out`` (or, with ``resume``, its newest run) and hold its lock.

    ``out`` a local path: the run folder, locked with ``RunLock``. ``out`` a URI: a local staging folder mirrored
    to ``<out>/<suite>/<run id>/`` (``sync``), locked with ``remote.LeaseLock``; a bad URI, a missing bucket or
    refused credentials are a ``UserError`` before anything runs. The staging folder is removed on exit.
    """
    if not remote.is_uri(str(out)):
        out = Path(out)
        if resume:
            found = latest_run(out, suite_name)
            if found is None:
                raise UserError(f"nothing to resume: no run of suite '{suite_name}' under '{out}'")
            run_dir = found
        else:
            run_dir = create_run_dir(out, suite_name)
        with RunLock(run_dir):
            yield OpenRun(run_dir, str(run_dir), out / ".cache")
        return
    root = remote.resolve(str(out))
    folder = root.child(suite_name)
    try:
        existing = [name for name in remote.list_folders(folder) if not name.startswith(".")]
    except OSError as error:
        raise UserError(f"cannot read '{folder.uri}': {remote.describe(error)}") from None
    if resume:
        if not existing:
            raise UserError(f"nothing to resume: no run of suite '{suite_name}' under '{root.uri}'")
        run_id = existing[-1]
    else:
        run_id = candidate = new_run_id()
        suffix = 1
        while run_id in existing:  # two runs started within one second
            run_id = f"{candidate}-{suffix}"
            suffix += 1
    target = folder.child(run_id)
    scratch = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    staging = scratch / run_id
    staging.mkdir()
    try:
        with remote.LeaseLock(target) as lock:
            if resume:
                try:
                    remote.download(target, staging)
                except OSError as error:
                    raise UserError(f"cannot read '{target.uri}': {remote.describe(error)}") from None
            _MIRRORS[staging] = (target, lock)
            try:
                yield OpenRun(staging, target.uri, DEFAULT_URI_CACHE.resolve())
            finally:
                _MIRRORS.pop(staging, None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sync(run_dir: Path, *names: str) -> None:
    """Upload the files ``names`` of a staged run folder, in order, each as one object; a no-op for a local run.

    Raises ``OSError`` naming the object when an upload fails or the run's lease has run out; what was uploaded
    before stays.
    """
    mirror = _MIRRORS.get(run_dir)
    if mirror is None:
        return
    target, lock = mirror
    for name in names:
        if (run_dir / name).exists():
            lock.check()
            remote.upload(run_dir / name, target.child(name))


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.lock``; released when the process dies."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(
                f"run folder '{self.path.parent}' is in use by another bench run "
                f"(lock {self.path}); wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def write_suite(run_dir: Path, resolved: dict[str, Any]) -> None:
    """Save the resolved suite; on resume the file already exists and must describe the same suite."""
    path = run_dir / "suite.yaml"
    text = yaml.safe_dump(resolved, sort_keys=False)
    if path.exists():
        if yaml.safe_load(path.read_text()) != yaml.safe_load(text):
            raise UserError(
                f"cannot resume '{run_dir}': the suite has changed since that run started "
                f"(compare {path}); start a new run without --resume"
            )
        return
    atomic_write_text(text, path)
    sync(run_dir, path.name)


def write_env(run_dir: Path, cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, hardware and git sha of the driver; appended to ``env.json`` as a list (one per session)."""
    import torch  # here, not at import time: the driver needs torch for nothing else

    env = {
        "started_at": utc_now(),
        "bench_version": bench.__version__,
        "git_sha": _git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "packages": {name: _version(name) for name in PACKAGES},
        "cluster": cluster or {},
        "argv": sys.argv,
    }
    path = run_dir / "env.json"
    sessions = []
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            sessions = loaded if isinstance(loaded, list) else [loaded]
        except (json.JSONDecodeError, OSError):
            sessions = []
    atomic_write_text(json.dumps(sessions + [env], indent=2), path)
    sync(run_dir, path.name)
    return env


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(bench.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
