"""The ``hf:`` source: labelled images through the Hugging Face ``datasets`` library (the ``bench[hf]`` extra).

Three forms, told apart by what follows ``hf:``:

- a path (starting with ``/``, ``./``, ``../`` or ``~``): a folder written by ``Dataset.save_to_disk`` or
  ``DatasetDict.save_to_disk``, read with ``datasets.load_from_disk``;
- ``imagefolder:<path>``: the ``datasets`` imagefolder builder on a folder (class folders, split folders,
  metadata files, as that builder reads them);
- anything else: a Hub id (``org/name``), read with ``datasets.load_dataset`` from the local cache (``root``
  when given, else ``HF_DATASETS_CACHE``); the Hub is reached only when the entry says ``download: true``.

Options (``bench.data.names``): ``image_column`` (default: the first ``Image`` feature), ``label_column``
(default: the first ``ClassLabel`` feature; an integer or string column also works, its sorted values being the
classes), ``train_split`` (default ``train``, plus ``validation`` when present, as official validation splits
join train everywhere in bench; ``a+b`` joins splits), ``test_split`` (default ``test`` when present, else a
seeded held-out split, as for every dataset without one), ``config`` and ``revision`` (Hub). Rows whose label
is missing (-1, as unlabelled test sets store it) are left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data.decode import Source
from bench.data.names import HF_IMAGEFOLDER, DatasetRef
from bench.data.sources import LoadRequest, RawDataset, _heldout_note, resolve_folder
from bench.data.splits import HELDOUT_SPLIT_SEED, HELDOUT_TEST_FRACTION, holdout_split
from bench.errors import UserError

_PATH_STARTS = ("/", "./", "../", "~")
_VALIDATION_SPLITS = ("validation",)
_LABEL_DTYPES = ("int", "uint", "string", "large_string")  # label columns that are not a ClassLabel
_OFFLINE_LOCK = threading.Lock()


def require_datasets(name: str) -> None:
    """UserError (one line) when the `datasets` package is not installed."""
    if importlib.util.find_spec("datasets") is None:
        raise UserError(f"dataset '{name}' needs its package: pip install 'bench[hf]'")


@dataclass(frozen=True)
class HfLocation:
    """Where an ``hf:`` dataset lives: `mode` is disk | imagefolder | hub; `where` a resolved folder or a Hub
    id; `cache_dir` the Hub cache (``root``), if given."""

    mode: str
    where: str
    cache_dir: str | None = None

    @property
    def folder(self) -> Path | None:
        return Path(self.where) if self.mode != "hub" else None


def locate(ref: DatasetRef, root: str | Path | None) -> HfLocation:
    """Resolve an ``hf:`` target. A relative folder is taken relative to `root` when given, else to the
    current directory, then made absolute (workers with another working directory see the same folder)."""
    target = ref.target
    mode = "imagefolder" if target.startswith(HF_IMAGEFOLDER) else "disk" if target.startswith(_PATH_STARTS) else "hub"
    if mode == "hub":
        return HfLocation("hub", target, str(Path(root).expanduser()) if root is not None else None)
    folder = resolve_folder(target[len(HF_IMAGEFOLDER) :] if mode == "imagefolder" else target, root)
    return HfLocation(mode, str(folder))


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Within the block, `datasets` and `huggingface_hub` do not reach the Hub (when `offline`): their
    module-level offline switches, which `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` set at import, are turned on
    and restored after."""
    import datasets.config
    import huggingface_hub.constants

    with _OFFLINE_LOCK:
        saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
        if offline:
            datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
            huggingface_hub.constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = saved[0]
            huggingface_hub.constants.HF_HUB_OFFLINE = saved[1]


