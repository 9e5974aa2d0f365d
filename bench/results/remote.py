"""Run folders in object storage: ``--out s3://bucket/prefix`` (or ``gs://``, ``file://``, any ``pyarrow.fs`` URI).

A URI is resolved with ``pyarrow.fs.FileSystem.from_uri``; credentials and endpoints come the way the store's own
tools take them (for S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, ``AWS_ENDPOINT_URL``, or the
URI's query, e.g. ``?endpoint_override=host:9000&scheme=http``). Messages name a URI without its query or
credentials.

Writing (``bench.runner.run_dir.open_run``): the run folder is a local staging copy that the runner writes as
before; ``upload`` then sends each changed file as one whole object (an object store makes a PUT, or a completed
multipart upload, visible whole or not at all), so a reader never sees half a table. ``LeaseLock`` keeps a second
``bench run`` out of the run folder: each writer puts its own ``<run>/.leases/<token>`` object, refreshed while it
runs, and goes on only if no other lock object was refreshed within the lease (``BENCH_LOCK_LEASE_S``, default
60 s, measured on the store's clock). Reading: ``download_runs`` copies the run folders' tables under a URI to a
local folder for ``bench.results.store.load_runs``.

Errors: a bad URI, a missing bucket, refused credentials or an unreachable store at the start are a ``UserError``
(exit 2, nothing has run); an upload that fails mid-run is an ``OSError`` naming the object (the runner turns it
into exit 3, with every row uploaded before it kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from bench.errors import UserError

LOCK_FOLDER = ".leases"  # not ".lock": that is the flock file of a plain-path run
RUN_FILES = ("suite.yaml", "env.json", "trials.parquet", "epochs.parquet")  # what a run folder is made of
DEFAULT_LEASE_S = 60.0
CHUNK = 8 * 2**20  # bytes per read or write while a file streams to or from a store
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``file://``, ...); a plain path is not a URI."""
    return isinstance(location, str) and bool(_URI.match(location))


@dataclass(frozen=True)
class Remote:
    """A path in a ``pyarrow.fs`` file system: ``path`` as the file system names it, ``uri`` for people."""

    fs: pafs.FileSystem
    path: str
    scheme: str

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.path}"

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *names: str) -> Remote:
        return Remote(self.fs, "/".join([self.path.rstrip("/"), *names]), self.scheme)

    def __str__(self) -> str:
        return self.uri


def resolve(uri: str) -> Remote:
    """The file system and path of ``uri``, checked: its bucket exists and the credentials are accepted.

    A bad URI, a missing bucket, refused credentials or an unreachable endpoint: one-line ``UserError``.
    """
    scheme = uri.split("://", 1)[0].lower()
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as error:
        raise UserError(f"cannot use '{uri}': {describe(error)}") from None
    remote = Remote(fs, path.rstrip("/") or path, "file" if isinstance(fs, pafs.LocalFileSystem) else scheme)
    if remote.local:
        return remote
    bucket = remote.path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"cannot use '{remote.uri}': the bucket '{bucket}' does not exist (create it first)")
        fs.get_file_info(pafs.FileSelector(remote.path, allow_not_found=True))  # may we list it?
    except OSError as error:
        hint = " (check the credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws)"
        denied = any(code in str(error) for code in ("ACCESS_DENIED", "SIGNATURE", "INVALID_ACCESS_KEY", "403"))
        raise UserError(f"cannot use '{remote.uri}': {describe(error)}{hint if denied else ''}") from None
    return remote


