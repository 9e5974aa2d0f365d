"""Preparation: every image decoded, converted to RGB, resized and centre-cropped once per dataset and size.

A prepared dataset is uint8 NCHW images per split; with a ``cache_dir`` they are kept on disk as shards
(``bench.data.shards``) under a fingerprint (source, size, preprocessing version and, for image folders and ``hf:``
folders, a stat digest of the files; for ``hf:`` Hub datasets, the `datasets` fingerprints of their splits) that
every downstream cache (frozen features, prefix outputs, similarity scores) keys on, so changed files can never hit
an older cache. Trials then read the rows they index (``bench.data.splits``), a batch at a time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import shards
from bench.data.decode import PREPROCESS_VERSION, decode_all, decode_workers
from bench.data.registry import DATASETS, DatasetEntry, check_dataset_name, count_classes_refused, parse_checked
from bench.data.sources import LoadRequest, RawDataset, load_image_folder, resolve_folder
from bench.errors import UserError
from bench.utils.atomic import atomic_write_text


@dataclass
class PreparedDataset:
    """A decoded dataset: uint8 [N, 3, S, S] RGB images, read on demand from its shards (``ImageRows``: index
    it to get arrays), and int64 labels in memory, train and test."""

    name: str
    group: str
    classes: list[str]
    img_size: int
    x_train: shards.ImageRows
    y_train: np.ndarray
    x_test: shards.ImageRows
    y_test: np.ndarray
    fingerprint: str  # hash of (name, resolved root, img_size, preprocessing version): key for downstream caches
    meta: dict[str, Any] = field(default_factory=dict)  # split notes, skipped_images, cache_path, ...

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class _Resolved:
    """A dataset name made concrete: its registry row (built on the fly for folders and ``hf:``), the name its
    source key uses (data-changing options included, display options not), its resolved root, and how to digest
    its contents (None: nothing to digest, or not available here)."""

    entry: DatasetEntry
    key_name: str
    root: Path | None
    contents: Callable[[], str | None] = field(repr=False, compare=False)


def _no_contents() -> str | None:
    return None


def _resolve(name: str, root: str | None, download: bool = False) -> _Resolved:
    """A relative folder path is taken relative to `root` when one is given, else to the current directory;
    resolution makes it absolute so that Ray workers with another working directory see the same folder and
    the same fingerprint."""
    ref = parse_checked(name)
    group = ref.options.get("group", "natural")
    if ref.kind == "imagefolder":
        resolved = resolve_folder(ref.target, root)
        entry = DatasetEntry(name, group, "class folders", str(resolved), "user data", True, load_image_folder)
        return _Resolved(entry, "imagefolder", resolved, functools.partial(folder_digest, resolved))
    if ref.kind == "hf":
        from bench.data import hf

        location = hf.locate(ref, root)
        data = json.dumps(ref.data_options(), sort_keys=True)
        key_name = f"hf:{location.mode}:{data}" if location.mode != "hub" else f"hf:hub:{location.where}:{data}"
        loader = functools.partial(hf.load_hf, ref, location)
        entry = DatasetEntry(name, group, "Hugging Face datasets", location.where, "the dataset card's", False, loader)
        if location.folder is not None:
            return _Resolved(entry, key_name, location.folder, functools.partial(folder_digest, location.folder))
        contents = functools.partial(hf.hub_contents, name, ref, location, download)
        cache = Path(location.cache_dir) if location.cache_dir else None
        return _Resolved(entry, key_name, cache, contents)
    entry = DATASETS[ref.target]
    if entry.offline:
        return _Resolved(entry, ref.target, None, _no_contents)
    resolved_root = Path(os.path.realpath(Path(root).expanduser())) if root is not None else None
    return _Resolved(entry, ref.target, resolved_root, _no_contents)


def _source_key(key_name: str, root: Path | None, img_size: int, shard_format: str = "raw") -> str:
    """Which dataset, where, at which size, preprocessing and (when not raw) shard format: the part of the key
    known without the files."""
    key: dict[str, Any] = {"name": key_name, "root": str(root) if root else None, "img_size": img_size}
    key["preprocess"] = PREPROCESS_VERSION
    if shard_format != "raw":  # lossy shards hold other pixels; raw keeps the key it always had
        key["shard_format"] = shard_format
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def folder_digest(root: Path) -> str | None:
    """sha256 of every file's relative path, size and modification time under `root` (a stat walk, no reads),
    so a file added, removed, replaced or edited changes it; None when the folder is not on disk."""
    if not root.exists():
        return None
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder, name)
            with contextlib.suppress(OSError):  # vanished while walking: it is not part of the data
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _fingerprint(source_key: str, contents: str | None) -> str:
    """Cache key of a prepared dataset (and, through it, of every frozen-feature cache built on it): the source
    key plus the contents digest, so changed files under a root can never hit an older cache."""
    if contents is None:
        return source_key
    return hashlib.sha256(f"{source_key}:{contents}".encode()).hexdigest()[:16]


def dataset_fingerprint(
    name: str, img_size: int, root: str | None = None, download: bool = False, shard_format: str = "raw"
) -> str:
    """The `fingerprint` that `prepare_dataset` would give, without decoding anything (a stat walk of the root;
    for an ``hf:`` Hub dataset, opening it from the cache)."""
    check_dataset_name(name)
    resolved = _resolve(name, root, download)
    return _fingerprint(_source_key(resolved.key_name, resolved.root, img_size, shard_format), resolved.contents())


def _warn_skipped(name: str, skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"dataset '{name}': skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=3)


def load_prepared(folder: Path, name: str, group: str) -> PreparedDataset:
    """A published dataset folder opened for reading: labels in memory, images memory-mapped shard by shard."""
    meta = shards.load_manifest(folder)
    try:
        y_train, y_test = np.load(folder / "y_train.npy"), np.load(folder / "y_test.npy")
    except (OSError, ValueError) as error:
        raise UserError(f"prepared-dataset cache '{folder}' is unreadable ({error}); delete that folder") from error
    meta["cache_path"] = str(folder)
    return PreparedDataset(
        name=name,
        group=group,
        classes=list(meta["classes"]),
        img_size=int(meta["img_size"]),
        x_train=shards.ImageRows.from_folder(folder, meta, "train"),
        y_train=y_train,
        x_test=shards.ImageRows.from_folder(folder, meta, "test"),
        y_test=y_test,
        fingerprint=meta["fingerprint"],
        meta=meta,
    )


@dataclass
class DatasetPlan:
    """One dataset at one size, resolved: its fingerprint and where its shards go. Nothing decoded yet."""

    name: str
    img_size: int
    download: bool
    resolved: _Resolved
    source_key: str
    contents: str | None
    fingerprint: str
    final: Path | None  # <cache_dir>/datasets/<fingerprint>; None without a cache
    latest: Path | None
    shard_format: str = "raw"

    @property
    def group(self) -> str:
        return self.resolved.entry.group

    @property
    def partial(self) -> Path | None:
        return None if self.final is None else self.final.with_name(self.final.name + ".partial")

    @property
    def cached(self) -> bool:
        return self.final is not None and (self.final / shards.MANIFEST).is_file()

    def load(self) -> RawDataset:
        """The dataset's sources, listed (image folders) or opened (the rest); its classes checked."""
        entry = self.resolved.entry
        request = LoadRequest(name=self.name, root=self.resolved.root, download=self.download, img_size=self.img_size)
        raw = entry.loader(request)
        count_classes_refused(self.name, len(raw.classes), raw.classes)
        return raw

    def open(self) -> PreparedDataset:
        assert self.final is not None
        return load_prepared(self.final, self.name, self.group)


