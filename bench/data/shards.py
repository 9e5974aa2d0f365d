"""Prepared datasets as fixed-size shards on storage: how they are planned, written, published and read.

A prepared dataset lives in ``<cache_dir>/datasets/<fingerprint>/``::

    meta.json                the manifest, written last: classes, counts, the shards of each split
    y_train.npy, y_test.npy  int64 labels of each split, in order
    train-00000.npy ...      uint8 [n, 3, S, S] images of one shard: ``shard_items`` consecutive source items
                             (fewer when some were unreadable), memory-mapped by every reader
    train-00000.json ...     the shard's record: its items, labels, skipped files, which node decoded it, how long

While a dataset is prepared its shards go to ``<fingerprint>.partial/``. A shard's ``.npy`` is renamed into place
whole and its record written after it, so a shard with a record is complete: a preparation killed at any point
leaves only whole shards behind, and the next one reuses them. The manifest is published by renaming the
folder; nothing reads a dataset without one. The concatenated shards of a split are exactly the array the
whole-split decode gives (same items, same order, the same pixels), so the fingerprint, and every cache keyed
on it, is unchanged by sharding.

Shards are raw by default. ``jpeg`` shards (``<name>.jpegs``, re-encoded at ``JPEG_QUALITY`` as FFCV and
WebDataset store images) take about a tenth of the disk and a decode per read; their pixels differ from the
raw ones, so the format is part of the dataset's fingerprint (docs/performance.md, "Shard formats", has the
measurements behind the default).

``ImageRows`` reads images on demand from the shards (or from an in-memory array): a trial, the frozen-feature
pass and the similarity pass hold a batch of images at a time, never a split.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data.decode import Source, decode_all
from bench.errors import UserError
from bench.utils.atomic import atomic_write_text

SPLITS = ("train", "test")
FORMATS = {"raw": ".npy", "jpeg": ".jpegs"}  # shard formats and their files
JPEG_QUALITY = 90  # what FFCV writes by default
SHARD_MB = float(os.environ.get("BENCH_SHARD_MB", "64"))  # decoded bytes per shard (its item count follows)
MANIFEST = "meta.json"
COPY_LOCK = ".copy.lock"  # held by the trial of a node that copies missing files in (copy_in)


def shard_items(img_size: int, shard_mb: float = SHARD_MB) -> int:
    """Source items per shard: as many decoded images as fit in ``shard_mb`` MiB (at least one)."""
    return max(1, int(shard_mb * 2**20) // (3 * img_size * img_size))


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


@dataclass(frozen=True)
class ShardJob:
    """Items ``[start, stop)`` of one split's source, prepared into shard ``index`` of that split."""

    split: str
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def plan_shards(lengths: dict[str, int], items: int) -> list[ShardJob]:
    """Every split cut into consecutive jobs of ``items`` source items (the last one shorter)."""
    return [
        ShardJob(split, index, start, min(start + items, lengths[split]))
        for split in SPLITS
        for index, start in enumerate(range(0, lengths[split], items))
    ]


@dataclass
class ShardRecord:
    """What a shard holds and how it was made (its ``.json``)."""

    split: str
    index: int
    start: int
    stop: int
    count: int  # images kept (items minus the unreadable ones)
    labels: list[int]
    skipped: list[str]
    node: str  # which machine decoded it (bench.data.prepare.node_label, or a Ray node: address/node id)
    seconds: float
    nbytes: int
    reused: bool = False  # found whole on disk from an earlier preparation, not decoded again
    format: str = "raw"  # "raw": uint8 .npy; "jpeg": re-encoded images (FORMATS)

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    @property
    def file(self) -> str:
        return self.name + FORMATS[self.format]

    def matches(self, job: ShardJob) -> bool:
        return (self.split, self.index, self.start, self.stop) == (job.split, job.index, job.start, job.stop)


def read_record(folder: Path, name: str) -> ShardRecord | None:
    """The record of a whole shard in ``folder``, or None (no record, an unreadable one, or its images missing)."""
    try:
        record = ShardRecord(**json.loads((folder / f"{name}.json").read_text()))
        if (folder / record.file).stat().st_size != record.nbytes:
            return None
    except (OSError, ValueError, TypeError):
        return None
    return record


