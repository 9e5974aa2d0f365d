"""The dataset registry: a table of named datasets, each a row with a thin loader, listed with wildcards.

Bundled and offline: ``digits``, ``photo_patches``. Torchvision datasets by name, with ``root`` and
``download`` (never downloaded unless asked). ``imagefolder:<path>[?group=<group>]``: class folders.
``hf:<hub id | path | imagefolder:path>``: the Hugging Face ``datasets`` library (``bench.data.hf``).
Every name may carry options after a ``?`` (``bench.data.names``), among them ``display_name``.
Groups follow VTAB (Zhai et al. 2019): ``natural`` (camera photographs), ``specialized`` (specialist
equipment: remote sensing, microscopy, medical), ``structured`` (synthetic or isolated renderings: shape and
layout). ``digits``, ``mnist`` and ``fashion_mnist`` are ``structured``: centred glyphs on a blank background,
like VTAB's dSprites and smallNORB. ``imagefolder:`` sets are ``natural`` unless their ``?group=`` says
otherwise (the suffix changes neither the data nor its fingerprint); so are ``hf:`` sets.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.data.names import (
    HF_PREFIX,
    DatasetNameError,
    DatasetRef,
    parse_dataset_name,
)
from bench.data.sources import (
    LoadRequest,
    RawDataset,
    TorchvisionSpec,
    class_folder_names,
    load_digits_dataset,
    load_photo_patches,
    load_torchvision,
    resolve_folder,
)
from bench.errors import UserError
from bench.plugins import Registry

GROUPS = ("natural", "specialized", "structured")  # VTAB groups
MIN_CLASSES = 2  # a dataset with fewer classes is refused: its top-1 would mean nothing


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
    # Documented images, train + test as bench merges the splits (official val splits in train); None: not known.
    # Read by `bench validate --plan` to size a run before the files exist (bench.suite.plan).
    images: int | None = None


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
    images: int | None = None,
) -> DatasetEntry:
    spec = TorchvisionSpec(cls=cls, train=tuple(train), test=test, classes=classes)
    loader = functools.partial(load_torchvision, spec)
    return DatasetEntry(name, group, description, source, licence, False, loader, images=images)


_TV_SOURCE = "torchvision.datasets."
_ENTRIES: tuple[DatasetEntry, ...] = (
    DatasetEntry(
        "digits",
        "structured",
        "8x8 handwritten digits, 10 classes, 1,797 images (seeded 25% test split)",
        "scikit-learn load_digits (UCI optical digits)",
        "CC BY 4.0",
        True,
        load_digits_dataset,
        images=1797,
    ),
    DatasetEntry(
        "photo_patches",
        "natural",
        "crops of 7 natural photos, class = source photo; train/test from disjoint regions (100/30 per class)",
        "scikit-image data (astronaut, chelsea, coffee, rocket, motorcycle), scikit-learn sample images "
        "(china, flower)",
        "public domain / CC0; CC BY 2.0 (china, flower); Middlebury 2014 (motorcycle)",
        True,
        load_photo_patches,
        images=910,  # 7 photos x (100 train + 30 test crops)
    ),
    # Official splits where they exist; official val splits are merged into train, since bench carves its own
    # validation split from train (split_train_val). No official test split: seeded 25% held out.
    _tv(
        "cifar10",
        "CIFAR10",
        [{"train": True}],
        {"train": False},
        "natural",
        "tiny natural images, 10 classes",
        _TV_SOURCE + "CIFAR10",
        "no explicit licence (Krizhevsky 2009)",
        images=60000,  # 50,000 train + 10,000 test
    ),
    _tv(
        "cifar100",
        "CIFAR100",
        [{"train": True}],
        {"train": False},
        "natural",
        "tiny natural images, 100 classes",
        _TV_SOURCE + "CIFAR100",
        "no explicit licence (Krizhevsky 2009)",
        images=60000,  # 50,000 + 10,000
    ),
    _tv(
        "svhn",
        "SVHN",
        [{"split": "train"}],
        {"split": "test"},
        "natural",
        "street-view house-number digits",
        _TV_SOURCE + "SVHN",
        "non-commercial use",
        classes=tuple(str(d) for d in range(10)),
        images=99289,  # 73,257 train + 26,032 test (extra not used)
    ),
    _tv(
        "dtd",
        "DTD",
        [{"split": "train"}, {"split": "val"}],
        {"split": "test"},
        "natural",
        "describable textures, 47 classes (partition 1)",
        _TV_SOURCE + "DTD",
        "research use",
        images=5640,  # 1,880 train + 1,880 val + 1,880 test
    ),
    _tv(
        "flowers102",
        "Flowers102",
        [{"split": "train"}, {"split": "val"}],
        {"split": "test"},
        "natural",
        "Oxford 102 flowers",
        _TV_SOURCE + "Flowers102",
        "no explicit licence",
        images=8189,  # 1,020 train + 1,020 val + 6,149 test
    ),
    _tv(
        "oxford_pets",
        "OxfordIIITPet",
        [{"split": "trainval"}],
        {"split": "test"},
        "natural",
        "Oxford-IIIT pets, 37 breeds",
        _TV_SOURCE + "OxfordIIITPet",
        "CC BY-SA 4.0",
        images=7349,  # 3,680 trainval + 3,669 test
    ),
    _tv(
        "eurosat",
        "EuroSAT",
        [{}],
        None,
        "specialized",
        "Sentinel-2 RGB land use, 10 classes (seeded 25% test split)",
        _TV_SOURCE + "EuroSAT",
        "MIT",
        images=27000,
    ),
    _tv(
        "pcam",
        "PCAM",
        [{"split": "train"}, {"split": "val"}],
        {"split": "test"},
        "specialized",
        "PatchCamelyon histopathology patches, metastasis or not (needs h5py)",
        _TV_SOURCE + "PCAM",
        "CC0",
        classes=("normal", "metastatic"),
        images=327680,  # 262,144 train + 32,768 val + 32,768 test
    ),
    _tv(
        "fgvc_aircraft",
        "FGVCAircraft",
        [{"split": "trainval"}],
        {"split": "test"},
        "natural",
        "aircraft variants, 100 classes",
        _TV_SOURCE + "FGVCAircraft",
        "non-commercial research",
        images=10000,  # 6,667 trainval + 3,333 test
    ),
    _tv(
        "stanford_cars",
        "StanfordCars",
        [{"split": "train"}],
        {"split": "test"},
        "natural",
        "car models, 196 classes (no longer downloadable: place the files by hand)",
        _TV_SOURCE + "StanfordCars",
        "non-commercial research",
        images=16185,  # 8,144 train + 8,041 test
    ),
    _tv(
        "food101",
        "Food101",
        [{"split": "train"}],
        {"split": "test"},
        "natural",
        "food dishes, 101 classes",
        _TV_SOURCE + "Food101",
        "no explicit licence",
        images=101000,  # 75,750 train + 25,250 test
    ),
    _tv(
        "caltech101",
        "Caltech101",
        [{}],
        None,
        "natural",
        "objects, 101 categories (seeded 25% test split)",
        _TV_SOURCE + "Caltech101",
        "CC BY 4.0",
        images=8677,  # without BACKGROUND_Google, as torchvision lists them
    ),
    _tv(
        "gtsrb",
        "GTSRB",
        [{"split": "train"}],
        {"split": "test"},
        "natural",
        "German traffic signs, 43 classes",
        _TV_SOURCE + "GTSRB",
        "CC0",
        classes=tuple(f"{i:05d}" for i in range(43)),
    ),
    _tv(
        "fashion_mnist",
        "FashionMNIST",
        [{"train": True}],
        {"train": False},
        "structured",
        "28x28 grayscale clothing silhouettes, 10 classes",
        _TV_SOURCE + "FashionMNIST",
        "MIT",
        images=70000,  # 60,000 + 10,000
    ),
    _tv(
        "mnist",
        "MNIST",
        [{"train": True}],
        {"train": False},
        "structured",
        "28x28 grayscale handwritten digits",
        _TV_SOURCE + "MNIST",
        "CC BY-SA 3.0",
        images=70000,  # 60,000 + 10,000
    ),
    _tv(
        "stl10",
        "STL10",
        [{"split": "train"}],
        {"split": "test"},
        "natural",
        "96x96 natural images, 10 classes (labelled part)",
        _TV_SOURCE + "STL10",
        "no explicit licence",
        images=13000,  # 5,000 train + 8,000 test (labelled part)
    ),
    _tv(
        "country211",
        "Country211",
        [{"split": "train"}, {"split": "valid"}],
        {"split": "test"},
        "natural",
        "geolocation, 211 countries (YFCC100M photos)",
        _TV_SOURCE + "Country211",
        "per-image (YFCC100M)",
        images=63300,  # 31,650 train + 10,550 valid + 21,100 test
    ),
)


def add_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Register a named dataset (bench's own rows and plug-ins' alike): ``DATASETS.add`` with its group checked."""
    if entry.group not in GROUPS:
        raise UserError(f"dataset '{entry.name}': group '{entry.group}' is not one of {', '.join(GROUPS)}")
    return DATASETS.add(entry.name, entry)


