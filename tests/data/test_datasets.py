"""Tests of bench.data.prepare: registry, preparation (bundled, image folders, torchvision layouts), cache, splits.

Real images only: /work/shared/data (or $BENCH_DATA) and the photos shipped by scikit-image/scikit-learn.
torchvision's own loaders are reached without a download by writing the on-disk layout they expect.
"""

from __future__ import annotations

import inspect
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR, DATA, require
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.data import (
    GROUPS,
    PreparedDataset,
    check_dataset_name,
    dataset_fingerprint,
    dataset_group,
    list_datasets,
    prepare_dataset,
    shards,
    split_train_val,
    stratified_subset,
)
from bench.data import prepare as datasets
from bench.data.decode import resize_center_crop
from bench.data.shards import ImageRows
from bench.data.sources import PATCH_TRAIN_WIDTH_SHARE, PHOTO_CLASSES, _photo_loaders, photo_patch_boxes
from bench.errors import UserError

PBC = DATA / "pbc_blood_cells"


def needs_data(folder: Path = CIFAR / "train") -> None:
    """Go on where the shared test images are; else skip, or fail under CI=true (conftest.require)."""
    __tracebackhide__ = True

    require(folder.is_dir(), f"test images not found at {folder} (BENCH_DATA={DATA})")


TORCHVISION_NAMES = [
    "cifar10",
    "cifar100",
    "svhn",
    "dtd",
    "flowers102",
    "oxford_pets",
    "eurosat",
    "pcam",
    "fgvc_aircraft",
    "stanford_cars",
    "food101",
    "caltech101",
    "gtsrb",
    "fashion_mnist",
    "mnist",
    "stl10",
    "country211",
]


def rgb(path: Path) -> np.ndarray:
    """A file decoded straight with PIL, as CHW (the expected pixels when no resize is needed)."""
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def cifar_files(class_name: str, count: int, split: str = "train") -> list[Path]:
    return sorted((CIFAR / split / class_name).glob("*.jpg"))[:count]


def row_hashes(x: np.ndarray) -> set[bytes]:
    return {bytes(row) for row in np.asarray(x).reshape(len(x), -1)}


# ------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_required_dataset_sorted_with_valid_rows() -> None:
    names = [entry.name for entry in list_datasets()]
    assert names == sorted(names)
    assert set(TORCHVISION_NAMES + ["digits", "photo_patches"]) <= set(names)
    for entry in list_datasets():
        assert entry.group in GROUPS and entry.description and entry.source and entry.licence
        assert entry.offline == (entry.name in ("digits", "photo_patches"))
    assert [e.name for e in list_datasets("cifar*")] == ["cifar10", "cifar100"]
    assert list_datasets("nothing*") == []


def test_torchvision_rows_name_real_classes_and_valid_arguments() -> None:
    import torchvision.datasets

    for name in TORCHVISION_NAMES:
        spec = list_datasets(name)[0].loader.args[0]  # functools.partial(load_torchvision, spec)
        dataset_class = getattr(torchvision.datasets, spec.cls)
        for kwargs in [*spec.train, *([spec.test] if spec.test is not None else [])]:
            inspect.signature(dataset_class).bind(root="r", download=False, **kwargs)  # TypeError on a typo


def test_groups_follow_the_documented_choices() -> None:
    assert dataset_group("digits") == "structured"
    assert dataset_group("photo_patches") == "natural"
    assert dataset_group("eurosat") == "specialized" and dataset_group("pcam") == "specialized"
    assert dataset_group("cifar100") == "natural"
    assert dataset_group("imagefolder:/some/where") == "natural"
    assert dataset_group("imagefolder:/data/cells?group=specialized") == "specialized"
    with pytest.raises(UserError, match="group 'medical' is not one of"):
        dataset_group("imagefolder:/data/cells?group=medical")


