"""Where each kind of dataset gets its labelled images: bundled sets, image folders, torchvision classes.

A source only lists images and reads them one by one (`Source`); decoding, resizing and caching are done once,
for all of them, by `bench.data.prepare.prepare_dataset`. Datasets that ship without a test split get a fixed,
seeded, stratified one here (`HELDOUT_TEST_FRACTION` of each class), the same on every machine and for every
trial, so no trial seed ever moves an image between train and test.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data.decode import Source, open_image
from bench.data.splits import HELDOUT_SPLIT_SEED, HELDOUT_TEST_FRACTION, holdout_split
from bench.errors import UserError

# torchvision.datasets.folder.IMG_EXTENSIONS, copied so that scanning a folder does not import torch (3 s).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LoadRequest:
    name: str  # the dataset name as the user wrote it (for messages)
    root: Path | None  # resolved root folder; None for bundled sets
    download: bool
    img_size: int  # lets file readers decode large JPEGs at a reduced scale


@dataclass
class RawDataset:
    """Train and test images of one dataset, not yet decoded."""

    classes: list[str]
    train: Source
    test: Source
    notes: dict[str, Any] = field(default_factory=dict)  # how the split was made; lands in meta.json


def _heldout_note() -> dict[str, Any]:
    return {
        "split": "seeded held-out test split",
        "test_fraction": HELDOUT_TEST_FRACTION,
        "split_seed": HELDOUT_SPLIT_SEED,
    }


# ----------------------------------------------------------------------------------------------- digits


def load_digits_dataset(request: LoadRequest) -> RawDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 4-bit grayscale) -> upscaled RGB. No official
    test split: a fixed stratified quarter per class is test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = holdout_split(labels, HELDOUT_TEST_FRACTION, HELDOUT_SPLIT_SEED)

    def source(indices: np.ndarray) -> Source:
        return Source(
            length=len(indices),
            read=lambda i: (Image.fromarray(images[indices[i]]), int(labels[indices[i]])),
            describe=lambda i: f"digits[{indices[i]}]",
        )

    return RawDataset(
        classes=[str(d) for d in range(10)], train=source(train_idx), test=source(test_idx), notes=_heldout_note()
    )


# ---------------------------------------------------------------------------------------- photo_patches

PATCH_TRAIN_WIDTH_SHARE = 0.7  # train crops lie in the left 70% of each photo, test crops in the right 30%
PATCH_TRAIN_CROPS = 100
PATCH_TEST_CROPS = 30
PATCH_SIDE_RANGE = (0.10, 0.30)  # crop side as a share of the photo's shorter side
PATCH_MIN_SIDE = 16
PATCH_SEED = 0


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    """The natural colour photographs shipped inside scikit-image and scikit-learn (no download).
    Left out on purpose: grayscale and texture images, the microscopy/retina/astronomy ones (not natural
    photos), and motorcycle_right (the stereo twin of motorcycle_left)."""
    import skimage.data

    def sklearn_image(file_name: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            from sklearn.datasets import load_sample_image

            return load_sample_image(file_name)

        return load

    return {
        "astronaut": skimage.data.astronaut,
        "chelsea": skimage.data.chelsea,
        "china": sklearn_image("china.jpg"),
        "coffee": skimage.data.coffee,
        "flower": sklearn_image("flower.jpg"),
        "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
        "rocket": skimage.data.rocket,
    }


PHOTO_CLASSES = ("astronaut", "chelsea", "china", "coffee", "flower", "motorcycle", "rocket")

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)


def photo_patch_boxes(photo_name: str, width: int, height: int) -> tuple[list[Box], list[Box]]:
    """Fixed random square crops of one photo: (train boxes, test boxes). Train boxes end at or before the
    column `int(width * PATCH_TRAIN_WIDTH_SHARE)`, test boxes start at or after it, so no pixel is shared."""
    boundary = int(width * PATCH_TRAIN_WIDTH_SHARE)
    shorter = min(width, height)
    max_side = min(int(PATCH_SIDE_RANGE[1] * shorter), width - boundary, boundary, height)
    min_side = min(max(PATCH_MIN_SIDE, int(PATCH_SIDE_RANGE[0] * shorter)), max_side)
    rng = np.random.default_rng([PATCH_SEED, zlib.crc32(photo_name.encode())])

    def boxes(count: int, x_low: int, x_high: int) -> list[Box]:
        sides = rng.integers(min_side, max_side + 1, size=count)
        lefts = rng.integers(x_low, x_high - sides + 1)
        tops = rng.integers(0, height - sides + 1)
        return [(int(x), int(y), int(x + s), int(y + s)) for x, y, s in zip(lefts, tops, sides)]

    return boxes(PATCH_TRAIN_CROPS, 0, boundary), boxes(PATCH_TEST_CROPS, boundary, width)


def load_photo_patches(request: LoadRequest) -> RawDataset:
    """Classes are the source photos; a crop's label is the photo it came from. Train and test crops come
    from disjoint column ranges of each photo, so a test crop never overlaps a training crop."""
    loaders = _photo_loaders()
    photos = [np.ascontiguousarray(loaders[name]()) for name in PHOTO_CLASSES]
    items: dict[str, list[tuple[int, Box]]] = {"train": [], "test": []}
    for label, (name, photo) in enumerate(zip(PHOTO_CLASSES, photos)):
        train_boxes, test_boxes = photo_patch_boxes(name, width=photo.shape[1], height=photo.shape[0])
        items["train"] += [(label, box) for box in train_boxes]
        items["test"] += [(label, box) for box in test_boxes]

    def source(crops: list[tuple[int, Box]]) -> Source:
        def read(i: int) -> tuple[Image.Image, int]:
            label, (left, top, right, bottom) = crops[i]
            return Image.fromarray(photos[label][top:bottom, left:right]), label

        return Source(len(crops), read, lambda i: f"{PHOTO_CLASSES[crops[i][0]]}{crops[i][1]}")

    notes = {"split": "disjoint regions", "train_width_share": PATCH_TRAIN_WIDTH_SHARE, "seed": PATCH_SEED}
    return RawDataset(list(PHOTO_CLASSES), source(items["train"]), source(items["test"]), notes)


# ------------------------------------------------------------------------------------------ imagefolder


def resolve_folder(path: str, root: str | Path | None) -> Path:
    """A dataset folder as an absolute, symlink-free path: a relative `path` is taken relative to `root` when
    given, else to the current directory (so Ray workers with another working directory see the same folder)."""
    folder = Path(path).expanduser()
    if not folder.is_absolute() and root is not None:
        folder = Path(root).expanduser() / folder
    return Path(os.path.realpath(folder))


def class_folder_names(root: Path) -> list[str] | None:
    """The class folder names an image folder would use (those of ``train/`` when it has ``train/`` and
    ``test/``), by one directory listing: empty class folders are counted too. None when `root` is missing."""
    if not root.is_dir():
        return None
    side = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root
    return sorted(e.name for e in os.scandir(side) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    """Image files under `folder` (recursively, like torchvision's ImageFolder), sorted; hidden entries and
    files without an image extension are skipped."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [
            os.path.join(directory, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _class_files(folder: Path) -> dict[str, list[str]]:
    """Class name -> its image files; class folders without any image are dropped with a warning."""
    result: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = _image_files(Path(entry.path))
        if files:
            result[entry.name] = files
        else:
            warnings.warn(f"image folder {folder}: class folder '{entry.name}' holds no images; ignored", stacklevel=3)
    return result


def file_source(
    files: Sequence[str | bytes], labels: Sequence[int], img_size: int, names: Sequence[str] = ()
) -> Source:
    """Labelled image files, given by path or by their bytes (then ``names`` describes them)."""
    names = list(names) or [str(f) for f in files]
    labels = [int(label) for label in labels]
    return Source(len(files), lambda i: (open_image(files[i], img_size), labels[i]), lambda i: names[i], names, labels)


def load_image_folder(request: LoadRequest) -> RawDataset:
    """`<root>/<class>/...` or `<root>/train/<class>/...` + `<root>/test/<class>/...`.

    Classes are the (non-empty) class folders of the training side, sorted by name; the test side uses the
    same mapping (a class missing from test is fine; a test-only class is ignored with a warning). Without
    train/ and test/, a seeded stratified quarter of each class is held out as test.
    """
    root = request.root
    assert root is not None
    if not root.is_dir():
        raise UserError(f"dataset '{request.name}': root '{root}' does not exist")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    train_files = _class_files(root / "train" if has_split else root)
    if not train_files:
        where = root / "train" if has_split else root
        raise UserError(f"dataset '{request.name}': no class folders with images under '{where}'")
    classes = sorted(train_files)
    index = {name: i for i, name in enumerate(classes)}
    files = [f for name in classes for f in train_files[name]]
    labels = np.array([index[name] for name in classes for _ in train_files[name]], dtype=np.int64)
    if has_split:
        test_files = _class_files(root / "test")
        for extra in sorted(set(test_files) - set(index)):
            warnings.warn(f"image folder {root}: test class '{extra}' has no training images; ignored", stacklevel=2)
        kept = [name for name in classes if name in test_files]
        test_list = [f for name in kept for f in test_files[name]]
        test_labels = [index[name] for name in kept for _ in test_files[name]]
        return RawDataset(
            classes,
            file_source(files, labels, request.img_size),
            file_source(test_list, test_labels, request.img_size),
            {"split": "train/ and test/ folders"},
        )
    train_idx, test_idx = holdout_split(labels, HELDOUT_TEST_FRACTION, HELDOUT_SPLIT_SEED)
    return RawDataset(
        classes,
        file_source([files[i] for i in train_idx], labels[train_idx], request.img_size),
        file_source([files[i] for i in test_idx], labels[test_idx], request.img_size),
        _heldout_note(),
    )


# ------------------------------------------------------------------------------------------ torchvision


@dataclass(frozen=True)
class TorchvisionSpec:
    """How one torchvision class yields our train and test splits."""

    cls: str  # class name in torchvision.datasets
    train: tuple[dict[str, Any], ...]  # constructor kwargs of the official splits merged into our train split
    test: dict[str, Any] | None  # kwargs of the official test split; None: seeded held-out split of `train`
    classes: tuple[str, ...] | None = None  # for classes that carry no class names


def _class_names(dataset: Any, spec: TorchvisionSpec) -> list[str]:
    if spec.classes is not None:
        return list(spec.classes)
    for attribute in ("classes", "categories"):
        names = getattr(dataset, attribute, None)
        if names:
            return [str(n) for n in names]
    raise RuntimeError(f"torchvision {spec.cls} has no class names; declare them in its registry row")


def _targets(dataset: Any) -> np.ndarray:
    """Labels without decoding images (needed to make a held-out split before decoding)."""
    for attribute in ("targets", "y", "_labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return np.asarray(values, dtype=np.int64)
    raise RuntimeError(f"{type(dataset).__name__} exposes no labels; it cannot get a seeded test split")


def _item_name(dataset: Any, index: int, fallback: str) -> str:
    samples = getattr(dataset, "samples", None)  # ImageFolder-based: (path, label) pairs
    if samples:
        return str(samples[index][0])
    files = getattr(dataset, "_image_files", None)  # DTD, Flowers102, Food101, ...
    return str(files[index]) if files else fallback


def _concat_source(datasets: Sequence[Any], indices: np.ndarray | None, name: str) -> Source:
    """Items of several torchvision datasets one after another, optionally restricted to `indices`."""
    offsets = np.cumsum([0] + [len(d) for d in datasets])
    chosen = np.arange(offsets[-1]) if indices is None else indices

    def locate(i: int) -> tuple[Any, int]:
        flat = int(chosen[i])
        part = int(np.searchsorted(offsets, flat, side="right") - 1)
        return datasets[part], flat - int(offsets[part])

    def read(i: int) -> tuple[Image.Image, int]:
        dataset, local = locate(i)
        image, target = dataset[local]
        return image, int(target)

    def describe(i: int) -> str:
        dataset, local = locate(i)
        return _item_name(dataset, local, f"{name}[{int(chosen[i])}]")

    return Source(len(chosen), read, describe)


def load_torchvision(spec: TorchvisionSpec, request: LoadRequest) -> RawDataset:
    """Build torchvision's dataset objects (downloading only when asked) and expose their images."""
    name, root = request.name, request.root
    if root is None:
        raise UserError(f"dataset '{name}' needs a root folder (dataset_root) holding or receiving its files")
    if not request.download and not root.is_dir():
        raise UserError(f"dataset '{name}': root '{root}' does not exist (set download: true to fetch it)")
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, spec.cls)

    def build(kwargs: dict[str, Any]) -> Any:
        try:
            return dataset_class(root=str(root), download=request.download, **kwargs)
        except (RuntimeError, OSError, ValueError) as error:  # torchvision's "Dataset not found ..." and friends
            hint = "" if request.download else "; set download: true to fetch it"
            raise UserError(f"dataset '{name}': cannot load from root '{root}': {error}{hint}") from error

    train_parts = [build(kwargs) for kwargs in spec.train]
    classes = _class_names(train_parts[0], spec)
    if spec.test is not None:
        train = _concat_source(train_parts, None, name)
        test = _concat_source([build(spec.test)], None, name)
        notes: dict[str, Any] = {"split": "official", "train_splits": [dict(k) for k in spec.train]}
    else:
        labels = np.concatenate([_targets(part) for part in train_parts])
        train_idx, test_idx = holdout_split(labels, HELDOUT_TEST_FRACTION, HELDOUT_SPLIT_SEED)
        train = _concat_source(train_parts, train_idx, name)
        test = _concat_source(train_parts, test_idx, name)
        notes = _heldout_note()
    return RawDataset(classes, train, test, notes)