def plan_dataset(
    name: str,
    img_size: int,
    root: str | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
    shard_format: str = "raw",
) -> DatasetPlan:
    """Resolve ``name`` and compute its fingerprint (a stat walk of its files); where it is cached, say where."""
    check_dataset_name(name)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise UserError(f"dataset '{name}': img_size must be a positive integer, got {img_size!r}")
    if shard_format not in shards.FORMATS:
        raise UserError(f"dataset '{name}': shard format must be one of {', '.join(shards.FORMATS)}")
    resolved = _resolve(name, root, download)
    source_key = _source_key(resolved.key_name, resolved.root, img_size, shard_format)
    contents = resolved.contents()
    fingerprint = _fingerprint(source_key, contents)
    final = latest = None
    if cache_dir is not None:
        datasets_dir = Path(os.path.abspath(Path(cache_dir).expanduser())) / "datasets"
        latest = datasets_dir / f"{source_key}.latest"
        if contents is None and resolved.contents is not _no_contents and latest.is_file():
            # No files here (a worker node, a moved disk): the newest preparation of this source stands in.
            with contextlib.suppress(OSError):
                fingerprint = latest.read_text().strip() or fingerprint
        final = datasets_dir / fingerprint
    return DatasetPlan(
        name, img_size, download, resolved, source_key, contents, fingerprint, final, latest, shard_format
    )