def load_splits(name: str, ref: DatasetRef, location: HfLocation, download: bool = False) -> dict[str, Any]:
    """Split name -> `datasets.Dataset` (memory-mapped; nothing decoded). UserError for a missing folder, a
    dataset not in the cache (with the hint to set ``download: true``), a missing package."""
    require_datasets(name)
    import datasets

    folder = location.folder
    if folder is not None and not folder.is_dir():
        raise UserError(f"dataset '{name}': folder '{folder}' does not exist")
    try:
        with _hub_offline(offline=not download or location.mode != "hub"), _quiet():
            if location.mode == "disk":
                loaded = datasets.load_from_disk(location.where)
            elif location.mode == "imagefolder":
                loaded = datasets.load_dataset("imagefolder", data_dir=location.where)
            else:
                loaded = datasets.load_dataset(
                    location.where,
                    name=ref.options.get("config"),
                    revision=ref.options.get("revision"),
                    cache_dir=location.cache_dir,
                )
    except (OSError, ValueError) as error:  # FileNotFoundError, ConnectionError (offline), DatasetNotFoundError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "; set download: true to fetch it" if location.mode == "hub" and not download else ""
        raise UserError(f"dataset '{name}': cannot load '{location.where}': {first}{hint}") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or cache warnings from `datasets` while bench loads (bench prints its own progress)."""
    import datasets

    was_enabled = datasets.utils.is_progress_bar_enabled()
    datasets.utils.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if was_enabled:
            datasets.utils.enable_progress_bars()


@dataclass
class HfPlan:
    """What an ``hf:`` dataset yields, resolved without decoding an image."""

    classes: list[str]
    image_column: str
    label_column: str
    train: list[tuple[Any, np.ndarray]]  # (dataset, labels) per train split, labels mapped to class indices
    test: list[tuple[Any, np.ndarray]] | None  # None: a seeded held-out split of train
    notes: dict[str, Any]


def _split_names(name: str, splits: dict[str, Any], ref: DatasetRef) -> tuple[list[str], list[str] | None]:
    available = ", ".join(splits)

    def named(option: str) -> list[str] | None:
        value = ref.options.get(option)
        if value is None:
            return None
        parts = value.split("+")
        for part in parts:
            if part not in splits:
                raise UserError(f"dataset '{name}': {option} '{part}' is not a split (splits: {available})")
        return parts

    train = named("train_split")
    if train is None:
        if "train" in splits:
            train = ["train"] + [s for s in _VALIDATION_SPLITS if s in splits]
        elif len(splits) == 1:
            train = list(splits)
        else:
            raise UserError(f"dataset '{name}': no 'train' split (splits: {available}); set train_split")
    test = named("test_split")
    if test is None and "test" in splits and "test" not in train:
        test = ["test"]
    if test is not None and set(test) & set(train):
        raise UserError(f"dataset '{name}': split(s) {', '.join(set(test) & set(train))} both train and test")
    return train, test


def _column(name: str, features: Any, option: str, wanted: str | None, kind: type) -> str:
    """The named column, or the first feature of type `kind`."""
    columns = ", ".join(features)
    if wanted is not None:
        if wanted not in features:
            raise UserError(f"dataset '{name}': {option} '{wanted}' is not a column (columns: {columns})")
        return wanted
    for column, feature in features.items():
        if isinstance(feature, kind):
            return column
    raise UserError(f"dataset '{name}': no {kind.__name__} column (columns: {columns}); set {option} to the one to use")


def _labels(dataset: Any, column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy", columns=[column])[column][:])


def plan(name: str, ref: DatasetRef, splits: dict[str, Any]) -> HfPlan:
    """Resolve splits, columns and classes; UserError (one line) for a missing split or column, an image
    column that is not an ``Image`` feature, a label column that is neither a ``ClassLabel`` nor integers or
    strings."""
    import datasets

    train_names, test_names = _split_names(name, splits, ref)
    features = splits[train_names[0]].features
    image_column = _column(name, features, "image_column", ref.options.get("image_column"), datasets.Image)
    label_column = _column(name, features, "label_column", ref.options.get("label_column"), datasets.ClassLabel)
    if not isinstance(features[image_column], datasets.Image):
        raise UserError(f"dataset '{name}': image_column '{image_column}' is not an Image feature")
    for split in train_names + (test_names or []):
        missing = [c for c in (image_column, label_column) if c not in splits[split].features]
        if missing:
            raise UserError(f"dataset '{name}': split '{split}' has no column '{missing[0]}'")
    label_feature = features[label_column]
    raw = {split: _labels(splits[split], label_column) for split in train_names + (test_names or [])}
    if isinstance(label_feature, datasets.ClassLabel):
        classes = [str(n) for n in label_feature.names]
        mapped = {split: values.astype(np.int64) for split, values in raw.items()}
    elif isinstance(label_feature, datasets.Value) and label_feature.dtype.startswith(_LABEL_DTYPES):
        values = sorted({v.item() if hasattr(v, "item") else v for s in train_names for v in raw[s]})
        values = [v for v in values if not (isinstance(v, int) and v < 0)]
        classes = [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
        mapped = {
            split: np.array([index.get(v.item() if hasattr(v, "item") else v, -1) for v in labels], dtype=np.int64)
            for split, labels in raw.items()
        }
    else:
        raise UserError(
            f"dataset '{name}': label_column '{label_column}' is {label_feature}; expected a ClassLabel, integers "
            "or strings"
        )
    notes: dict[str, Any] = {"hf_train_splits": train_names, "image_column": image_column, "label_column": label_column}
    return HfPlan(
        classes=classes,
        image_column=image_column,
        label_column=label_column,
        train=[(splits[s], mapped[s]) for s in train_names],
        test=None if test_names is None else [(splits[s], mapped[s]) for s in test_names],
        notes=notes,
    )


def _source(parts: list[tuple[Any, np.ndarray]], column: str, n_classes: int, name: str) -> tuple[Source, np.ndarray]:
    """Items of several splits one after another, labelled rows only; with the labels kept."""
    rows = [
        (p, int(i)) for p, (_, labels) in enumerate(parts) for i in np.flatnonzero((labels >= 0) & (labels < n_classes))
    ]
    images = [dataset.select_columns([column]) for dataset, _ in parts]
    labels = np.array([parts[p][1][i] for p, i in rows], dtype=np.int64)

    def read(k: int) -> tuple[Image.Image, int]:
        part, index = rows[k]
        image = images[part][index][column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"{name}: row {index} of column '{column}' is not an image")
        return image, int(labels[k])

    return Source(len(rows), read, lambda k: f"{name}[{rows[k][0]}:{rows[k][1]}]"), labels


def _subset(source: Source, indices: np.ndarray) -> Source:
    return Source(len(indices), lambda k: source.read(int(indices[k])), lambda k: source.describe(int(indices[k])))


def load_hf(ref: DatasetRef, location: HfLocation, request: LoadRequest) -> RawDataset:
    """The loader of the registry row built for an ``hf:`` name (`bench.data.prepare`)."""
    resolved = plan(request.name, ref, load_splits(request.name, ref, location, request.download))
    n_classes = len(resolved.classes)
    train, train_labels = _source(resolved.train, resolved.image_column, n_classes, request.name)
    dropped = sum(len(labels) for _, labels in resolved.train) - train.length
    if resolved.test is not None:
        test, _ = _source(resolved.test, resolved.image_column, n_classes, request.name)
        dropped += sum(len(labels) for _, labels in resolved.test) - test.length
        notes: dict[str, Any] = {"split": "official", **resolved.notes}
    else:
        train_idx, test_idx = holdout_split(train_labels, HELDOUT_TEST_FRACTION, HELDOUT_SPLIT_SEED)
        train, test = _subset(train, train_idx), _subset(train, test_idx)
        notes = {**_heldout_note(), **resolved.notes}
    if dropped:
        warnings.warn(f"dataset '{request.name}': {dropped} row(s) without a label left out", stacklevel=2)
    return RawDataset(resolved.classes, train, test, {**notes, "unlabelled_rows": dropped})


def hub_contents(name: str, ref: DatasetRef, location: HfLocation, download: bool) -> str | None:
    """For a Hub dataset: a digest of its splits' `datasets` fingerprints (they follow the cached files and
    revision), or None when it cannot be loaded here (a worker without the cache)."""
    try:
        splits = load_splits(name, ref, location, download)
    except UserError:
        return None
    blob = "\n".join(f"{split}\0{dataset._fingerprint}" for split, dataset in sorted(splits.items()))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_at_validation(name: str, ref: DatasetRef, root: str | None) -> None:
    """The checks `bench validate` can afford for a ``save_to_disk`` folder on this machine (opening it maps
    the files, decodes nothing): splits, columns and at least two classes, else UserError. Hub datasets and the
    imagefolder builder are checked when the dataset is prepared."""
    location = locate(ref, root)
    if location.mode != "disk" or location.folder is None or not location.folder.is_dir():
        return
    from bench.data.registry import count_classes_refused

    resolved = plan(name, ref, load_splits(name, ref, location))
    count_classes_refused(name, len(resolved.classes), resolved.classes)