def test_unknown_names_are_user_errors_with_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'cifar'; did you mean cifar10, cifar100"):
        check_dataset_name("cifar")
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        prepare_dataset("imagenet", 32)
    with pytest.raises(UserError, match="path is empty"):
        check_dataset_name("imagefolder:")
    check_dataset_name("imagefolder:/does/not/matter")  # the path is only checked when prepared
    check_dataset_name("eurosat")


# ------------------------------------------------------------------------------------------- bundled


def test_digits_shapes_split_and_speed() -> None:
    import sklearn.datasets  # noqa: F401  (import time is not preparation time)

    data = prepare_dataset("digits", 64)
    assert data.meta["prepare_seconds"] < 2.0
    assert isinstance(data, PreparedDataset) and data.group == "structured"
    assert data.classes == [str(d) for d in range(10)] and data.n_classes == 10
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (3, 64, 64)
    assert data.y_train.dtype == np.int64 and data.x_train.shape[0] == len(data.y_train)
    total = len(sklearn.datasets.load_digits().target)  # every image of scikit-learn's digits, none lost
    assert len(data.y_train) + len(data.y_test) == total
    assert 0.24 < len(data.y_test) / total < 0.26
    assert (data.x_train[:, 0] == data.x_train[:, 2]).all()  # grayscale replicated into RGB
    assert data.x_train[:].max() > 200  # 0..16 rescaled to 0..255
    for label in range(10):  # stratified: every class a quarter in test
        n_class = (data.y_train == label).sum() + (data.y_test == label).sum()
        assert abs((data.y_test == label).sum() - n_class / 4) <= 1
    again = prepare_dataset("digits", 64)  # the canonical split does not move
    assert np.array_equal(again.y_test, data.y_test) and np.array_equal(again.x_test, data.x_test)
    assert not row_hashes(data.x_test) <= row_hashes(data.x_train)


def test_fingerprint_depends_on_size_and_resolved_root(tmp_path: Path) -> None:
    assert prepare_dataset("digits", 16).fingerprint != prepare_dataset("digits", 24).fingerprint
    assert prepare_dataset("digits", 16).fingerprint == datasets.dataset_fingerprint("digits", 16)
    for label in ("a", "b"):  # two classes: fewer is refused
        folder = tmp_path / "set" / label
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "one.png")
    by_path = prepare_dataset(f"imagefolder:{tmp_path / 'set'}", 8)
    by_root = prepare_dataset("imagefolder:set?group=structured", 8, root=str(tmp_path))
    assert by_path.fingerprint == by_root.fingerprint and by_root.group == "structured"
    assert datasets.dataset_fingerprint(f"imagefolder:{tmp_path / 'set'}", 8) == by_path.fingerprint
    shutil.copytree(tmp_path / "set", tmp_path / "other")
    assert prepare_dataset(f"imagefolder:{tmp_path / 'other'}", 8).fingerprint != by_path.fingerprint


def test_photo_patches_classes_shapes_and_disjoint_regions() -> None:
    data = prepare_dataset("photo_patches", 32)
    assert data.classes == list(PHOTO_CLASSES) and data.group == "natural"
    assert data.x_train.shape == (700, 3, 32, 32) and data.x_test.shape == (210, 3, 32, 32)
    assert np.bincount(data.y_train).tolist() == [100] * 7 and np.bincount(data.y_test).tolist() == [30] * 7
    photos = _photo_loaders()
    for label, name in enumerate(PHOTO_CLASSES):
        photo = photos[name]()
        height, width = photo.shape[:2]
        train_boxes, test_boxes = photo_patch_boxes(name, width, height)
        boundary = int(width * PATCH_TRAIN_WIDTH_SHARE)
        assert all(left >= 0 and right <= boundary and bottom <= height for left, _, right, bottom in train_boxes)
        assert all(boundary <= left and right <= width and bottom <= height for left, _, right, bottom in test_boxes)
        assert len({right - left for left, _, right, _ in train_boxes}) > 10  # varied scales
        # the prepared pixels really are those boxes: recompute the first crop of each split
        for boxes, x, y in ((train_boxes, data.x_train, data.y_train), (test_boxes, data.x_test, data.y_test)):
            left, top, right, bottom = boxes[0]
            expected = resize_center_crop(Image.fromarray(photo[top:bottom, left:right]), 32)
            assert np.array_equal(x[np.flatnonzero(y == label)[0]], expected)
    assert not row_hashes(data.x_test) & row_hashes(data.x_train)
    assert np.array_equal(prepare_dataset("photo_patches", 32).x_test, data.x_test)  # fixed crops