def describe(error: BaseException, limit: int = 240) -> str:
    """An error of pyarrow or the store's SDK as one short line (no request ids)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "AWS Error " in text:
        text = text.split("AWS Error ", 1)[1]
    text = re.sub(r"\s*\(Request ID: [^)]*\)?", "", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def list_folders(remote: Remote) -> list[str]:
    """Names of the folders directly under ``remote`` (none when it does not exist), sorted."""
    infos = remote.fs.get_file_info(pafs.FileSelector(remote.path, allow_not_found=True))
    return sorted(Path(i.path).name for i in infos if i.type == pafs.FileType.Directory)


def upload(local: Path, remote: Remote) -> int:
    """``local`` as the single object ``remote``, seen whole or not at all, streamed in ``CHUNK`` pieces; returns
    its bytes. An ``OSError`` names ``remote``."""
    sent = 0
    try:
        target = remote.path
        if remote.local:  # a plain file system: write beside it, then rename over it
            parent = remote.path.rsplit("/", 1)[0]
            remote.fs.create_dir(parent, recursive=True)
            target = f"{parent}/.{remote.path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}"
        with open(local, "rb") as source, remote.fs.open_output_stream(target) as stream:
            while chunk := source.read(CHUNK):
                stream.write(chunk)
                sent += len(chunk)
        if target != remote.path:
            remote.fs.move(target, remote.path)
    except OSError as error:
        raise OSError(0, describe(error), remote.uri) from None
    return sent


def download(remote: Remote, local: Path, names: tuple[str, ...] = RUN_FILES) -> list[str]:
    """Copy the files ``names`` of the folder ``remote`` that exist into ``local``; return the names copied."""
    infos = remote.fs.get_file_info([remote.child(name).path for name in names])
    copied = []
    local.mkdir(parents=True, exist_ok=True)
    for name, info in zip(names, infos, strict=True):
        if info.type != pafs.FileType.File:
            continue
        with remote.fs.open_input_stream(info.path) as stream:
            data = stream.read()
        (local / name).write_bytes(data)
        copied.append(name)
    return copied


def download_runs(uri: str, dest: Path) -> list[tuple[str, Path]]:
    """The run folders at or under ``uri`` (folders holding a run's files), copied into ``dest``.

    Returns ``(URI of the run folder, its local copy)`` in URI order. No such path is a ``UserError``; so is a
    store that refuses the listing.
    """
    root = resolve(uri)
    try:
        info = root.fs.get_file_info(root.path)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"{root.uri}: no such run folder")
        if info.type == pafs.FileType.File:
            raise UserError(f"{root.uri}: not a folder (give a run folder or a folder of run folders)")
        files = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
        found = {f.path.rsplit("/", 1)[0] for f in files if f.type == pafs.FileType.File and f.base_name in RUN_FILES}
        # A folder inside a run folder is not a run of its own (as bench.results.store.find_run_dirs).
        runs = sorted(d for d in found if not any(d.startswith(other + "/") for other in found))
        copies = []
        for folder in runs:
            relative = folder[len(root.path) :].strip("/")
            local = dest / relative if relative else dest
            download(Remote(root.fs, folder, root.scheme), local)
            copies.append((Remote(root.fs, folder, root.scheme).uri, local))
    except OSError as error:
        raise UserError(f"cannot read '{root.uri}': {describe(error)}") from None
    return copies


class LeaseLock:
    """One writer per run folder in a store without locks: a lease object per writer, refreshed while it runs.

    ``__enter__`` puts ``<run>/.leases/<token>``, then lists ``<run>/.leases/``: another lock object refreshed within
    the lease means another run holds the folder (a one-line ``UserError``; its own object is removed again). A
    lock object older than the lease (its run died: kill -9, a lost node) is ignored and deleted. With a store
    whose listing sees every completed PUT (S3, GCS, a file system), two runs starting together both see two
    objects and both stop: never two writers. A thread rewrites the object every quarter lease; ``check`` raises
    ``OSError`` once the lease has not been refreshed for a whole lease (the store unreachable), so the runner
    stops uploading instead of writing beside a run that may have taken over. Limits: a writer stalled for longer
    than the lease loses the lock without knowing until its next ``check``; the times are the store's clock.
    """

    def __init__(self, run: Remote, lease_s: float | None = None) -> None:
        self.run = run
        self.lease_s = lease_s or float(os.environ.get("BENCH_LOCK_LEASE_S", DEFAULT_LEASE_S))
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.object = run.child(LOCK_FOLDER, self.token)
        self._refreshed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseLock:
        try:
            self._put()
            folder = self.run.child(LOCK_FOLDER)
            infos = self.run.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
        except OSError as error:
            raise UserError(f"cannot write the run folder '{self.run.uri}': {describe(error)}") from None
        mine = next((i for i in infos if i.path == self.object.path), None)
        others = [i for i in infos if i.type == pafs.FileType.File and i.path != self.object.path]
        now = mine.mtime if mine is not None and mine.mtime is not None else None
        live = [i for i in others if now is None or i.mtime is None or (now - i.mtime).total_seconds() <= self.lease_s]
        if live:
            self._delete(self.object)
            age = f", refreshed {(now - live[0].mtime).total_seconds():.0f} s ago" if now and live[0].mtime else ""
            raise UserError(
                f"run folder '{self.run.uri}' is in use by another bench run (lock {self.run.uri}/{LOCK_FOLDER}/"
                f"{live[0].base_name}{age}); wait for it to finish, or {self.lease_s:g} s after it died"
            )
        for stale in others:
            self._delete(Remote(self.run.fs, stale.path, self.run.scheme))
        self._refreshed = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="bench-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._delete(self.object)

    def check(self) -> None:
        """Raise ``OSError`` when the lease may have run out (not refreshed for a whole lease)."""
        if time.monotonic() - self._refreshed > self.lease_s:
            raise OSError(
                0, f"lost the run's lock: not refreshed for {self.lease_s:g} s (store unreachable?)", self.object.uri
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self._put()
                self._refreshed = time.monotonic()
            except OSError:
                pass  # retried at the next beat; check() reports a lease that ran out

    def _put(self) -> None:
        body = {"host": socket.gethostname(), "pid": os.getpid(), "lease_s": self.lease_s, "written": time.time()}
        if self.run.local:
            self.run.fs.create_dir(self.run.child(LOCK_FOLDER).path, recursive=True)
        with self.run.fs.open_output_stream(self.object.path) as stream:
            stream.write(json.dumps(body).encode())

    @staticmethod
    def _delete(remote: Remote) -> None:
        with contextlib.suppress(OSError):  # best effort: a lock object left behind is ignored once its lease ran out
            remote.fs.delete_file(remote.path)
