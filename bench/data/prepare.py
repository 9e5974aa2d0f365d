"""Dataset registry and the data side of the transfer core.

Why it looks like this: a benchmark runs the same dataset through hundreds of trials, so every image is
decoded, converted to RGB, resized and centre-cropped ONCE (`prepare_dataset`), stored as a uint8 NCHW array,
and, with a `cache_dir`, kept on disk under a fingerprint that downstream caches (frozen features) key on.
Trials then only index arrays: the canonical validation split (`split_train_val`, fixed seed, shared by every
trial of a dataset) and the trial's stratified, nested training subset (`stratified_subset`, trial seed).

The registry is a table (`DatasetEntry` rows with a thin loader each), listed with wildcards:
- bundled, offline: `digits`, `photo_patches`;
- torchvision datasets by name, with `root` and `download` (never downloaded unless asked);
- `imagefolder:<path>`, class folders (see `bench.data.sources.load_image_folder`).

Groups follow VTAB (Zhai et al. 2019): `natural` = camera photographs of everyday scenes and objects,
`specialized` = images from specialist equipment (remote sensing, microscopy, medical), `structured` =
synthetic or isolated renderings whose task is about shape and layout. VTAB has no digit datasets; `digits`,
`mnist` and `fashion_mnist` are declared `structured`: they are neither photographs of scenes nor specialist
sensor images, but centred glyphs / silhouettes on a blank background, like VTAB's dSprites and smallNORB,
and they sit far from ImageNet. `imagefolder:<path>` is `natural` unless the name says otherwise with a
`?group=` suffix, e.g. `imagefolder:/data/blood_cells?group=specialized` (the suffix is not part of the path
and does not change the data or its fingerprint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
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
from bench.data.sources import (
    LoadRequest,
    RawDataset,
    TorchvisionSpec,
    load_digits_dataset,
    load_image_folder,
    load_photo_patches,
    load_torchvision,
)
from bench.data.splits import HELDOUT_SPLIT_SEED, HELDOUT_TEST_FRACTION, split_train_val, stratified_subset
from bench.utils.atomic import atomic_write_text
from bench.errors import UserError

__all__ = [
    "GROUPS",
    "HELDOUT_SPLIT_SEED",
    "HELDOUT_TEST_FRACTION",
    "IMAGEFOLDER_PREFIX",
    "PREPROCESS_VERSION",
    "DatasetEntry",
    "PreparedDataset",
    "check_dataset_name",
    "dataset_fingerprint",
    "dataset_group",
    "entry_as_dict",
    "list_datasets",
    "prepare_dataset",
    "split_train_val",
    "stratified_subset",
]

GROUPS = ("natural", "specialized", "structured")  # VTAB groups
IMAGEFOLDER_PREFIX = "imagefolder:"
_GROUP_SUFFIX = "?group="


@dataclass(frozen=True)
class DatasetEntry:
    """One row of the registry table."""

    name: str
    group: str
    description: str
    source: str
    licence: str
    offline: bool  # True: bundled, no download ever needed
    loader: Callable[[LoadRequest], RawDataset] = field(repr=False, compare=False)  # reads the raw images


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


# ------------------------------------------------------------------------------------------- registry


def _tv(
    name: str,
    cls: str,
    train: list[dict[str, Any]],
    test: dict[str, Any] | None,
    group: str,
    description: str,
    source: str,
    licence: str,
    classes: tuple[str, ...] | None = None,
) -> DatasetEntry:
    spec = TorchvisionSpec(cls=cls, train=tuple(train), test=test, classes=classes)
    return DatasetEntry(name, group, description, source, licence, False, functools.partial(load_torchvision, spec))


_TV_SOURCE = "torchvision.datasets."
_ENTRIES: tuple[DatasetEntry, ...] = (
    DatasetEntry(
        "digits", "structured", "8x8 handwritten digits, 10 classes, 1,797 images (seeded 25% test split)",
        "scikit-learn load_digits (UCI optical digits)", "CC BY 4.0", True, load_digits_dataset,
    ),
    DatasetEntry(
        "photo_patches", "natural",
        "crops of 7 natural photos, class = source photo; train/test from disjoint regions (100/30 per class)",
        "scikit-image data (astronaut, chelsea, coffee, rocket, motorcycle), scikit-learn sample images "
        "(china, flower)", "public domain / CC0; CC BY 2.0 (china, flower); Middlebury 2014 (motorcycle)",
        True, load_photo_patches,
    ),
    # Official splits where they exist; official val splits are merged into train, since bench carves its own
    # validation split from train (split_train_val). No official test split: seeded 25% held out.
    _tv("cifar10", "CIFAR10", [{"train": True}], {"train": False}, "natural",
        "tiny natural images, 10 classes", _TV_SOURCE + "CIFAR10", "no explicit licence (Krizhevsky 2009)"),
    _tv("cifar100", "CIFAR100", [{"train": True}], {"train": False}, "natural",
        "tiny natural images, 100 classes", _TV_SOURCE + "CIFAR100", "no explicit licence (Krizhevsky 2009)"),
    _tv("svhn", "SVHN", [{"split": "train"}], {"split": "test"}, "natural",
        "street-view house-number digits", _TV_SOURCE + "SVHN", "non-commercial use",
        classes=tuple(str(d) for d in range(10))),
    _tv("dtd", "DTD", [{"split": "train"}, {"split": "val"}], {"split": "test"}, "natural",
        "describable textures, 47 classes (partition 1)", _TV_SOURCE + "DTD", "research use"),
    _tv("flowers102", "Flowers102", [{"split": "train"}, {"split": "val"}], {"split": "test"}, "natural",
        "Oxford 102 flowers", _TV_SOURCE + "Flowers102", "no explicit licence"),
    _tv("oxford_pets", "OxfordIIITPet", [{"split": "trainval"}], {"split": "test"}, "natural",
        "Oxford-IIIT pets, 37 breeds", _TV_SOURCE + "OxfordIIITPet", "CC BY-SA 4.0"),
    _tv("eurosat", "EuroSAT", [{}], None, "specialized",
        "Sentinel-2 RGB land use, 10 classes (seeded 25% test split)", _TV_SOURCE + "EuroSAT", "MIT"),
    _tv("pcam", "PCAM", [{"split": "train"}, {"split": "val"}], {"split": "test"}, "specialized",
        "PatchCamelyon histopathology patches, metastasis or not (needs h5py)", _TV_SOURCE + "PCAM", "CC0",
        classes=("normal", "metastatic")),
    _tv("fgvc_aircraft", "FGVCAircraft", [{"split": "trainval"}], {"split": "test"}, "natural",
        "aircraft variants, 100 classes", _TV_SOURCE + "FGVCAircraft", "non-commercial research"),
    _tv("stanford_cars", "StanfordCars", [{"split": "train"}], {"split": "test"}, "natural",
        "car models, 196 classes (no longer downloadable: place the files by hand)", _TV_SOURCE + "StanfordCars",
        "non-commercial research"),
    _tv("food101", "Food101", [{"split": "train"}], {"split": "test"}, "natural",
        "food dishes, 101 classes", _TV_SOURCE + "Food101", "no explicit licence"),
    _tv("caltech101", "Caltech101", [{}], None, "natural",
        "objects, 101 categories (seeded 25% test split)", _TV_SOURCE + "Caltech101", "CC BY 4.0"),
    _tv("gtsrb", "GTSRB", [{"split": "train"}], {"split": "test"}, "natural",
        "German traffic signs, 43 classes", _TV_SOURCE + "GTSRB", "CC0",
        classes=tuple(f"{i:05d}" for i in range(43))),
    _tv("fashion_mnist", "FashionMNIST", [{"train": True}], {"train": False}, "structured",
        "28x28 grayscale clothing silhouettes, 10 classes", _TV_SOURCE + "FashionMNIST", "MIT"),
    _tv("mnist", "MNIST", [{"train": True}], {"train": False}, "structured",
        "28x28 grayscale handwritten digits", _TV_SOURCE + "MNIST", "CC BY-SA 3.0"),
    _tv("stl10", "STL10", [{"split": "train"}], {"split": "test"}, "natural",
        "96x96 natural images, 10 classes (labelled part)", _TV_SOURCE + "STL10", "no explicit licence"),
    _tv("country211", "Country211", [{"split": "train"}, {"split": "valid"}], {"split": "test"}, "natural",
        "geolocation, 211 countries (YFCC100M photos)", _TV_SOURCE + "Country211", "per-image (YFCC100M)"),
)


def _index(entries: tuple[DatasetEntry, ...]) -> dict[str, DatasetEntry]:
    table: dict[str, DatasetEntry] = {}
    for entry in entries:
        if entry.name in table:
            raise RuntimeError(f"dataset '{entry.name}' registered twice")
        if entry.group not in GROUPS:
            raise RuntimeError(f"dataset '{entry.name}': group '{entry.group}' is not one of {GROUPS}")
        table[entry.name] = entry
    return table


_REGISTRY = _index(_ENTRIES)


def list_datasets(pattern: str = "*") -> list[DatasetEntry]:
    """Registry rows whose name matches the fnmatch `pattern`, sorted by name (`imagefolder:` is not a row)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY) if fnmatch.fnmatchcase(name, pattern)]