# --------------------------------------------------------------------------------------- image folders


def test_imagefolder_with_train_and_test_folders_cifar10() -> None:
    needs_data()
    data = prepare_dataset(f"imagefolder:{CIFAR}", 32)
    classes = sorted(p.name for p in (CIFAR / "train").iterdir())
    assert data.classes == classes and data.group == "natural"
    assert np.bincount(data.y_train).tolist() == [300] * 10 and np.bincount(data.y_test).tolist() == [300] * 10
    assert data.x_train.shape == (3000, 3, 32, 32) and data.x_train.dtype == np.uint8
    # files in sorted order, same class mapping on both sides; 32x32 at img_size 32 = the file's own pixels
    assert np.array_equal(data.x_train[0], rgb(cifar_files("airplane", 1)[0]))
    assert np.array_equal(data.x_test[-1], rgb(sorted((CIFAR / "test" / "truck").glob("*.jpg"))[-1]))
    assert data.y_test[-1] == classes.index("truck")
    assert data.meta["split"] == "train/ and test/ folders" and data.meta["skipped_images"] == 0


def test_imagefolder_seeded_split_pbc_blood_cells_is_stratified_disjoint_and_deterministic() -> None:
    needs_data(PBC)
    first = prepare_dataset(f"imagefolder:{PBC}", 16)
    assert first.classes == sorted(p.name for p in PBC.iterdir() if p.is_dir())
    assert np.bincount(first.y_train).tolist() == [225] * 8 and np.bincount(first.y_test).tolist() == [75] * 8
    assert not row_hashes(first.x_test) & row_hashes(first.x_train)  # no image on both sides
    second = prepare_dataset(f"imagefolder:{PBC}?group=specialized", 16)
    assert second.group == "specialized"
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, field), getattr(second, field))


