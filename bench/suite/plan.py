"""What a suite needs in disk and memory, from the suite alone: ``bench validate SUITE --plan``.

Nothing is run, decoded or downloaded. Each dataset's image count comes from, in this order: its prepared copy in
the cache (``prepared``: the manifest's counts and shard sizes), a listing of its files on this machine
(``counted``: image folders, ``hf:`` folders and cached Hub sets, the bundled sets), the registry's documented
count (``registry``: ``DatasetEntry.images``), else ``unknown`` (the reason is given). Where only a total is
known (the registry) the train/test split is not: shard counts are an upper bound and frozen-feature rows are
counted as if every image were a training image, both marked ``~``.

The figures follow the data path (``bench.data.shards``, ``bench.speedups.features``, ``bench.utils.memory``):

- shards: ``images * 3 * S * S`` bytes of uint8 pixels plus 8 bytes of int64 label per image (shard headers, the
  records and the manifest, a few KiB per shard, are left out; ``jpeg`` shards are about a tenth, marked ``~``),
  once on the driver's node and again on every worker node that runs the dataset's trials unless the cache
  folder is shared;
- frozen features: a linear probe (``linear_probe``, and the probe phase of a strategy that probes first) with
  ``augment: none`` holds ``rows * feature_dim * 4`` bytes, rows = train + validation (a subset of train,
  counted again) + test; they are also written under ``<cache>/features/``, once per (backbone weights, dataset,
  size), the training rows once per training batch size; a from-scratch body's weights differ per seed, so its
  features are written once per seed;
- the similarity pass (``analysis.similarity``) writes the training rows of each pretrained twin once more,
  unless the probes of that pretrained body train at the pass's batch size (then the file is the same);
- memory: a trial's share of a node is ``memory.trial_share_bytes``; a probe whose features exceed it is refused
  at run time (``bench.training.trial``), and the plan lists those cells.

Partial-freeze prefix outputs (``bench.speedups.prefix``, capped in memory) are not estimated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import TrialConfig
from bench.data import shards
from bench.data.names import HF_IMAGEFOLDER
from bench.data.prepare import DatasetPlan, plan_dataset
from bench.data.registry import DATASETS, parse_checked
from bench.data.sources import _image_files
from bench.data.splits import HELDOUT_TEST_FRACTION, split_train_val
from bench.errors import UserError
from bench.models.strategies import holds_frozen_features
from bench.suite.suite import Suite
from bench.utils import memory

DRIVER_BASE_BYTES = 512 * 2**20  # `bench run`'s driver before any trial (about 0.2 GiB RSS measured) with headroom
DRIVER_BYTES_PER_IMAGE = 200  # the driver holds each listed image's file name and label
TASK_BASE_BYTES = 512 * 2**20  # a preparation task's worker process (numpy, PIL, a dataset class), beside its shard
LABEL_BYTES = 8  # int64, y_train.npy / y_test.npy
JPEG_SHARE = 0.1  # jpeg shards against raw ones ("about a tenth", bench.data.shards)
SIMILARITY_BATCH = {"cpu": 64, "cuda": 256}  # bench.speedups.features.BATCH_SIZE (that module imports torch)


@dataclass(frozen=True)
class DatasetNeed:
    """One dataset at one image size: how many images, where the count came from, its shards on disk."""

    name: str
    img_size: int
    source: str  # prepared | counted | registry | unknown
    images: int | None = None  # train + test
    n_train: int | None = None  # None where only the total is known
    n_test: int | None = None
    n_val: int | None = None  # validation rows carved from train (estimated where labels are not at hand)
    shards: int | None = None
    shard_bytes: int | None = None  # pixels and labels on one node's disk
    exact: bool = False  # split counts known: shard counts exact
    bytes_exact: bool = False  # shard bytes exact: split counts known, and raw shards (or the prepared files)
    rows_exact: bool = False  # the validation rows counted from the labels, not estimated
    fingerprint: str | None = None  # shared by two entries naming the same data (counted once in totals)
    note: str = ""  # why unknown

    @property
    def rows(self) -> int | None:
        """Frozen-feature rows of a probe: train + validation + test (every image counted as train where the
        split is unknown)."""
        if self.images is None or self.n_val is None:
            return None
        return self.images + self.n_val


@dataclass(frozen=True)
class FeatureNeed:
    """The frozen features of one backbone architecture on one dataset at one size."""

    backbone: str
    dataset: str
    img_size: int
    feature_dim: int | None
    rows: int | None
    exact: bool  # rows counted, not estimated
    weights: int  # bodies whose features are written: one per pretrained entry, one per seed per scratch entry
    batch_sizes: int  # training batch sizes the probes use (each writes its own training rows)
    disk_bytes: int | None  # under <cache>/features/
    similarity_bytes: int | None  # the similarity pass's training rows (0 with analysis.similarity off)

    @property
    def memory_bytes(self) -> int | None:
        """What one probe trial holds (the figure the run-time check compares with the trial's share)."""
        if self.rows is None or self.feature_dim is None:
            return None
        return memory.frozen_feature_bytes(self.rows, self.feature_dim)


@dataclass
class SuitePlan:
    """A suite's needs: its datasets, the frozen features of its probes, and the node they are sized for; the
    totals are properties, all in bytes."""

    suite: str
    trial_count: int
    cache_dir: str
    shard_format: str
    datasets: list[DatasetNeed]
    features: list[FeatureNeed]
    node_memory: int
    node_cpus: float
    cpu_per_trial: float
    notes: list[str] = field(default_factory=list)

    @property
    def share_bytes(self) -> int:
        return memory.trial_share_bytes(self.node_memory, self.node_cpus, self.cpu_per_trial)

    @property
    def shard_bytes(self) -> int:
        """Shards on the driver's node: every dataset whose count is known, each fingerprint once."""
        unique = {d.fingerprint or f"{d.name}@{d.img_size}": d.shard_bytes or 0 for d in self.datasets}
        return sum(unique.values())

    @property
    def feature_bytes(self) -> int:
        return sum(f.disk_bytes or 0 for f in self.features)

    @property
    def similarity_bytes(self) -> int:
        return sum(f.similarity_bytes or 0 for f in self.features)

    @property
    def listed_images(self) -> int:
        return sum(d.images or 0 for d in self.datasets)

    @property
    def driver_bytes(self) -> int:
        return DRIVER_BASE_BYTES + DRIVER_BYTES_PER_IMAGE * self.listed_images

    @property
    def task_bytes(self) -> int:
        """A preparation task: one shard of the largest image size, plus its worker."""
        sizes = [d.img_size for d in self.datasets] or [0]
        return TASK_BASE_BYTES + max(shards.shard_items(s, shards.SHARD_MB) * 3 * s * s for s in sizes)

    @property
    def over_share(self) -> list[FeatureNeed]:
        """The probe cells a node of this plan's size would refuse at run time."""
        return [f for f in self.features if f.memory_bytes is not None and f.memory_bytes > self.share_bytes]

    @property
    def largest(self) -> FeatureNeed | None:
        known = [f for f in self.features if f.memory_bytes is not None]
        return max(known, key=lambda f: f.memory_bytes or 0) if known else None

    def as_dict(self) -> dict[str, Any]:
        """Everything the text shows, in bytes (``--plan-json``)."""
        return {
            **{k: v for k, v in dataclasses.asdict(self).items() if k not in ("datasets", "features")},
            "datasets": [{**dataclasses.asdict(d), "rows": d.rows} for d in self.datasets],
            "features": [{**dataclasses.asdict(f), "memory_bytes": f.memory_bytes} for f in self.features],
            "totals": {
                "shard_bytes": self.shard_bytes,
                "feature_bytes": self.feature_bytes,
                "similarity_bytes": self.similarity_bytes,
                "driver_bytes": self.driver_bytes,
                "task_bytes": self.task_bytes,
                "trial_share_bytes": self.share_bytes,
                "largest_probe_bytes": self.largest.memory_bytes if self.largest else None,
                "over_share": [[f.backbone, f.dataset, f.img_size] for f in self.over_share],
            },
        }


# ---------------------------------------------------------------------------------------------------------
# datasets


def _need(
    name: str,
    img_size: int,
    source: str,
    *,
    fmt: str,
    val_fraction: float,
    images: int,
    n_train: int | None = None,
    n_test: int | None = None,
    labels: Any = None,
    disk: int | None = None,
    fingerprint: str | None = None,
) -> DatasetNeed:
    """A counted dataset's figures: shards per split, validation rows, bytes on disk."""
    items = shards.shard_items(img_size, shards.SHARD_MB)
    exact = n_train is not None and n_test is not None
    if n_train is not None and n_test is not None:
        count = math.ceil(n_train / items) + math.ceil(n_test / items)
        if labels is not None:
            n_val = len(split_train_val(np.asarray(labels), val_fraction)[1])
        else:
            n_val = round(val_fraction * n_train)  # rounded per class at run time: off by a row per class at most
    else:
        count = math.ceil(images / items) + 1  # the split is unknown: one shard more at most
        n_val = math.ceil(val_fraction * images)
    if disk is None:
        pixels = images * 3 * img_size * img_size
        disk = (pixels if fmt == "raw" else int(pixels * JPEG_SHARE)) + LABEL_BYTES * images
    raw = fmt == "raw" or source == "prepared"  # a prepared dataset's bytes are its files' own
    return DatasetNeed(
        name=name,
        img_size=img_size,
        source=source,
        images=images,
        n_train=n_train,
        n_test=n_test,
        n_val=n_val,
        shards=count,
        shard_bytes=disk,
        exact=exact,
        bytes_exact=exact and raw,
        rows_exact=labels is not None,
        fingerprint=fingerprint,
    )


def _prepared(plan: DatasetPlan, fmt: str, val_fraction: float) -> DatasetNeed:
    """From the published manifest: counts, shard files' sizes, labels (exact validation rows)."""
    assert plan.final is not None
    meta = shards.load_manifest(plan.final)
    n_train, n_test = int(meta["n_train"]), int(meta["n_test"])
    entries = [entry for split in shards.SPLITS for entry in meta.get("shards", {}).get(split, [])]
    disk = sum(int(entry.get("nbytes") or 0) for entry in entries) + LABEL_BYTES * (n_train + n_test)
    try:
        labels = np.load(plan.final / "y_train.npy")
    except (OSError, ValueError):
        labels = None
    need = _need(
        plan.name,
        plan.img_size,
        "prepared",
        fmt=fmt,
        val_fraction=val_fraction,
        images=n_train + n_test,
        n_train=n_train,
        n_test=n_test,
        labels=labels,
        disk=disk,
        fingerprint=plan.fingerprint,
    )
    return dataclasses.replace(need, shards=len(entries) or need.shards)


def _listed(plan: DatasetPlan) -> tuple[int, int, Any] | None:
    """(train, test, train labels or None) by listing what is on this machine, None where nothing is; decodes
    nothing: image folders are listed, ``hf:`` sets opened memory-mapped, bundled sets built in memory."""
    ref = parse_checked(plan.name)
    if ref.kind == "registry" and not DATASETS[ref.target].offline:
        return None  # torchvision: opening it may read whole archives; the registry has its count
    if ref.kind == "hf" and ref.target.startswith(HF_IMAGEFOLDER):  # the builder would copy every file: count them
        folder = plan.resolved.root
        if folder is None or not folder.is_dir():
            return None
        test = len(_image_files(folder / "test")) if (folder / "test").is_dir() else None
        total = len(_image_files(folder))
        held = round(HELDOUT_TEST_FRACTION * total) if test is None else test  # no test/: a quarter held out
        return total - held, held, None
    with warnings.catch_warnings():  # empty class folders and the like: the run reports them
        warnings.simplefilter("ignore")
        raw = plan.load()
    return raw.train.length, raw.test.length, raw.train.labels


def count_dataset(
    name: str,
    img_size: int,
    *,
    root: str | None = None,
    cache_dir: str | Path | None = None,
    shard_format: str = "raw",
    val_fraction: float = TrialConfig.val_fraction,
) -> DatasetNeed:
    """How many images ``name`` has at ``img_size`` and what its shards take: from the cache, a listing of its
    files, or the registry (module docstring); ``unknown`` with the reason otherwise. Never downloads."""
    try:
        plan = plan_dataset(name, img_size, root, download=False, cache_dir=cache_dir, shard_format=shard_format)
    except UserError as error:
        return DatasetNeed(name, img_size, "unknown", note=str(error))
    options = {"fmt": shard_format, "val_fraction": val_fraction, "fingerprint": plan.fingerprint}
    figures = functools.partial(_need, name, img_size, **options)
    try:
        if plan.cached:
            return _prepared(plan, shard_format, val_fraction)
        listed = _listed(plan)
    except (UserError, OSError, ValueError) as error:
        listed, reason = None, str(error)
    else:
        reason = "not on this machine"
    if listed is not None:
        n_train, n_test, labels = listed
        return figures("counted", images=n_train + n_test, n_train=n_train, n_test=n_test, labels=labels)
    ref = parse_checked(name)
    documented = DATASETS[ref.target].images if ref.kind == "registry" else None
    if documented is not None:
        return figures("registry", images=documented)
    known = " and no documented count" if ref.kind == "registry" else ""
    return DatasetNeed(name, img_size, "unknown", fingerprint=plan.fingerprint, note=f"{reason}{known}")


# ---------------------------------------------------------------------------------------------------------
# backbones


@functools.cache
def feature_dim(name: str, img_size: int) -> int | None:
    """The width of ``name``'s pooled features, from its architecture alone: built without weights on torch's
    meta device (no memory; on the CPU where the meta device lacks an operation), a Hub model from the config
    validation already read. Nothing is downloaded. None where it cannot be built here."""
    try:
        import torch

        from bench.models.registry import BACKBONES, backbone_builder, hub_model, size_kwargs, split_name

        family, model = split_name(name)
        size = size_kwargs(name, img_size)

        def build() -> int:
            if family == "timm":
                import timm

                hub = hub_model(name)
                arch, kwargs = (hub.arch, dict(hub.model_args)) if hub else (model, {})
                return int(timm.create_model(arch, pretrained=False, **{**kwargs, **size}).num_features)
            if family == "tv":
                import torchvision

                net = torchvision.models.get_model(model, weights=None)
                return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].in_features
            builder = backbone_builder(BACKBONES[model])  # bundled rows and plug-ins' entries
            return int(builder(name, model, pretrained=False, weights=None, img_size=size.get("img_size")).feature_dim)

        with torch.random.fork_rng(devices=[]):
            try:
                with torch.device("meta"):
                    return build()
            except Exception:
                return build()
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------
# the suite