def dataset_meta(
    plan: DatasetPlan, raw: RawDataset, records: list[shards.ShardRecord], seconds: float
) -> dict[str, Any]:
    """The manifest's description of a dataset whose shards are ``records``; refuses a dataset left without
    readable training images or with fewer than two classes that have any, and warns about what was skipped."""
    skipped = [item for record in records for item in record.skipped]
    _warn_skipped(plan.name, skipped)
    n = {split: sum(r.count for r in records if r.split == split) for split in shards.SPLITS}
    if n["train"] == 0:
        raise UserError(f"dataset '{plan.name}': no readable training images (root '{plan.resolved.root}')")
    present = sorted({label for r in records if r.split == "train" for label in r.labels})
    count_classes_refused(plan.name, len(present), [raw.classes[c] for c in present])
    empty = [raw.classes[c] for c in sorted(set(range(len(raw.classes))) - set(present))]
    if empty:
        names = ", ".join(empty)
        warnings.warn(f"dataset '{plan.name}': no readable training image in class(es) {names}", stacklevel=2)
    return {
        "name": plan.name,
        "group": plan.group,
        "fingerprint": plan.fingerprint,
        "classes": list(raw.classes),
        "img_size": plan.img_size,
        "preprocess_version": PREPROCESS_VERSION,
        "root": str(plan.resolved.root) if plan.resolved.root else None,
        "n_train": n["train"],
        "n_test": n["test"],
        "skipped_images": len(skipped),
        "skipped_examples": skipped[:20],
        "shard_format": plan.shard_format,
        "prepare_seconds": round(seconds, 3),
        "shard_seconds": round(sum(r.seconds for r in records if not r.reused), 3),
        "shards_reused": sum(r.reused for r in records),
        **raw.notes,
    }


def finish(plan: DatasetPlan, raw: RawDataset, records: list[shards.ShardRecord], seconds: float) -> None:
    """Publish a dataset whose every shard is in ``plan.partial``: labels, manifest, the folder moved into place."""
    assert plan.final is not None and plan.partial is not None and plan.latest is not None
    shards.publish(plan.partial, plan.final, dataset_meta(plan, raw, records, seconds), records)
    if plan.contents is not None:
        atomic_write_text(plan.fingerprint, plan.latest)


def _decode_in_memory(plan: DatasetPlan, raw: RawDataset, started: float) -> PreparedDataset:
    """Without a cache: each split decoded whole into memory (tests and one-off measurements)."""
    arrays, records = {}, []
    for split, source in (("train", raw.train), ("test", raw.test)):
        x = np.empty((source.length, 3, plan.img_size, plan.img_size), dtype=np.uint8)
        y = np.empty(source.length, dtype=np.int64)
        skipped = decode_all(source, plan.img_size, x, y)
        kept = source.length - len(skipped)
        arrays[split] = (x[:kept], y[:kept].copy())
        labels = [int(v) for v in y[:kept]]
        records.append(shards.ShardRecord(split, 0, 0, source.length, kept, labels, skipped, "", 0.0, 0))
    meta = dataset_meta(plan, raw, records, time.perf_counter() - started)
    return PreparedDataset(
        name=plan.name,
        group=plan.group,
        classes=list(raw.classes),
        img_size=plan.img_size,
        x_train=shards.ImageRows.in_memory(arrays["train"][0]),
        y_train=arrays["train"][1],
        x_test=shards.ImageRows.in_memory(arrays["test"][0]),
        y_test=arrays["test"][1],
        fingerprint=plan.fingerprint,
        meta=meta,
    )


def prepare_dataset(
    name: str,
    img_size: int,
    root: str | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
    *,
    shard_mb: float = shards.SHARD_MB,
    shard_format: str = "raw",
) -> PreparedDataset:
    """Decode the whole dataset once (RGB, shorter side resized with antialiased bicubic, centre crop), in this
    process. With `cache_dir`, into shards of `shard_mb` MiB under `<cache_dir>/datasets/<fingerprint>/`
    (``bench.data.shards``): later calls open them instead of decoding again, a cache hit needs no files under
    `root` at all, and shards left by an interrupted preparation are reused. Corrupt images are skipped with a
    warning (meta `skipped_images`). `bench run` prepares the same shards as Ray tasks over the cluster
    (``bench.runner.datasets``).
    """
    plan = plan_dataset(name, img_size, root, download, cache_dir, shard_format)
    if plan.cached:
        return plan.open()
    started = time.perf_counter()
    raw = plan.load()
    if plan.partial is None:
        if shard_format != "raw":
            raise UserError(f"dataset '{name}': {shard_format} shards need a cache folder")
        return _decode_in_memory(plan, raw, started)
    sources = {"train": raw.train, "test": raw.test}
    jobs = shards.plan_shards({s: sources[s].length for s in shards.SPLITS}, shards.shard_items(img_size, shard_mb))
    node = node_label()
    workers = decode_workers()
    try:
        records = [
            shards.write_shard(
                plan.partial, job, sources[job.split].window(job.start, job.stop), img_size, node, workers, shard_format
            )
            for job in jobs
        ]
        finish(plan, raw, records, time.perf_counter() - started)
    except OSError:
        if not plan.cached:  # else another process published the same dataset under our feet
            raise
    return plan.open()


def node_label() -> str:
    """This machine, as shard records and rows name it."""
    return socket.gethostname()