def _write_odd_folder(root: Path) -> None:
    """train/a: 4 JPEGs + a truncated JPEG + a text file; train/b: grayscale, 16-bit, palette, RGBA PNGs;
    train/c: empty; test/a: 2 JPEGs; test/d: a class that has no training images."""
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir()
    (root / "train" / "c").mkdir()
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "d").mkdir()
    for i, path in enumerate(cifar_files("cat", 4)):
        shutil.copy(path, root / "train" / "a" / f"{i}.jpg")
    whole = cifar_files("dog", 1)[0].read_bytes()
    (root / "train" / "a" / "4_corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray).save(root / "train" / "b" / "gray.png")
    Image.fromarray(np.full((32, 32), 51400, dtype=np.uint16)).save(root / "train" / "b" / "deep.png")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    palette.save(root / "train" / "b" / "pal.png", transparency=0)  # index 0 (red) is transparent
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(root / "train" / "b" / "rgba.png")
    for i, path in enumerate(cifar_files("cat", 2, split="test")):
        shutil.copy(path, root / "test" / "a" / f"{i}.jpg")
    shutil.copy(cifar_files("dog", 1, split="test")[0], root / "test" / "d" / "0.jpg")


def test_imagefolder_odd_files_corrupt_empty_and_modes(tmp_path: Path) -> None:
    needs_data()
    _write_odd_folder(tmp_path / "odd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare_dataset(f"imagefolder:{tmp_path / 'odd'}", 32)
    messages = " | ".join(str(w.message) for w in caught)
    assert "'c' holds no images" in messages
    assert "test class 'd' has no training images" in messages
    assert "skipped 1 unreadable image(s)" in messages and "4_corrupt.jpg" in messages
    assert data.classes == ["a", "b"] and data.meta["skipped_images"] == 1
    assert data.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and data.y_test.tolist() == [0, 0]
    sources = sorted((tmp_path / "odd" / "train" / "a").glob("[0-3].jpg"))
    assert all(np.array_equal(data.x_train[i], rgb(p)) for i, p in enumerate(sources))
    deep, gray, pal, rgba = data.x_train[4:]  # class b, files sorted by name
    assert (deep == 200).all()  # 16-bit 51400 scaled to 8 bits, not clipped to 255
    assert np.array_equal(gray[0], np.arange(32 * 32, dtype=np.uint8).reshape(32, 32))
    assert (gray[0] == gray[1]).all() and (gray[0] == gray[2]).all()
    assert (pal == 255).all() and (rgba == 255).all()  # transparency composited on white


def test_imagefolder_missing_root_and_empty_root(tmp_path: Path) -> None:
    missing = os.path.realpath(tmp_path / "x")
    with pytest.raises(UserError) as error:
        prepare_dataset(f"imagefolder:{missing}", 32)
    assert str(error.value) == f"dataset 'imagefolder:{missing}': root '{missing}' does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders with images"):
        prepare_dataset(f"imagefolder:{tmp_path / 'empty'}", 32)


# ------------------------------------------------------------------------------------------------ cache


def test_cache_writes_once_then_memory_maps_without_decoding(tmp_path: Path) -> None:
    needs_data()
    source = tmp_path / "images"
    for class_name in ("bird", "ship"):
        (source / class_name).mkdir(parents=True)
        for path in cifar_files(class_name, 6):
            shutil.copy(path, source / class_name / path.name)
    (source / "ship" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    name = f"imagefolder:{source}"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        first = prepare_dataset(name, 24, cache_dir=tmp_path / "cache")
    folder = tmp_path / "cache" / "datasets" / first.fingerprint
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "test-00000.json",
        "test-00000.npy",
        "train-00000.json",
        "train-00000.npy",
        "y_test.npy",
        "y_train.npy",
    ]
    # one folder, no temporary left; beside it the pointer a root-less cache hit follows
    assert [p.name for p in (tmp_path / "cache" / "datasets").iterdir() if p.is_dir()] == [first.fingerprint]
    shards = [np.load(folder / f"{split}-00000.npy", mmap_mode="r") for split in ("train", "test")]
    assert [len(s) for s in shards] == [len(first.y_train), len(first.y_test)]  # trimmed after the skip
    assert first.meta["skipped_images"] == 1 and len(first.y_train) + len(first.y_test) == 12
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        in_memory = prepare_dataset(name, 24)
    shutil.rmtree(source)  # a cache hit must not need (or decode) the images
    second = prepare_dataset(name, 24, cache_dir=tmp_path / "cache")
    assert isinstance(second.x_train, ImageRows) and isinstance(second.x_test, ImageRows)
    assert second.fingerprint == first.fingerprint and second.classes == ["bird", "ship"]
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(second, field), getattr(in_memory, field))
    assert second.meta["cache_path"] == str(folder)