def _probe_batch_sizes(suite: Suite) -> set[Any]:
    """Training batch sizes of the trials that train on cached frozen features (a probe, or a probe phase, with
    no augmentation); empty when no trial does."""
    spec, found = suite.spec, set()
    feature_cache = getattr(spec.train, "feature_cache", True)
    for value in spec.grid.freeze:
        strategy = TrialConfig(backbone="", dataset="", freeze=value).strategy
        for point in spec.search.points(strategy) if spec.search else [{}]:
            augment = point.get("augment", spec.train.augment)
            if holds_frozen_features(strategy, feature_cache=feature_cache, augment=augment):
                found.add(point.get("batch_size", spec.train.batch_size))
    return found


def plan_suite(
    suite: Suite,
    *,
    cache_dir: str | Path | None = None,
    node_memory: int | None = None,
    node_cpus: float | None = None,
) -> SuitePlan:
    """The disk and memory ``suite`` needs (module docstring), for nodes of ``node_memory`` bytes and
    ``node_cpus`` CPUs (default: this machine's). Datasets that cannot be counted are ``unknown``, not errors."""
    spec = suite.spec
    fmt = getattr(spec.train, "shard_format", "raw")
    sizes = sorted({spec.train.img_size})
    vf = spec.train.val_fraction
    datasets = [
        count_dataset(d.name, size, root=d.root, cache_dir=cache_dir, shard_format=fmt, val_fraction=vf)
        for d in spec.datasets
        for size in sizes
    ]
    batches = _probe_batch_sizes(suite)
    seeds = len(spec.grid.seed)
    # The similarity pass batches the training rows as a probe at this batch size would: then they are one file.
    similarity_batch = SIMILARITY_BATCH["cuda" if spec.tune.resources_per_trial.gpu > 0 else "cpu"]
    features: list[FeatureNeed] = []
    names = list(dict.fromkeys(b.name for b in spec.backbones))
    for backbone in names:
        entries = [b for b in spec.backbones if b.name == backbone]
        weights = sum(1 if b.pretrained else seeds for b in entries) if batches else 0
        twins = {b.weights for b in entries} if spec.analysis.similarity else set()
        if similarity_batch in batches:  # those of the pretrained bodies the probes train already
            twins -= {b.weights for b in entries if b.pretrained}
        if not (weights or twins):
            continue
        for data in datasets:
            dim, rows = feature_dim(backbone, data.img_size), data.rows
            train = data.n_train if data.n_train is not None else data.images
            disk = similarity = None
            if dim is not None and rows is not None and train is not None:
                disk = weights * (rows + train * (len(batches) - 1)) * dim * memory.FEATURE_BYTES if batches else 0
                similarity = len(twins) * train * dim * memory.FEATURE_BYTES
            features.append(
                FeatureNeed(
                    backbone=backbone,
                    dataset=data.name,
                    img_size=data.img_size,
                    feature_dim=dim,
                    rows=rows if batches else None,
                    exact=data.rows_exact,
                    weights=weights,
                    batch_sizes=len(batches),
                    disk_bytes=disk,
                    similarity_bytes=similarity,
                )
            )
    notes = []
    if len(batches) > 1:
        notes.append(f"probes train at {len(batches)} batch sizes: each writes its own training rows")
    if any(b == "auto" for b in batches):
        notes.append("batch_size auto: the training rows follow the batch each trial settles on")
    return SuitePlan(
        suite=suite.name,
        trial_count=suite.trial_count(),
        cache_dir=str(cache_dir) if cache_dir is not None else "",
        shard_format=fmt,
        datasets=datasets,
        features=features,
        node_memory=memory.system_memory_bytes() if node_memory is None else int(node_memory),
        node_cpus=float(os.cpu_count() or 1) if node_cpus is None else float(node_cpus),
        cpu_per_trial=spec.tune.resources_per_trial.cpu,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------------
# the text


def _bytes(value: int | None, approx: bool = False) -> str:
    if value is None:
        return "unknown"
    mark = "~" if approx else ""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{mark}{value / scale:.1f} {unit}"
    return f"{mark}{value} B"


def _count(value: int | None, approx: bool = False) -> str:
    return "unknown" if value is None else f"{'~' if approx else ''}{value:,}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` to the left, the rest to the right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in [header, *rows]
    ]