def write_shard(
    folder: Path, job: ShardJob, window: Source, img_size: int, node: str, workers: int = 1, fmt: str = "raw"
) -> ShardRecord:
    """Decode ``window`` (``job``'s items: ``source.window(job.start, job.stop)`` of its split's source) into
    ``folder/<name>.npy`` (``fmt`` raw) or ``<name>.jpegs`` (jpeg) and its record; a shard already whole there
    (same items) is reused as it is."""
    if window.length != job.stop - job.start:
        raise ValueError(f"shard {job.name}: {window.length} items for {job.stop - job.start}")
    found = read_record(folder, job.name)
    if found is not None and found.matches(job) and found.format == fmt:
        found.reused = True
        return found
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{job.name}-", suffix=".npy", dir=folder)
    os.close(descriptor)
    try:
        shape = (window.length, 3, img_size, img_size)
        x = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        y = np.empty(window.length, dtype=np.int64)
        skipped = decode_all(window, img_size, x, y, workers=workers)
        count = window.length - len(skipped)
        x.flush()
        del x
        if count != window.length:  # rare: rewrite with the kept rows only, so the header states the count
            trimmed = f"{temporary}.trimmed.npy"
            np.save(trimmed, np.load(temporary, mmap_mode="r")[:count])
            os.replace(trimmed, temporary)
        if fmt == "jpeg":
            encoded = f"{temporary}.jpegs"
            write_jpegs(encoded, np.load(temporary, mmap_mode="r"))
            os.replace(encoded, temporary)
        os.replace(temporary, folder / (job.name + FORMATS[fmt]))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    record = ShardRecord(
        split=job.split,
        index=job.index,
        start=job.start,
        stop=job.stop,
        count=count,
        labels=[int(v) for v in y[:count]],
        skipped=skipped,
        node=node,
        seconds=round(time.perf_counter() - started, 3),
        nbytes=(folder / (job.name + FORMATS[fmt])).stat().st_size,
        format=fmt,
    )
    atomic_write_text(json.dumps(asdict(record)), folder / f"{job.name}.json")
    return record


def publish(partial: Path, final: Path, meta: dict[str, Any], records: Sequence[ShardRecord]) -> None:
    """Write the labels and the manifest into ``partial`` (every shard of ``records`` already there) and move
    it to ``final``. If another process published first, theirs stays (same deterministic content)."""
    if (final / MANIFEST).is_file():  # another process got there first
        shutil.rmtree(partial, ignore_errors=True)
        return
    for leftover in partial.glob(".*"):  # temporary files of an interrupted preparation
        with contextlib.suppress(OSError):
            leftover.unlink()
    ordered = sorted(records, key=lambda r: (SPLITS.index(r.split), r.index))
    for split in SPLITS:
        labels = [label for r in ordered if r.split == split for label in r.labels]
        np.save(partial / f"y_{split}.npy", np.asarray(labels, dtype=np.int64))
    manifest = {
        **meta,
        "shards": {
            split: [
                {"name": r.name, "file": r.file, "count": r.count, "nbytes": r.nbytes}
                for r in ordered
                if r.split == split
            ]
            for split in SPLITS
        },
        "decoded_by": {r.name: r.node for r in ordered},  # the node that decoded each shard
        "decoded_by_counts": ", ".join(f"{node} {n}" for node, n in sorted(Counter(r.node for r in ordered).items())),
    }
    atomic_write_text(json.dumps(manifest, indent=1), partial / MANIFEST)
    try:
        os.rename(partial, final)
    except OSError:
        if not (final / MANIFEST).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def shard_files(meta: dict[str, Any], split: str) -> list[tuple[str, int, int | None]]:
    """(file name, image count, bytes or None) of each shard of ``split``; a single-array cache folder from
    before shards counts as one shard."""
    if "shards" in meta:
        return [(s.get("file", f"{s['name']}.npy"), int(s["count"]), int(s["nbytes"])) for s in meta["shards"][split]]
    return [(f"x_{split}.npy", int(meta[f"n_{split}"]), None)]