def test_changed_files_under_a_root_never_hit_the_old_cache(tmp_path: Path) -> None:
    """The fingerprint (and every frozen-feature key built on it) covers the files: adding or editing an image
    prepares the dataset again; with the root gone, the newest preparation is used."""
    needs_data()
    source = tmp_path / "images"
    for class_name in ("bird", "ship"):
        (source / class_name).mkdir(parents=True)
        for path in cifar_files(class_name, 6):
            shutil.copy(path, source / class_name / path.name)
    name, cache = f"imagefolder:{source}", tmp_path / "cache"
    first = prepare_dataset(name, 24, cache_dir=cache)
    assert prepare_dataset(name, 24, cache_dir=cache).fingerprint == first.fingerprint  # unchanged: a hit
    extra = cifar_files("bird", 7)[-1]
    shutil.copy(extra, source / "bird" / "extra.jpg")
    added = prepare_dataset(name, 24, cache_dir=cache)
    assert added.fingerprint != first.fingerprint
    assert len(added.y_train) + len(added.y_test) == len(first.y_train) + len(first.y_test) + 1
    edited_path = source / "ship" / sorted(p.name for p in (source / "ship").iterdir())[0]
    edited_path.write_bytes(extra.read_bytes())  # same name, other picture
    edited = prepare_dataset(name, 24, cache_dir=cache)
    assert edited.fingerprint not in (first.fingerprint, added.fingerprint)
    assert dataset_fingerprint(name, 24) == edited.fingerprint
    shutil.rmtree(source)
    assert prepare_dataset(name, 24, cache_dir=cache).fingerprint == edited.fingerprint  # the newest


def test_concurrent_preparation_shares_one_cache_folder(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: prepare_dataset("digits", 16, cache_dir=tmp_path), range(2)))
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [results[0].fingerprint]
    assert np.array_equal(results[0].x_train, results[1].x_train)


def test_publish_keeps_the_first_finished_folder(tmp_path: Path) -> None:
    final, late = tmp_path / "final", tmp_path / "late"
    final.mkdir()
    (final / "meta.json").write_text("first")
    late.mkdir()
    shards.publish(late, final, {"name": "second"}, [])
    assert (final / "meta.json").read_text() == "first" and not late.exists()


# ------------------------------------------------------------------------------------------ torchvision


def test_eurosat_layout_through_torchvision(tmp_path: Path) -> None:
    needs_data()
    sources = {}
    for land_use, cifar_class in (("AnnualCrop", "deer"), ("Forest", "frog"), ("River", "ship")):
        folder = tmp_path / "eurosat" / "2750" / land_use
        folder.mkdir(parents=True)
        for i, path in enumerate(cifar_files(cifar_class, 8)):
            shutil.copy(path, folder / f"{land_use}_{i}.jpg")
        sources[land_use] = [rgb(p) for p in sorted(folder.iterdir())]
    data = prepare_dataset("eurosat", 32, root=str(tmp_path))
    assert data.classes == ["AnnualCrop", "Forest", "River"] and data.group == "specialized"
    assert np.bincount(data.y_train).tolist() == [6, 6, 6] and np.bincount(data.y_test).tolist() == [2, 2, 2]
    assert data.meta["split"] == "seeded held-out test split"
    for label, land_use in enumerate(data.classes):  # every image lands once, under its own class
        prepared = row_hashes(data.x_train[data.y_train == label]) | row_hashes(data.x_test[data.y_test == label])
        assert prepared == row_hashes(np.stack(sources[land_use]))


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 + array.ndim  # unsigned bytes, ndim dimensions
    path.write_bytes(np.array([magic, *array.shape], dtype=">i4").tobytes() + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_through_torchvision(tmp_path: Path) -> None:
    needs_data()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    classes = ["airplane", "cat", "ship"]
    splits = {}
    for split, prefix, count in (("train", "train", 5), ("test", "t10k", 2)):
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in cifar_files(name, count, split=split):
                images.append(np.asarray(Image.open(path).convert("L").resize((28, 28), Image.Resampling.BICUBIC)))
                labels.append(label)
        splits[split] = (np.stack(images), np.array(labels))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", splits[split][0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", splits[split][1])
    with pytest.warns(UserWarning, match="no readable training image in class.*Dress"):  # 3 of 10 classes used
        data = prepare_dataset("fashion_mnist", 28, root=str(tmp_path))
    assert data.classes[0] == "T-shirt/top" and data.n_classes == 10 and data.group == "structured"
    assert data.y_train.tolist() == splits["train"][1].tolist()
    assert np.array_equal(data.x_train, np.repeat(splits["train"][0][:, None], 3, axis=1))
    assert np.array_equal(data.x_test[:, 1], splits["test"][0])