def _split_imagefolder(name: str) -> tuple[str, str]:
    """`imagefolder:<path>[?group=<group>]` -> (path, group)."""
    rest = name[len(IMAGEFOLDER_PREFIX) :]
    path, suffix, group = rest.rpartition(_GROUP_SUFFIX)
    if not suffix:
        path, group = rest, "natural"
    if not path.strip():
        raise UserError(f"dataset '{name}': expected 'imagefolder:<path>', the path is empty")
    if group not in GROUPS:
        raise UserError(f"dataset '{name}': group '{group}' is not one of {', '.join(GROUPS)}")
    return path, group


def check_dataset_name(name: str) -> None:
    """UserError for an unknown name (with close matches); any `imagefolder:<path>` passes (path not checked)."""
    if not isinstance(name, str):
        raise UserError(f"dataset name must be a string, got {name!r}")
    if name.startswith(IMAGEFOLDER_PREFIX):
        _split_imagefolder(name)
        return
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown dataset '{name}'{hint} (known: {', '.join(sorted(_REGISTRY))}, or imagefolder:<path>)"
        )


def dataset_group(name: str) -> str:
    """The declared VTAB group; `imagefolder:` sets are `natural` unless named `imagefolder:<path>?group=<g>`."""
    check_dataset_name(name)
    if name.startswith(IMAGEFOLDER_PREFIX):
        return _split_imagefolder(name)[1]
    return _REGISTRY[name].group