def _dataset_lines(plan: SuitePlan) -> list[str]:
    from bench.data import display_name

    rows = [
        (display_name(d.name), d.source, str(d.img_size), _count(d.images))
        + (_count(d.shards, not d.exact), _bytes(d.shard_bytes, not d.bytes_exact))
        for d in plan.datasets
    ]
    lines = [f"datasets ({plan.shard_format} shards of up to {shards.SHARD_MB:g} MiB of pixels, int64 labels):"]
    lines += _table(("dataset", "from", "img_size", "images", "shards", "shard disk"), rows, left=2)
    return lines + [f"  unknown: {d.name} at {d.img_size} px: {d.note}" for d in plan.datasets if not d.images]


def _disk_lines(plan: SuitePlan) -> list[str]:
    approx = any(not d.bytes_exact for d in plan.datasets if d.images)
    rows_approx = any(not d.rows_exact for d in plan.datasets if d.images)
    unknown = sum(1 for d in plan.datasets if not d.images)
    left_out = f"; {unknown} unknown dataset(s) left out" if unknown else ""
    lines = [
        "disk:",
        f"  shards on the driver's node: {_bytes(plan.shard_bytes, approx)} ({plan.shard_bytes:,} bytes) under "
        f"<cache>/datasets/{left_out}",
        "    and on each worker node that runs a dataset's trials, a copy of that dataset's shards, unless every",
        "    node shares the cache folder",
        f"  frozen features: {_bytes(plan.feature_bytes, rows_approx)} ({plan.feature_bytes:,} bytes) under "
        "<cache>/features/",
        "    once per backbone weights, dataset and size (a scratch body's once per seed)",
    ]
    if plan.similarity_bytes:
        lines += [
            f"  similarity pass: {_bytes(plan.similarity_bytes, rows_approx)} ({plan.similarity_bytes:,} bytes) more "
            "under <cache>/features/",
            "    the training rows of each pretrained twin (analysis.similarity)",
        ]
    return lines + [f"  run folder: small (result rows, a few KiB per trial; {plan.trial_count:,} trials)"]