# Named datasets: bench's rows, then what plug-ins add. `imagefolder:` and `hf:` names are sources, not entries.
DATASETS: Registry[DatasetEntry] = Registry("dataset")
for _entry in _ENTRIES:
    add_dataset(_entry)


def list_datasets(pattern: str = "*") -> list[DatasetEntry]:
    """Registry rows whose name matches the fnmatch `pattern`, sorted by name (`imagefolder:` is not a row)."""
    return [DATASETS[name] for name in sorted(DATASETS) if fnmatch.fnmatchcase(name, pattern)]


def parse_checked(name: str) -> DatasetRef:
    """The parsed name, or UserError naming the dataset: an unknown registry name (with close matches), a bad
    option, an unknown group. Paths are not checked (they may exist only on the workers)."""
    if not isinstance(name, str):
        raise UserError(f"dataset name must be a string, got {name!r}")
    try:
        ref = parse_dataset_name(name)
    except DatasetNameError as error:
        raise UserError(f"dataset '{name}': {error}") from None
    group = ref.options.get("group", "natural")
    if group not in GROUPS:
        raise UserError(f"dataset '{name}': group '{group}' is not one of {', '.join(GROUPS)}")
    if ref.kind == "registry" and ref.target not in DATASETS:
        close = difflib.get_close_matches(ref.target, DATASETS.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown dataset '{ref.target}'{hint} (known: {', '.join(sorted(DATASETS))}, imagefolder:<path> or "
            f"{HF_PREFIX}<hub id or path>)"
        )
    return ref


def check_dataset_name(name: str) -> None:
    """UserError for an unknown name (with close matches) or a malformed option; any `imagefolder:<path>` and
    `hf:<...>` passes (path not checked), but `hf:` needs the `datasets` package installed."""
    ref = parse_checked(name)
    if ref.kind == "hf":
        from bench.data.hf import require_datasets

        require_datasets(name)


def dataset_group(name: str) -> str:
    """The declared VTAB group; `imagefolder:` and `hf:` sets are `natural` unless their `?group=` says
    otherwise."""
    ref = parse_checked(name)
    if ref.kind == "registry":
        return DATASETS[ref.target].group
    return ref.options.get("group", "natural")


class TooFewClasses(UserError):
    """A dataset with fewer than MIN_CLASSES classes: the same input fails every trial of it (a runner may stop
    the run on it rather than record failed rows)."""


def count_classes_refused(name: str, count: int, classes: list[str] | None = None) -> None:
    """TooFewClasses when `count` < MIN_CLASSES: one line naming the dataset and what it holds."""
    if count < MIN_CLASSES:
        shown = f" ({', '.join(classes)})" if classes else ""
        raise TooFewClasses(
            f"dataset '{name}': {count} class{'' if count == 1 else 'es'}{shown}; a benchmark needs at least "
            f"{MIN_CLASSES} (top-1 over one class is 100% whatever the model)"
        )


def check_dataset_source(name: str, root: str | None = None) -> None:
    """What validation can check cheaply beyond the name, where the data is on this machine (else nothing:
    it may exist only on the workers): an image folder has at least two class folders; an ``hf:`` folder
    written by ``save_to_disk`` has its splits, columns and at least two classes. UserError otherwise."""
    ref = parse_checked(name)
    if ref.kind == "imagefolder":
        classes = class_folder_names(resolve_folder(ref.target, root))
        if classes is not None:
            count_classes_refused(name, len(classes), classes)
    elif ref.kind == "hf":
        from bench.data.hf import check_at_validation

        check_at_validation(name, ref, root)


def entry_as_dict(entry: DatasetEntry) -> dict[str, Any]:
    """A registry row without its loader (for `bench list datasets` tables)."""
    return {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry) if f.name != "loader"}
