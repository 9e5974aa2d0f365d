"""Prepared datasets in object storage: ``bench run --cache-dir s3://bucket/cache`` (any ``pyarrow.fs`` URI).

With a store, every node keeps its own local cache folder (``--out``'s ``.cache``, or ``./.bench_cache`` for a URI
``--out``) and the store holds each published dataset whole, as the local layout does:
``<uri>/datasets/<fingerprint>/`` with its shard files and their ``.json`` records, ``y_train.npy``, ``y_test.npy`` and
``meta.json``. A decode task uploads the shard it wrote (the file, then its record); the driver uploads the labels
and, last, the manifest: a dataset is in the store once its ``meta.json`` is, and a shard once its record is (an
object store shows a PUT whole or not at all). A trial on a node whose local cache lacks a file downloads it from
the store, one file at a time, under a temporary name renamed into place. A later run with the same store (from
any machine) finds the manifest and decodes nothing; a run killed mid-way reuses the shards whose records are
there. Credentials and endpoint: as for a URI ``--out`` (``bench.results.remote``), on every node.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from bench.data import shards
from bench.errors import UserError
from bench.results import remote


class ShardStore:
    """The ``datasets/`` folder of a store: published datasets and the shards on their way."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = remote.resolve(uri).child("datasets")

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_store, (self.uri,))  # a task or trial resolves the URI on its own node, once per process

    def folder(self, fingerprint: str) -> remote.Remote:
        return self.root.child(fingerprint)

    def manifest(self, fingerprint: str) -> dict[str, Any] | None:
        """The published dataset's manifest, or None when the store does not hold it (yet)."""
        data = self._read(self.folder(fingerprint).child(shards.MANIFEST))
        return None if data is None else json.loads(data)

    def record(self, fingerprint: str, name: str) -> shards.ShardRecord | None:
        """The record of a whole shard in the store, or None (no record, or its file missing or short)."""
        data = self._read(self.folder(fingerprint).child(f"{name}.json"))
        if data is None:
            return None
        try:
            record = shards.ShardRecord(**json.loads(data))
        except (ValueError, TypeError):
            return None
        info = self.root.fs.get_file_info(self.folder(fingerprint).child(record.file).path)
        return record if info.type == pafs.FileType.File and info.size == record.nbytes else None

    def put(self, folder: Path, fingerprint: str, *names: str) -> int:
        """Upload the files ``names`` of the local ``folder``, in order, each as one object; returns the bytes."""
        return sum(remote.upload(folder / name, self.folder(fingerprint).child(name)) for name in names)

    def get(self, fingerprint: str, name: str, path: Path) -> int:
        """Download the file ``name`` of a dataset to the local ``path``; returns its bytes."""
        source = self.folder(fingerprint).child(name)
        received = 0
        try:
            with open(path, "wb") as file, self.root.fs.open_input_stream(source.path) as stream:
                while chunk := stream.read(remote.CHUNK):
                    file.write(chunk)
                    received += len(chunk)
        except OSError as error:
            raise UserError(f"cannot read '{source.uri}': {remote.describe(error)}") from None
        return received

    def _read(self, target: remote.Remote) -> bytes | None:
        try:
            with self.root.fs.open_input_stream(target.path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            if "not found" in str(error).lower() or "nosuchkey" in str(error).lower():
                return None
            raise UserError(f"cannot read '{target.uri}': {remote.describe(error)}") from None


@functools.lru_cache(maxsize=4)
def open_store(uri: str) -> ShardStore:
    """The store at ``uri``, checked (bucket, credentials) once per process: a bad one is a one-line UserError."""
    return ShardStore(uri)