def _memory_lines(plan: SuitePlan) -> list[str]:
    from bench.data import display_name

    at_once = plan.node_cpus / plan.cpu_per_trial
    fits = f"{math.floor(at_once)} trial(s) at once" if at_once >= 1 else "more than a node has"
    lines = [
        "memory:",
        f"  driver: {_bytes(plan.driver_bytes)} ({_bytes(DRIVER_BASE_BYTES)} + {DRIVER_BYTES_PER_IMAGE} B per "
        f"listed image, {plan.listed_images:,} images)",
        f"  each preparation task: {_bytes(plan.task_bytes)} (one shard + {_bytes(TASK_BASE_BYTES)})",
        f"  each trial: a share of {_bytes(plan.share_bytes)} of a node of {_bytes(plan.node_memory)} and "
        f"{plan.node_cpus:g} CPUs ({plan.cpu_per_trial:g} per trial: {fits})",
    ]
    probes = [f for f in plan.features if f.weights]
    if not probes:
        return lines + ["  no trial holds frozen features (no linear probe without augmentation)"]
    largest, over = plan.largest, plan.over_share
    flagged = {id(f) for f in over}
    rows = [
        (f.backbone, display_name(f.dataset), str(f.img_size), _count(f.feature_dim), _count(f.rows, not f.exact))
        + (
            _bytes(f.memory_bytes, not f.exact),
            _bytes(f.disk_bytes, not f.exact),
            "over share" if id(f) in flagged else "",
        )
        for f in probes
    ]
    lines += [
        "  frozen features a probe trial holds (float32, rows x dim; rows = train + val + test), and what they",
        "  take on disk for every body of that backbone in the suite:",
    ]
    header = ("backbone", "dataset", "img_size", "dim", "rows", "memory", "disk", "")
    lines += ["  " + line for line in _table(header, rows, left=2)]
    if largest is not None:
        lines.append(
            f"  largest: {_bytes(largest.memory_bytes, not largest.exact)} ({largest.backbone} on "
            f"{display_name(largest.dataset)} at {largest.img_size} px)"
        )
    if over:
        cells = ", ".join(f"{f.backbone} on {display_name(f.dataset)}" for f in over)
        lines += [
            f"  over the share, refused at run time ({len(over)} of {len(probes)}): {cells}",
            "    give each trial more CPUs (tune.resources_per_trial.cpu), or use nodes with more memory",
        ]
    else:
        known = sum(1 for f in probes if f.memory_bytes is not None)
        lines.append(f"  every probe of known size fits its share ({known} of {len(probes)})")
    missing = sorted({f.backbone for f in probes if f.feature_dim is None})
    if missing:
        lines.append(f"  feature width unknown (cannot be built here without weights): {', '.join(missing)}")
    return lines


def format_plan(plan: SuitePlan) -> str:
    """The plan as aligned plain text: datasets, disk, memory. ``~`` marks an estimate (a total without its
    split, or jpeg shards); exact byte counts follow the disk totals."""
    head = f"plan for suite '{plan.suite}' (nothing run or decoded; cache: {plan.cache_dir or 'none'})"
    sections = [[head], _dataset_lines(plan), _disk_lines(plan), _memory_lines(plan)]
    text = "\n\n".join("\n".join(section) for section in sections)
    return text + "".join(f"\nnote: {note}" for note in plan.notes)