def test_torchvision_missing_root_or_files_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"dataset 'eurosat': root '.*nowhere' does not exist"):
        prepare_dataset("eurosat", 32, root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"'eurosat': cannot load from root .*Dataset not found.*download: true"):
        prepare_dataset("eurosat", 32, root=str(tmp_path))
    with pytest.raises(UserError, match="dataset 'mnist' needs a root folder"):
        prepare_dataset("mnist", 32)
    with pytest.raises(UserError) as error:
        prepare_dataset("cifar10", 32, root=str(tmp_path))
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


# ---------------------------------------------------------------------------------------------- splits


def test_split_train_val_is_disjoint_stratified_and_fixed() -> None:
    sizes = {0: 1, 1: 2, 2: 3, 3: 10, 4: 25}
    y = np.random.default_rng(7).permutation(np.repeat(list(sizes), list(sizes.values())))
    train, val = split_train_val(y, 0.1)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    assert not set(train) & set(val) and list(train) == sorted(train) and list(val) == sorted(val)
    # per class: round half up of 10%, at least one when >= 2 images, none from a single-image class
    assert [int((y[val] == c).sum()) for c in sizes] == [0, 1, 1, 1, 3]
    again_train, again_val = split_train_val(y, 0.1)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(split_train_val(y, 0.1, split_seed=1)[1], val)
    assert [int((y[split_train_val(y, 0.9)[0]] == c).sum()) for c in sizes] == [1, 1, 1, 1, 2]  # one stays
    assert len(split_train_val(y, 0.0)[1]) == 0
    with pytest.raises(ValueError):
        split_train_val(y, 1.0)


def test_stratified_subset_counts_and_arguments() -> None:
    y = np.repeat([0, 1, 2], [3, 25, 100])
    assert np.bincount(y[stratified_subset(y, seed=0, data_fraction=0.1)]).tolist() == [1, 3, 10]  # 2.5 -> 3
    assert np.bincount(y[stratified_subset(y, seed=0, shots=5)]).tolist() == [3, 5, 5]  # a class gives what it has
    assert len(stratified_subset(y, seed=0, data_fraction=1.0)) == len(y)
    assert not np.array_equal(stratified_subset(y, seed=0, shots=5), stratified_subset(y, seed=1, shots=5))
    for bad in (
        {},
        {"data_fraction": 0.5, "shots": 2},
        {"data_fraction": 0.0},
        {"data_fraction": 1.5},
        {"shots": 0},
        {"shots": 2.5},
    ):
        with pytest.raises(ValueError):
            stratified_subset(y, seed=0, **bad)


labels_strategy = st.lists(st.integers(0, 5), min_size=1, max_size=300).map(lambda v: np.array(v, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(
    y=labels_strategy,
    seed=st.integers(0, 2**40),
    f1=st.floats(0.01, 1.0),
    f2=st.floats(0.01, 1.0),
    s1=st.integers(1, 30),
    s2=st.integers(1, 30),
)
def test_subsets_are_stratified_nested_and_reproducible(y, seed, f1, f2, s1, s2) -> None:
    (f_small, f_big), (s_small, s_big) = sorted((f1, f2)), sorted((s1, s2))
    small, big = (stratified_subset(y, seed=seed, data_fraction=f) for f in (f_small, f_big))
    few, many = (stratified_subset(y, seed=seed, shots=s) for s in (s_small, s_big))
    assert set(small) <= set(big) and set(few) <= set(many)
    assert np.array_equal(big, stratified_subset(y, seed=seed, data_fraction=f_big))
    for subset in (small, big, few, many):
        assert list(subset) == sorted(set(subset.tolist()))
    for label in np.unique(y):
        n_class = int((y == label).sum())
        assert (y[big] == label).sum() == max(1, int(np.floor(f_big * n_class + 0.5 + 1e-9)))
        assert (y[many] == label).sum() == min(s_big, n_class)