def load_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"prepared-dataset cache '{folder}' is unreadable ({error}); delete that folder") from error


# ---------------------------------------------------------------------------------------------------------
# reading


def write_jpegs(path: str | Path, images: np.ndarray) -> None:
    """uint8 [n, 3, S, S] images as one file: n, then n + 1 int64 offsets, then each image's JPEG bytes."""
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, "JPEG", quality=JPEG_QUALITY)
        blobs.append(buffer.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    with open(path, "wb") as file:
        file.write(np.int64(len(blobs)).tobytes())
        file.write(offsets.tobytes())
        for blob in blobs:
            file.write(blob)


class JpegShard:
    """A ``.jpegs`` shard (``write_jpegs``), memory-mapped; ``shard[rows]`` decodes those rows to uint8 NCHW."""

    def __init__(self, path: Path) -> None:
        self._data = np.memmap(path, dtype=np.uint8, mode="r")
        count = int(self._data[:8].view(np.int64)[0])
        self._offsets = self._data[8 : 8 + 8 * (count + 1)].view(np.int64)
        self._start = 8 + 8 * (count + 1)
        side = self._decode(0).shape[1] if count else 0
        self.shape = (count, 3, side, side)

    def _decode(self, row: int) -> np.ndarray:
        blob = self._data[self._start + self._offsets[row] : self._start + self._offsets[row + 1]]
        with Image.open(io.BytesIO(blob.tobytes())) as image:
            return np.asarray(image.convert("RGB")).transpose(2, 0, 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        return np.stack([self._decode(int(r)) for r in rows]) if len(rows) else np.empty((0, *self.shape[1:]), np.uint8)


class ImageRows:
    """uint8 [N, 3, S, S] images read on demand from shards: memory-mapped ``.npy`` files (opened on first
    use) or in-memory arrays, optionally seen through an index (``take``).

    Indexing follows NumPy (an int, a slice, an integer or boolean array, a torch index tensor, or a tuple whose
    first item is one of these) and returns a new, writable ``np.ndarray``: only the rows asked for are read.
    Pickling carries the file paths, not the pixels.
    """

    def __init__(
        self, parts: Sequence[Path | np.ndarray], counts: Sequence[int], index: np.ndarray | None = None
    ) -> None:
        if len(parts) != len(counts):
            raise ValueError("one count per part")
        self._parts = list(parts)
        self._counts = [int(c) for c in counts]
        self._starts = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)
        self._index = None if index is None else np.asarray(index, dtype=np.int64)
        self._opened: dict[int, np.ndarray] = {}
        self._item_shape: tuple[int, ...] | None = None

    @classmethod
    def in_memory(cls, array: np.ndarray) -> ImageRows:
        return cls([array], [len(array)])

    @classmethod
    def from_folder(cls, folder: Path, meta: dict[str, Any], split: str) -> ImageRows:
        files = shard_files(meta, split)
        return cls([folder / name for name, _, _ in files], [count for _, count, _ in files])

    def __reduce__(self) -> tuple[Any, ...]:
        parts = [p if isinstance(p, (Path, str)) else np.asarray(p) for p in self._parts]
        return (ImageRows, (parts, self._counts, self._index))

    def _part(self, k: int) -> np.ndarray:
        part = self._parts[k]
        if not isinstance(part, (Path, str)):
            return part
        if k not in self._opened:
            try:
                self._opened[k] = (
                    JpegShard(Path(part)) if str(part).endswith(".jpegs") else np.load(part, mmap_mode="r")
                )
            except (OSError, ValueError) as error:
                message = f"prepared-dataset shard '{part}' is unreadable ({error}); delete its folder"
                raise UserError(message) from error
        return self._opened[k]

    @property
    def item_shape(self) -> tuple[int, ...]:
        if self._item_shape is None:
            nonempty = [k for k, count in enumerate(self._counts) if count]
            self._item_shape = tuple(self._part(nonempty[0]).shape[1:]) if nonempty else (3, 0, 0)
        return self._item_shape

    def __len__(self) -> int:
        return int(self._starts[-1]) if self._index is None else len(self._index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    ndim = 4
    dtype = np.dtype(np.uint8)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def element_size(self) -> int:
        return 1

    def take(self, indices: np.ndarray | Sequence[int], axis: int = 0) -> ImageRows:
        """The rows ``indices`` (into this view) as a new view; nothing is read. (``axis`` as NumPy's ``take``
        has it, so code can take rows of an array or of a view alike; only 0.)"""
        if axis != 0:
            raise ValueError("ImageRows.take: only axis=0")
        positions = self._positions(np.asarray(indices, dtype=np.int64))
        return ImageRows(self._parts, self._counts, positions)

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        rows = np.where(rows < 0, rows + n, rows)
        return rows if self._index is None else self._index[rows]

    def _gather(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), *self.item_shape), dtype=np.uint8)
        if not len(positions):
            return out
        part = np.searchsorted(self._starts, positions, side="right") - 1
        if part[0] == part[-1] and (part == part[0]).all():  # the usual case: one shard
            out[:] = self._part(int(part[0]))[positions - self._starts[part[0]]]
            return out
        for k in np.unique(part):
            mask = part == k
            out[mask] = self._part(int(k))[positions[mask] - self._starts[k]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if type(key).__module__.startswith("torch"):  # an index tensor (torch is not imported here)
            key = key.cpu().numpy()
        single = isinstance(key, (int, np.integer))
        if single:
            rows = np.array([key])
        elif isinstance(key, slice):
            rows = np.arange(len(self))[key]
        else:
            rows = np.asarray(key)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        result = self._gather(self._positions(rows.astype(np.int64)))[(slice(None), *rest)]
        return result[0] if single else result

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def to(self, device: Any) -> Any:
        """Every row as one torch tensor on ``device`` (for splits small enough to keep whole)."""
        import torch

        return torch.from_numpy(self[:]).to(device)


@dataclass
class ShardSet:
    """Where the shards of one dataset are and what they hold: what a trial needs to open it on any node."""

    fingerprint: str
    meta: dict[str, Any]
    home: str | None = None  # the Ray node that holds every shard (trials elsewhere copy them from it)
    store: str | None = None  # or the URI of the object store that holds them (bench.runner.shard_store)


def missing_files(folder: Path, shard_set: ShardSet) -> list[tuple[str, int | None]]:
    """(name, bytes) of the shard set's files not whole in ``folder``: the ones a node must copy before reading."""
    wanted = [(name, nbytes) for split in SPLITS for name, _, nbytes in shard_files(shard_set.meta, split)]
    wanted += [(f"y_{split}.npy", None) for split in SPLITS]
    return [(name, nbytes) for name, nbytes in wanted if not _whole(folder / name, nbytes)]


def _whole(path: Path, nbytes: int | None) -> bool:
    """``path`` exists, with ``nbytes`` bytes where that is known."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return nbytes is None or size == nbytes


def copy_in(folder: Path, shard_set: ShardSet, fetch: Callable[[str, Path], int]) -> int:
    """Copy the shard set's missing files into ``folder``, one at a time (``fetch(name, path)`` writes the file
    ``name`` from wherever it is to ``path`` and returns its bytes), each under a temporary name renamed into place,
    the manifest last. Trials of one node copy one at a time (a lock file in ``folder``): a later one finds the
    files whole. Returns the bytes this call copied."""
    copied = 0
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / COPY_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, _ in missing_files(folder, shard_set):
            descriptor, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
            os.close(descriptor)
            try:
                copied += fetch(name, Path(temporary))
                os.replace(temporary, folder / name)
            finally:
                Path(temporary).unlink(missing_ok=True)
        if not (folder / MANIFEST).is_file():
            atomic_write_text(json.dumps(shard_set.meta, indent=1), folder / MANIFEST)
    return copied