# ------------------------------------------------------------------------------------------ preparation


def _resolve(name: str, root: str | None) -> tuple[DatasetEntry, str, Path | None]:
    """(registry row, name used in the fingerprint, resolved root). A relative image-folder path is taken
    relative to `root` when one is given, else to the current directory; resolution makes it absolute so
    that Ray workers with another working directory see the same folder and the same fingerprint."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        path, group = _split_imagefolder(name)
        folder = Path(path).expanduser()
        if not folder.is_absolute() and root is not None:
            folder = Path(root).expanduser() / folder
        entry = DatasetEntry(name, group, "class folders", str(folder), "user data", True, load_image_folder)
        return entry, "imagefolder", Path(os.path.realpath(folder))
    entry = _REGISTRY[name]
    if entry.offline:
        return entry, name, None
    return entry, name, Path(os.path.realpath(Path(root).expanduser())) if root is not None else None


def _source_key(key_name: str, root: Path | None, img_size: int) -> str:
    """Which dataset, where, at which size and preprocessing: the part of the key known without the files."""
    blob = json.dumps(
        {"name": key_name, "root": str(root) if root else None, "img_size": img_size, "preprocess": PREPROCESS_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def contents_digest(key_name: str, root: Path | None) -> str | None:
    """For an image folder: sha256 of every file's relative path, size and modification time under it (a stat
    walk, no reads), so an image added, removed, replaced or edited changes it. None when the folder is not on
    disk, and for torchvision datasets: their root is often shared by many datasets (a walk would cover them
    all) and their files are fixed releases that torchvision checks itself."""
    if key_name != "imagefolder" or root is None or not root.exists():
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


def dataset_fingerprint(name: str, img_size: int, root: str | None = None) -> str:
    """The `fingerprint` that `prepare_dataset` would give, without decoding anything (a stat walk of the root)."""
    check_dataset_name(name)
    _, key_name, resolved_root = _resolve(name, root)
    return _fingerprint(_source_key(key_name, resolved_root, img_size), contents_digest(key_name, resolved_root))


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
        name=name, group=group, classes=list(meta["classes"]), img_size=int(meta["img_size"]),
        fingerprint=meta["fingerprint"], meta=meta, **arrays,
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
    entry, key_name, resolved_root = _resolve(name, root)
    source_key = _source_key(key_name, resolved_root, img_size)
    contents = contents_digest(key_name, resolved_root)
    fingerprint = _fingerprint(source_key, contents)

    final: Path | None = None
    if cache_dir is not None:
        datasets_dir = Path(os.path.abspath(Path(cache_dir).expanduser())) / "datasets"
        latest = datasets_dir / f"{source_key}.latest"
        if resolved_root is not None and contents is None and latest.is_file():
            # No files here (a worker node, a moved disk): the newest preparation of this source stands in.
            with contextlib.suppress(OSError):
                fingerprint = latest.read_text().strip() or fingerprint
        final = datasets_dir / fingerprint
        if final.is_dir():
            return _load_cached(final, name, entry.group)

    started = time.perf_counter()
    raw = entry.loader(LoadRequest(name=name, root=resolved_root, download=download, img_size=img_size))
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
        empty = [raw.classes[c] for c in sorted(set(range(len(raw.classes))) - set(np.unique(y_train).tolist()))]
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
                name=name, group=entry.group, classes=list(raw.classes), img_size=img_size, x_train=x_train,
                y_train=y_train, x_test=x_test, y_test=y_test, fingerprint=fingerprint, meta=meta,
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


def entry_as_dict(entry: DatasetEntry) -> dict[str, Any]:
    """A registry row without its loader (for `bench list datasets` tables)."""
    return {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry) if f.name != "loader"}
