"""Preparation: every image decoded, converted to RGB, resized and centre-cropped once per dataset and size.

A prepared dataset is a uint8 NCHW array per split; with a ``cache_dir`` it is kept on disk under a
fingerprint (source, size, preprocessing version and, for image folders and ``hf:`` folders, a stat digest of
the files; for ``hf:`` Hub datasets, the `datasets` fingerprints of their splits) that
every downstream cache (frozen features, prefix outputs, similarity scores) keys on, so changed files can
never hit an older cache. Trials then only index arrays (``bench.data.splits``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.decode import PREPROCESS_VERSION, Source, decode_all
from bench.data.registry import DATASETS, DatasetEntry, check_dataset_name, count_classes_refused, parse_checked
from bench.data.sources import LoadRequest, load_image_folder, resolve_folder
from bench.errors import UserError
from bench.utils.atomic import atomic_write_text


@dataclass
class PreparedDataset:
    """A decoded dataset: uint8 [N, 3, S, S] RGB images and int64 labels, train and test.

    With a cache the image arrays are read-only `np.memmap`s (index them to get writable copies).
    """

    name: str
    group: str
    classes: list[str]
    img_size: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
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


def _source_key(key_name: str, root: Path | None, img_size: int) -> str:
    """Which dataset, where, at which size and preprocessing: the part of the key known without the files."""
    blob = json.dumps(
        {"name": key_name, "root": str(root) if root else None, "img_size": img_size, "preprocess": PREPROCESS_VERSION},
        sort_keys=True,
    )
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


def dataset_fingerprint(name: str, img_size: int, root: str | None = None, download: bool = False) -> str:
    """The `fingerprint` that `prepare_dataset` would give, without decoding anything (a stat walk of the root;
    for an ``hf:`` Hub dataset, opening it from the cache)."""
    check_dataset_name(name)
    resolved = _resolve(name, root, download)
    return _fingerprint(_source_key(resolved.key_name, resolved.root, img_size), resolved.contents())


def _allocate(folder: Path | None, stem: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    if folder is None:
        return np.empty(shape, dtype=dtype)
    return np.lib.format.open_memmap(folder / f"{stem}.npy", mode="w+", dtype=dtype, shape=shape)


def _trimmed(array: np.ndarray, count: int, folder: Path | None, stem: str) -> np.ndarray:
    """The first `count` rows; on disk, rewrites the .npy so its header says so (rare: only after skips)."""
    if count == len(array):
        return array
    if folder is None:
        return array[:count].copy()
    smaller = _allocate(folder, f"{stem}.part", (count, *array.shape[1:]), array.dtype)
    for start in range(0, count, 1024):
        smaller[start : start + 1024] = array[start : min(start + 1024, count)]
    smaller.flush()
    os.replace(folder / f"{stem}.part.npy", folder / f"{stem}.npy")
    return smaller


def _decode_split(
    source: Source, img_size: int, folder: Path | None, split: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = _allocate(folder, f"x_{split}", (source.length, 3, img_size, img_size), np.uint8)
    y = np.empty(source.length, dtype=np.int64)
    skipped = decode_all(source, img_size, x, y)
    kept = source.length - len(skipped)
    x = _trimmed(x, kept, folder, f"x_{split}")
    y = y[:kept].copy()
    if isinstance(x, np.memmap):
        x.flush()
    return x, y, skipped


def _warn_skipped(name: str, skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"dataset '{name}': skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=3)


def _load_cached(folder: Path, name: str, group: str) -> PreparedDataset:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {
            "x_train": np.load(folder / "x_train.npy", mmap_mode="r"),
            "y_train": np.load(folder / "y_train.npy"),
            "x_test": np.load(folder / "x_test.npy", mmap_mode="r"),
            "y_test": np.load(folder / "y_test.npy"),
        }
    except (OSError, ValueError) as error:
        raise UserError(f"prepared-dataset cache '{folder}' is unreadable ({error}); delete that folder") from error
    meta["cache_path"] = str(folder)
    return PreparedDataset(
        name=name,
        group=group,
        classes=list(meta["classes"]),
        img_size=int(meta["img_size"]),
        fingerprint=meta["fingerprint"],
        meta=meta,
        **arrays,
    )


def _publish(temporary: Path, final: Path) -> None:
    """Atomically move a finished cache folder into place. If another process got there first (the rename
    fails on an existing non-empty folder), keep theirs: both hold the same deterministic content."""
    try:
        os.rename(temporary, final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(temporary, ignore_errors=True)


def prepare_dataset(
    name: str,
    img_size: int,
    root: str | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> PreparedDataset:
    """Decode the whole dataset once into uint8 [N, 3, img_size, img_size] arrays (RGB, shorter side resized
    with antialiased bicubic, centre crop). With `cache_dir`, the arrays live in
    `<cache_dir>/datasets/<fingerprint>/` and later calls memory-map them instead of decoding again; a cache
    hit needs no files under `root` at all. Corrupt images are skipped with a warning (meta `skipped_images`).
    """
    check_dataset_name(name)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise UserError(f"dataset '{name}': img_size must be a positive integer, got {img_size!r}")
    resolved = _resolve(name, root, download)
    entry, resolved_root = resolved.entry, resolved.root
    source_key = _source_key(resolved.key_name, resolved_root, img_size)
    contents = resolved.contents()
    fingerprint = _fingerprint(source_key, contents)

    final: Path | None = None
    if cache_dir is not None:
        datasets_dir = Path(os.path.abspath(Path(cache_dir).expanduser())) / "datasets"
        latest = datasets_dir / f"{source_key}.latest"
        if contents is None and resolved.contents is not _no_contents and latest.is_file():
            # No files here (a worker node, a moved disk): the newest preparation of this source stands in.
            with contextlib.suppress(OSError):
                fingerprint = latest.read_text().strip() or fingerprint
        final = datasets_dir / fingerprint
        if final.is_dir():
            return _load_cached(final, name, entry.group)

    started = time.perf_counter()
    raw = entry.loader(LoadRequest(name=name, root=resolved_root, download=download, img_size=img_size))
    count_classes_refused(name, len(raw.classes), raw.classes)
    temporary: Path | None = None
    if final is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{fingerprint}-", dir=final.parent))
    try:
        x_train, y_train, skipped_train = _decode_split(raw.train, img_size, temporary, "train")
        x_test, y_test, skipped_test = _decode_split(raw.test, img_size, temporary, "test")
        skipped = skipped_train + skipped_test
        _warn_skipped(name, skipped)
        if len(y_train) == 0:
            raise UserError(f"dataset '{name}': no readable training images (root '{resolved_root}')")
        present = np.unique(y_train).tolist()
        count_classes_refused(name, len(present), [raw.classes[c] for c in present])
        empty = [raw.classes[c] for c in sorted(set(range(len(raw.classes))) - set(present))]
        if empty:
            warnings.warn(f"dataset '{name}': no readable training image in class(es) {', '.join(empty)}", stacklevel=2)
        meta: dict[str, Any] = {
            "name": name,
            "fingerprint": fingerprint,
            "classes": list(raw.classes),
            "img_size": img_size,
            "preprocess_version": PREPROCESS_VERSION,
            "root": str(resolved_root) if resolved_root else None,
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
            "skipped_images": len(skipped),
            "skipped_examples": skipped[:20],
            "prepare_seconds": round(time.perf_counter() - started, 3),
            **raw.notes,
        }
        if temporary is None:
            return PreparedDataset(
                name=name,
                group=entry.group,
                classes=list(raw.classes),
                img_size=img_size,
                x_train=x_train,
                y_train=y_train,
                x_test=x_test,
                y_test=y_test,
                fingerprint=fingerprint,
                meta=meta,
            )
        np.save(temporary / "y_train.npy", y_train)
        np.save(temporary / "y_test.npy", y_test)
        del x_train, x_test  # close the memmaps before the folder moves
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    assert final is not None
    _publish(temporary, final)
    if contents is not None:
        atomic_write_text(fingerprint, final.parent / f"{source_key}.latest")
    return _load_cached(final, name, entry.group)
