"""The shared transfer-learning core: one trial is one plain function call, ``run_trial(config)``.

Every trial of every suite runs this code, whether called from a test, a benchmark, or a Ray Tune worker; it
knows nothing of Ray, Parquet or the command line. Top to bottom, a trial:

1. prepares the dataset (decoded and resized once per process and cache folder, see ``bench.data.prepare``),
   carves the canonical validation split and the seeded, stratified, nested training subset;
2. builds the backbone with a new head and freezes its first groups (``bench.models.freeze``);
3. trains in one loop (``fit``): AdamW or SGD, linear warm-up then cosine decay, per step; a linear probe whose
   body sees no augmentation trains on frozen features computed once (``bench.speedups.features``), which gives the
   same numbers as pushing the images through the frozen body every step, only faster;
4. evaluates the final model on the untouched test split (in fp32 with BatchNorm folded into the convolutions,
   which changes nothing but rounding, see ``bench.speedups.fold``), and returns one result row (DESIGN.md's
   ``trials.parquet`` columns) plus one row per validation evaluation.

A non-finite loss ends the trial with status ``diverged``; it is a result, not an exception. Bad input
(unknown backbone, missing dataset root, corrupt weights) raises ``bench.errors.UserError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from bench.training import batch_size as auto_batch
from bench.data import prepare as datasets
from bench.speedups import depthwise
from bench.speedups import features
from bench.utils import memory
from bench.training import precision
from bench.speedups import prefix
from bench.results import store as results
from bench.similarity import scores as similarity
from bench.utils.atomic import atomic_write_text
from bench.models.build import Backbone, TransferModel, build_backbone
from bench.config import TrialConfig
from bench.errors import UserError
from bench.speedups.fold import BatchNormFolded
from bench.models.freeze import FreezePlan, apply_freeze, frozen_modules, set_train_mode

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
EVAL_BATCH_SIZE = 128  # on a CPU at small images 128 beats 256 by ~15% (activations stay in cache)
DATA_REGIME_THRESHOLDS = (10, 100)  # images per class: < 10 scarce, 10-99 limited, >= 100 sufficient


@dataclass
class TrialResult:
    row: dict[str, Any]  # one trials.parquet row
    epochs: list[dict[str, Any]] = field(default_factory=list)  # one epochs.parquet row per evaluation


@dataclass
class Split:
    """Inputs (uint8 images or float features) and labels of one split, on the CPU.

    ``short_batch``: for cached rows computed in full training batches, the rows of a shorter batch, computed
    from its images in one batch of that size (what the plain path computes for them) or read back from an
    earlier batch of that size (``ShortBatchRows``).
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    short_batch: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one freeze depth and one learning rate (lp_ft has two)."""

    name: str
    freeze: float
    lr: float
    steps: int
    batch_size: int


class Normalize(nn.Module):
    """uint8 images -> float, scaled and standardised with the backbone's pretraining mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


# ---------------------------------------------------------------------------------------------------------
# the trial

def run_trial(config: TrialConfig, *, run_id: str = "",
              data: datasets.PreparedDataset | None = None) -> TrialResult:
    """Run one trial and return its result row and evaluation rows.

    ``data`` is the prepared dataset when the caller already holds it (the Ray layer shares one copy per
    node through the object store); otherwise it is prepared here, once per process. Out of memory (CUDA, or
    the CPU allocator) starts the trial again at half the batch size, down to 1; the row records
    ``batch_size_used`` and ``oom_halvings``.
    """
    started_at = results.utc_now()
    device = resolve_device(config.device)
    memory.reset_peak_rss()
    data = data if data is not None else load_dataset(config)
    if device.type == "cuda":  # packed trials (gpu: 0.25): each held to its share of the card
        torch.cuda.set_per_process_memory_fraction(config.gpu_share, device)
    search = _auto_batch_size(config, data, device) if config.fixed_batch_size is None else None
    batch_size, halvings = (search.batch_size if search else int(config.batch_size)), 0
    while True:
        try:
            result = _attempt(config, data, device, batch_size=batch_size, run_id=run_id, started_at=started_at)
        except Exception as error:
            if not _out_of_memory(error) or batch_size == 1:
                raise
            log.warning("trial %s: out of memory at batch size %d; retrying at %d", config.trial_id, batch_size,
                        batch_size // 2)
        else:
            result.row.update(batch_size_used=batch_size, oom_halvings=halvings,
                              batch_size_search=search.describe() if search else None)
            return result
        # Out of memory: with the traceback gone, the failed attempt's tensors can be freed; start again at half
        # the batch. hp_batch_size and trial_id stay the suite's; the row records what was used.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        batch_size, halvings = batch_size // 2, halvings + 1


def _auto_batch_size(config: TrialConfig, data: datasets.PreparedDataset,
                     device: torch.device) -> auto_batch.BatchSearch:
    """``batch_size: auto``: probe the trial's model (the plain path, the last phase's freeze: the most memory
    any phase needs) with one forward and backward pass per power of two (``bench.training.batch_size``). The probe
    model is built for this alone and the RNG draws it makes do not reach the trial: each attempt seeds itself
    (``_attempt``)."""
    n_train = len(select_indices(data.y_train, config)[0])
    cap, cap_name = min(auto_batch.AUTO_CAP, n_train), "cap" if n_train >= auto_batch.AUTO_CAP else "training set"
    if device.type != "cuda":
        return auto_batch.BatchSearch(min(auto_batch.CPU_BATCH, auto_batch.largest_power_of_two(cap)), (), "cpu")
    found = _probe_on_card(config, data, device, n_train=n_train, cap=cap, cap_name=cap_name)
    gc.collect()  # the probe model went with _probe_on_card's frame; give its memory back to the trial
    torch.cuda.empty_cache()
    return found


def _probe_on_card(config: TrialConfig, data: datasets.PreparedDataset, device: torch.device, *, n_train: int,
                   cap: int, cap_name: str) -> auto_batch.BatchSearch:
    """The CUDA search: one bf16 forward and backward pass of a model of its own per batch size, kept within
    ``HEADROOM`` of the trial's share of the card with the optimiser state and the resident split added."""
    backbone = build_backbone(config.backbone, data.n_classes, pretrained=False, head_seed=config.seed)
    apply_freeze(backbone.body, config.freeze_fraction)
    model = TransferModel(backbone.body, backbone.head).to(device).to(memory_format=torch.channels_last)
    set_train_mode(model)
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    state_per_param = 2 if config.optimizer == "adamw" else 1  # AdamW's two moments; SGD's momentum
    fixed = state_per_param * sum(p.numel() * p.element_size() for p in trainable)
    image_bytes = int(np.prod(data.x_train.shape[1:]))
    resident = n_train * image_bytes if n_train * image_bytes <= GPU_RESIDENT_BYTES else 0  # see _stage
    budget = auto_batch.HEADROOM * config.gpu_share * torch.cuda.get_device_properties(device).total_memory

    def fits(size: int) -> bool:
        torch.cuda.reset_peak_memory_stats(device)
        try:
            inputs = _channels_last(normalize(torch.from_numpy(np.asarray(data.x_train[:size])).to(device)))
            labels = _labels(data.y_train[:size]).to(device)
            training_loss(model, inputs, labels, device, config.label_smoothing).backward()
        except Exception as error:
            if not _out_of_memory(error):
                raise
            return False
        finally:
            model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated(device) + fixed + resident <= budget

    return auto_batch.search(fits, cap=cap, cap_name=cap_name)


def _out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory" RuntimeError."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "allocate memory" in str(error))


def _attempt(config: TrialConfig, data: datasets.PreparedDataset, device: torch.device, *, batch_size: int,
             run_id: str, started_at: str) -> TrialResult:
    """One try at the trial with mini-batches of ``batch_size``."""
    train_idx, val_idx = select_indices(data.y_train, config)

    torch.manual_seed(config.seed)  # the scratch baseline's random init, and anything else drawing from it
    backbone = build_backbone(config.backbone, data.n_classes, pretrained=config.pretrained,
                              weights=config.weights, head_seed=config.seed)
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    backbone.body.to(device)
    backbone.head.to(device)
    # channels_last: faster convolutions on CUDA and on CPU alike (about 3x for depthwise convs on CPU here).
    backbone.body.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    images = {
        "train": Split(torch.from_numpy(np.asarray(data.x_train[train_idx])), _labels(data.y_train[train_idx])),
        "val": Split(torch.from_numpy(np.asarray(data.x_train[val_idx])), _labels(data.y_train[val_idx])),
        "test": Split(torch.from_numpy(np.array(data.x_test)), _labels(data.y_test)),  # a writable copy
    }
    scores = measure_similarity(config, data, backbone=backbone, device=device)
    phases = plan_phases(config, n_train=len(train_idx), batch_size=batch_size)
    epoch_rows: list[dict[str, Any]] = []
    status, error = "ok", None
    train_seconds, images_seen, padded_convs = 0.0, 0, 0
    plan: FreezePlan
    frozen_paths: list[str] = []
    for phase in phases:
        plan = apply_freeze(backbone.body, phase.freeze)
        setup = _phase_setup(backbone, plan, images, (train_idx, val_idx), data, normalize, config, device,
                             phase.batch_size)
        frozen_paths.append(setup.frozen_path)
        # One trace per phase. fp32 evaluation only: under bf16 autocast the folded weights round differently
        # from conv-then-BN, so the "same function up to float rounding" promise would not hold.
        fold = config.fold_batchnorm and not precision.uses_bf16(device)
        evaluator = BatchNormFolded(setup.model) if fold else None
        outcome = fit(setup.model, setup.splits["train"], setup.splits["val"], prepare=setup.prepare, phase=phase,
                      config=config, device=device, log=epoch_rows, evaluator=evaluator)
        train_seconds += outcome.seconds
        images_seen += outcome.images_seen
        padded_convs = max(padded_convs, outcome.padded_convs)
        if outcome.diverged:
            status, error = "diverged", f"non-finite loss at step {outcome.steps} of phase '{phase.name}'"
            break

    metrics = {}
    if status == "ok":  # `setup` is the last phase's: the model as trained, on the inputs it was trained on
        model = evaluator.current() if evaluator else setup.model
        metrics = evaluate(model, setup.splits["test"], setup.prepare, device)
        # fit() always validates after its last step: the last epoch row is this model on the validation split.
        metrics["val_top1"] = epoch_rows[-1]["val_top1"]
    row = _result_row(config, run_id=run_id, status=status, error=error, backbone=backbone, data=data, plan=plan,
                      n_train=len(train_idx), n_val=len(val_idx), metrics=metrics, epoch_rows=epoch_rows,
                      phases=phases, train_seconds=train_seconds, images_seen=images_seen, device=device,
                      frozen_paths=[f"{p.name}: {path}" for p, path in zip(phases, frozen_paths, strict=False)]
                      if len(phases) > 1 else frozen_paths, started_at=started_at)
    row.update(scores)
    row["eval_folded_bn"] = evaluator.n_folded if evaluator else 0  # how the last phase was evaluated
    row["padded_depthwise_grad"] = padded_convs  # convolutions per step trained through bench.speedups.depthwise
    for epoch_row in epoch_rows:
        epoch_row.update(schema_version=SCHEMA_VERSION, run_id=run_id, trial_id=config.trial_id)
    return TrialResult(row=row, epochs=epoch_rows)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where there is a card, else the CPU. A CUDA device always carries its index (Ray sets
    CUDA_VISIBLE_DEVICES, so it is the trial's own card): some torch.cuda calls refuse a bare ``cuda``."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


_DATASETS: dict[tuple, datasets.PreparedDataset] = {}


def load_dataset(config: TrialConfig) -> datasets.PreparedDataset:
    """The prepared dataset, decoded once per process (and once per cache folder across processes)."""
    key = (config.dataset, config.img_size, config.dataset_root, config.cache_dir)
    if key not in _DATASETS:
        _DATASETS[key] = datasets.prepare_dataset(config.dataset, config.img_size, root=config.dataset_root,
                                                  download=config.download, cache_dir=config.cache_dir)
    return _DATASETS[key]


def select_indices(y_train: np.ndarray, config: TrialConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training-subset and validation indices into the dataset's training split.

    The validation split is canonical (the same for every trial of the dataset); the training subset is
    drawn from the rest, stratified, seeded and nested across fractions and shots.
    """
    pool_idx, val_idx = datasets.split_train_val(y_train, config.val_fraction)
    chosen = datasets.stratified_subset(y_train[pool_idx], seed=config.seed, data_fraction=config.data_fraction,
                                        shots=config.shots)
    return pool_idx[chosen], val_idx


def plan_phases(config: TrialConfig, *, n_train: int, batch_size: int | None = None) -> list[Phase]:
    """Training steps per phase. ``lp_ft`` (Kumar et al. 2022) spends the first half of the budget as a
    linear probe at ``probe_lr`` and the second half fine-tuning everything at ``lr``. ``batch_size``
    (default: the config's) is smaller after an out-of-memory halving."""
    batch_size = batch_size or config.batch_size
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    total = config.steps if config.steps is not None else (config.epochs or 1) * steps_per_epoch
    if config.strategy == "lp_ft":
        probe = max(1, total // 2)
        return [Phase("probe", 1.0, config.probe_lr or config.lr, probe, batch_size),
                Phase("finetune", 0.0, config.lr, max(1, total - probe), batch_size)]
    return [Phase("train", config.freeze_fraction, config.lr, total, batch_size)]


def _feature_key(backbone: Backbone, data: datasets.PreparedDataset, config: TrialConfig,
                 device: torch.device) -> str:
    return features.feature_key(arch=config.backbone, weights_key=backbone.weights_key,
                                dataset_fingerprint=data.fingerprint, mean=backbone.mean, std=backbone.std,
                                img_size=config.img_size, device_type=device.type)


def _features_for(backbone: Backbone, data: datasets.PreparedDataset, normalize: Normalize, val_idx: np.ndarray,
                  config: TrialConfig, device: torch.device, batch_size: int) -> features.FrozenRows:
    return features.frozen_rows(_feature_key(backbone, data, config, device), backbone.body, data.x_train,
                                data.x_test, val_idx, normalize, device=device, train_batch=batch_size,
                                eval_batch=EVAL_BATCH_SIZE, cache_dir=config.cache_dir)


SIMILARITY_COLUMNS = ("similarity_score", "transferability", "similarity_regime", "similarity_method",
                      "bn_divergence", "leep", "nce", "h_score", "max_softmax", "energy")
_SIMILARITY: dict[str, dict[str, Any]] = {}


def measure_similarity(config: TrialConfig, data: datasets.PreparedDataset, *, backbone: Backbone | None = None,
                       device: torch.device | None = None) -> dict[str, Any]:
    """Similarity of the dataset to ImageNet and transferability of the frozen features (``bench.similarity.scores``).

    Measured with the *pretrained* weights of the trial's architecture, once per (weights, dataset, image size),
    from the pooled features a linear probe computes anyway; kept in memory and as
    ``<cache_dir>/similarity/<key>.json``, so the other trials of a run (on any worker sharing the cache) read
    it. A scratch trial carries its pretrained twin's numbers, so pretrained and scratch rows land in the same
    regime cell. Where no pretrained weights can be had (offline, no cache), the columns are null. The regime
    label uses ``config.similarity_threshold`` (the suite's ``analysis.similarity_threshold``).
    """
    if not config.similarity:
        return {name: None for name in SIMILARITY_COLUMNS}
    # Building a pretrained twin draws from torch's global RNG; the trial must not depend on whether this
    # process measured the scores or found them cached, so the RNG state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        return _measure_similarity(config, data, backbone=backbone, device=device)


def _measure_similarity(config: TrialConfig, data: datasets.PreparedDataset, *, backbone: Backbone | None,
                        device: torch.device | None) -> dict[str, Any]:
    device = device or resolve_device(config.device)
    if backbone is None or not backbone.pretrained:
        try:
            backbone = build_backbone(config.backbone, data.n_classes, pretrained=True, weights=config.weights)
        except UserError:
            return {name: None for name in SIMILARITY_COLUMNS}
        backbone.body.to(device, memory_format=torch.channels_last)
    key = f"{_feature_key(backbone, data, config, device)}-s{similarity.SIMILARITY_VERSION}"
    path = Path(config.cache_dir) / "similarity" / f"{key}.json" if config.cache_dir else None
    if key not in _SIMILARITY and path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError):  # a torn file: measure again
            _SIMILARITY[key] = json.loads(path.read_text())
    if key not in _SIMILARITY:
        pooled = _pooled_train_features(backbone, data, config, device)
        source_logits = None
        if backbone.source_head is not None:
            with torch.no_grad():
                source_logits = backbone.source_head(pooled)
        scores = similarity.compute_similarity(pooled, data.y_train, source_logits=source_logits,
                                               model=backbone.body, images=data.x_train, mean=backbone.mean,
                                               std=backbone.std)
        backbone.body.to(memory_format=torch.channels_last)  # the BN recorder may have run it contiguous
        _SIMILARITY[key] = {name: _finite_or_none(scores[name]) for name in SIMILARITY_COLUMNS}
        if path is not None:
            atomic_write_text(json.dumps(_SIMILARITY[key], sort_keys=True), path)
    measured = dict(_SIMILARITY[key])
    if measured["similarity_score"] is not None:
        measured["similarity_regime"] = similarity.similarity_regime(measured["similarity_score"],
                                                                     config.similarity_threshold)
    return measured


def _pooled_train_features(backbone: Backbone, data: datasets.PreparedDataset, config: TrialConfig,
                           device: torch.device) -> torch.Tensor:
    """The pooled features of every training image, batched the same way whatever trial asks first."""
    return features.split_rows(_feature_key(backbone, data, config, device), "train", backbone.body, data.x_train,
                               Normalize(backbone.mean, backbone.std).to(device), device=device,
                               batch_size=features.BATCH_SIZE.get(device.type, 256), pad=True,
                               cache_dir=config.cache_dir)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class PhaseSetup:
    """What one phase trains (``model``), on which inputs (``splits``, turned into model inputs by ``prepare``),
    and how the frozen part of the body is computed (``frozen_path``, recorded in the row)."""

    model: nn.Module
    splits: dict[str, Split]
    prepare: Callable[[torch.Tensor, bool], torch.Tensor]
    frozen_path: str


def _phase_setup(backbone: Backbone, plan: FreezePlan, images: dict[str, Split],
                 indices: tuple[np.ndarray, np.ndarray], data: datasets.PreparedDataset, normalize: Normalize,
                 config: TrialConfig, device: torch.device, batch_size: int) -> PhaseSetup:
    """The cached path where it is exact, else the plain one.

    ``features``: every group frozen: the head trains on the body's pooled features, computed once per dataset.
    ``prefix``: some groups frozen: the rest of the body and the head train on the frozen prefix's outputs,
    computed once per dataset and freeze boundary (``bench.speedups.prefix``). Both need a frozen part that sees no
    random augmentation, and give the plain path's numbers bit for bit: the rows are batched as the plain path
    batches them (``bench.speedups.features``), a short training batch computed on the spot. ``none``: nothing frozen.
    ``plain (<why>)``: images through the whole model.
    """
    reason = None
    if plan.n_frozen_groups == 0:
        reason = "none"
    elif not config.feature_cache:
        reason = "plain (feature_cache off)"
    elif config.augment != "none":
        reason = "plain (augmentation)"
    if reason is None and plan.n_frozen_groups == plan.n_groups:
        stored = _features_for(backbone, data, normalize, indices[1], config, device, batch_size)
        return PhaseSetup(backbone.head, _index(stored, images, indices[0], backbone.body, normalize, device),
                          lambda batch, train: batch, "features")
    if reason is None:
        split = prefix.split_frozen_prefix(backbone.body, plan.n_frozen_groups)
        if split is None:
            reason = "plain (no prefix split for this architecture)"
        else:
            front, back = split
            key = prefix.prefix_cache_key(arch=config.backbone, weights_key=backbone.weights_key,
                                          dataset_fingerprint=data.fingerprint, mean=backbone.mean,
                                          std=backbone.std, img_size=config.img_size,
                                          n_frozen_groups=plan.n_frozen_groups, stage_names=front.stage_names,
                                          device_type=device.type)
            stored = prefix.cached_prefix_outputs(key, front, data.x_train, data.x_test, indices[1], normalize,
                                                  device=device, train_batch=batch_size,
                                                  eval_batch=EVAL_BATCH_SIZE, cache_dir=config.cache_dir)
            if stored is None:
                reason = "plain (prefix outputs over the memory cap)"
            else:
                return PhaseSetup(TransferModel(back, backbone.head),
                                  _index(stored, images, indices[0], front, normalize, device),
                                  lambda batch, train: _channels_last(batch), "prefix")
    augmenter = Augment(config.augment, seed=config.seed)

    def prepare(batch: torch.Tensor, train: bool) -> torch.Tensor:
        batch = normalize(batch)
        if train:
            batch = augmenter(batch)
        return _channels_last(batch)

    return PhaseSetup(TransferModel(backbone.body, backbone.head), images, prepare, reason or "plain")


def _index(stored: features.FrozenRows, images: dict[str, Split], train_idx: np.ndarray, frozen: nn.Module,
           normalize: Normalize, device: torch.device) -> dict[str, Split]:
    """The cached rows of the trial's splits; a short training batch runs ``frozen`` on its images."""
    short_batch = ShortBatchRows(frozen, images["train"].inputs, normalize, device)
    return {"train": Split(stored.train[train_idx], images["train"].labels, short_batch),
            "val": Split(stored.val, images["val"].labels),
            "test": Split(stored.test, images["test"].labels)}


class ShortBatchRows:
    """The rows of a training batch shorter than the batch size, computed from its images in one batch of its
    size, as the plain path computes them, and kept for the trial: a row computed in a batch of r images is
    the row of any batch of r images (the batch's size picks the kernels, not its other images), so a batch
    whose rows were all seen at its size is read back. A probe on 21 images at a batch size of 32 runs its
    frozen body once, not at each of its steps."""

    def __init__(self, frozen: nn.Module, images: torch.Tensor, normalize: Normalize, device: torch.device) -> None:
        self.frozen, self.images, self.normalize, self.device = frozen, images, normalize, device
        self.kept: dict[int, dict[int, torch.Tensor]] = {}  # batch size -> image index -> row
        self.computed = 0  # batches computed (the others were read back)

    def __call__(self, batch_idx: torch.Tensor) -> torch.Tensor:
        kept = self.kept.setdefault(len(batch_idx), {})
        ids = batch_idx.tolist()
        if all(i in kept for i in ids):
            return torch.stack([kept[i] for i in ids])
        rows = features.compute_features(self.frozen, self.images[batch_idx], self.normalize, device=self.device,
                                         batch_size=len(batch_idx))
        kept.update(zip(ids, rows, strict=True))
        self.computed += 1
        return rows


def _channels_last(batch: torch.Tensor) -> torch.Tensor:
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


# ---------------------------------------------------------------------------------------------------------
# the training loop

GPU_RESIDENT_BYTES = 2 * 2**30  # a training split up to this size lives on the card for the whole trial


def _stage(split: Split, device: torch.device) -> Split:
    """On CUDA, the training split goes to the card once when it is small (uint8 images or cached features:
    indexing there beats a host-to-device copy per batch), else into pinned host memory."""
    if device.type != "cuda":
        return split
    if split.inputs.numel() * split.inputs.element_size() <= GPU_RESIDENT_BYTES:
        return dataclasses.replace(split, inputs=split.inputs.to(device), labels=split.labels.to(device))
    return dataclasses.replace(split, inputs=split.inputs.pin_memory(), labels=split.labels.pin_memory())


def training_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, device: torch.device,
                  label_smoothing: float = 0.0,
                  kernels: depthwise.padded_weight_grad | None = None) -> torch.Tensor:
    """The forward pass of a training step (bf16 autocast on CUDA; on a CPU, through ``kernels``, the padded
    weight gradient of ``bench.speedups.depthwise``) and its cross-entropy, in fp32."""
    with precision.autocast(device), kernels or contextlib.nullcontext():
        logits = model(inputs)
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


class EpochLosses:
    """An epoch's training losses, kept on the device: summed in float64 (the same additions, in the same
    order, as Python floats would make) and checked for finiteness through a host copy that waits for the
    step's forward pass only. A ``loss.item()`` per step would make the CPU wait for the whole step on CUDA,
    leaving the card idle while the next step's kernels are launched."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        cuda = device.type == "cuda"
        self._finite = torch.ones((), dtype=torch.bool, pin_memory=cuda)
        self._copied = torch.cuda.Event() if cuda else None

    def add(self, loss: torch.Tensor) -> None:
        """Call right after the forward pass: what it queues on the device comes before the backward pass."""
        loss = loss.detach()
        self.total += loss.double()
        self.count += 1
        self._finite.copy_(torch.isfinite(loss), non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def last_finite(self) -> bool:
        if self._copied is not None:
            self._copied.synchronize()
        return bool(self._finite)

    def mean(self) -> float:
        return self.total.item() / max(1, self.count)


@dataclass
class FitOutcome:
    steps: int
    seconds: float
    images_seen: int
    diverged: bool
    padded_convs: int = 0  # convolutions per step trained through bench.speedups.depthwise's padded weight gradient


def fit(model: nn.Module, train: Split, val: Split, *, prepare: Callable[[torch.Tensor, bool], torch.Tensor],
        phase: Phase, config: TrialConfig, device: torch.device, log: list[dict[str, Any]],
        evaluator: BatchNormFolded | None = None) -> FitOutcome:
    """Train ``model`` for ``phase.steps`` optimiser steps over shuffled mini-batches of ``train``; validate
    after every ``config.eval_every`` epochs and the last, on ``evaluator``'s folded twin where given."""
    # timm's factory: no weight decay on biases and norm weights, frozen parameters left out.
    optimizer = create_optimizer_v2(model, opt=config.optimizer, lr=phase.lr, weight_decay=config.weight_decay,
                                    momentum=config.momentum)
    warmup = int(config.warmup_fraction * phase.steps)
    # Per-step schedule: linear warm-up from lr/100 (stable start for freshly initialised heads), then cosine
    # decay to zero over the remaining steps.
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, phase.steps - warmup), warmup_t=warmup,
                                  warmup_lr_init=phase.lr * 0.01, warmup_prefix=True, lr_min=0.0,
                                  t_in_epochs=False)
    train = _stage(train, device)
    order = torch.Generator().manual_seed(config.seed)  # data order: a function of the seed alone
    steps_per_epoch = max(1, math.ceil(len(train) / phase.batch_size))
    n_epochs = math.ceil(phase.steps / steps_per_epoch)
    frozen = list(frozen_modules(model))  # what is frozen does not change within a phase
    # CPU only: on CUDA the mode would route nothing, and it costs a Python call per op of each forward pass.
    kernels = depthwise.padded_weight_grad() if config.padded_depthwise_grad and device.type == "cpu" else None
    step, seconds, seen = 0, 0.0, 0
    for epoch in range(1, n_epochs + 1):
        set_train_mode(model, frozen)
        tic = time.perf_counter()
        losses = EpochLosses(device)
        for batch_idx in torch.randperm(len(train), generator=order).split(phase.batch_size):
            short = train.short_batch is not None and len(batch_idx) < phase.batch_size
            rows = train.short_batch(batch_idx) if short else train.inputs[batch_idx]
            inputs = prepare(rows.to(device, non_blocking=True), True)
            labels = train.labels[batch_idx].to(device, non_blocking=True)
            loss = training_loss(model, inputs, labels, device, config.label_smoothing, kernels)
            losses.add(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Checked once the step is queued, so the device has its backward pass to work on meanwhile. A
            # non-finite loss ends the phase at this step; the update made from it is never evaluated (a
            # diverged trial has no metrics).
            if not losses.last_finite():
                return FitOutcome(step, seconds + time.perf_counter() - tic, seen, diverged=True,
                                  padded_convs=kernels.used // (step + 1) if kernels else 0)
            step += 1
            scheduler.step_update(step)
            seen += len(batch_idx)
            if step >= phase.steps:
                break
        seconds += time.perf_counter() - tic
        if epoch % config.eval_every == 0 or epoch == n_epochs:
            current = evaluator.current() if evaluator else model
            val_metrics = evaluate(current, val, prepare, device) if len(val) else {"top1": None, "nll": None}
            log.append({"epoch": epoch, "step": step, "phase": phase.name,
                        "train_loss": losses.mean(), "val_top1": val_metrics["top1"],
                        "val_nll": val_metrics["nll"], "lr": optimizer.param_groups[0]["lr"],
                        "elapsed_seconds": seconds})
    return FitOutcome(step, seconds, seen, diverged=False,
                      padded_convs=kernels.used // max(1, step) if kernels else 0)


@torch.no_grad()
def predict(model: nn.Module, split: Split, prepare: Callable, device: torch.device) -> torch.Tensor:
    model.eval()
    outputs = []
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        inputs = prepare(split.inputs[start:start + EVAL_BATCH_SIZE].to(device), False)
        with precision.autocast(device):
            outputs.append(model(inputs).float().cpu())
    return torch.cat(outputs)


def evaluate(model: nn.Module, split: Split, prepare: Callable, device: torch.device) -> dict[str, float]:
    """Top-1 accuracy (%), macro-F1 (%) and mean negative log-likelihood of ``model`` on ``split``."""
    logits = predict(model, split, prepare, device)
    predicted = logits.argmax(1)
    labels = split.labels
    return {
        "top1": 100.0 * (predicted == labels).float().mean().item(),
        "macro_f1": 100.0 * f1_score(labels.numpy(), predicted.numpy(), average="macro", zero_division=0),
        "nll": F.cross_entropy(logits, labels).item(),
    }


class Augment:
    """Random augmentation of normalised batches, drawn from a generator seeded by the trial seed.

    ``none``: nothing. ``flip``: horizontal flip with probability 1/2. ``crop_flip``: reflect-pad by 1/8 of the
    side, random crop back to size, then flip (the CIFAR recipe).
    """

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return batch
        n, _, height, width = batch.shape
        if self.kind == "crop_flip":
            pad = max(1, height // 8)
            padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=self.generator).tolist()
            batch = torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)])
        flip = (torch.rand(n, generator=self.generator) < 0.5).to(batch.device)
        return torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)


# ---------------------------------------------------------------------------------------------------------
# the result row

def _labels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(values, dtype=np.int64))  # a copy: object-store arrays are read-only


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def data_regime(images_per_class: float, thresholds: tuple[int, int] = DATA_REGIME_THRESHOLDS) -> str:
    limited, sufficient = thresholds
    if images_per_class < limited:
        return "scarce"
    return "limited" if images_per_class < sufficient else "sufficient"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch on the device. CPU: peak resident set size of this process since the
    trial started (``bench.utils.memory``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return memory.peak_rss_mb()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _result_row(config: TrialConfig, *, run_id: str, status: str, error: str | None, backbone: Backbone,
                data: datasets.PreparedDataset, plan: FreezePlan, n_train: int, n_val: int,
                metrics: dict[str, Any], epoch_rows: list[dict[str, Any]], phases: list[Phase],
                train_seconds: float, images_seen: int, device: torch.device, frozen_paths: list[str],
                started_at: str) -> dict[str, Any]:
    head_params = sum(p.numel() for p in backbone.head.parameters())
    val_scores = [r["val_top1"] for r in epoch_rows if r["val_top1"] is not None]
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": config.suite,
        "run_id": run_id,
        "trial_id": config.trial_id,
        "status": status,
        "error": error,
        "backbone": config.backbone,
        "pretrained": config.pretrained,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "dataset": config.dataset,
        "dataset_group": data.group,
        "dataset_fingerprint": data.fingerprint,
        "n_classes": data.n_classes,
        "freeze": str(config.freeze),
        "strategy": config.strategy,
        "freeze_depth": config.freeze_fraction,
        "frozen_param_fraction": plan.frozen_param_fraction,
        "freeze_groups": f"{plan.n_frozen_groups}/{plan.n_groups}",
        "trainable_params": plan.backbone_params - plan.frozen_params + head_params,
        "total_params": plan.backbone_params + head_params,
        "data_fraction": config.data_fraction,
        "shots": config.shots,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": len(data.y_test),
        "images_per_class": n_train / data.n_classes,
        "data_regime": data_regime(n_train / data.n_classes),
        "seed": config.seed,
        "hp_lr": config.lr,
        "hp_probe_lr": config.probe_lr,
        "hp_epochs": config.epochs,
        "hp_steps": config.steps,
        "hp_total_steps": sum(p.steps for p in phases),
        "hp_batch_size": config.fixed_batch_size,
        "hp_optimizer": config.optimizer,
        "hp_weight_decay": config.weight_decay,
        "hp_img_size": config.img_size,
        "hp_augment": config.augment,
        "metric_top1": metrics.get("top1"),
        "metric_macro_f1": metrics.get("macro_f1"),
        "metric_nll": metrics.get("nll"),
        "metric_val_top1": metrics.get("val_top1"),
        "metric_best_val_top1": max(val_scores) if val_scores else None,
        "feature_cache": any(path.endswith(("features", "prefix")) for path in frozen_paths),
        "frozen_prefix": ", ".join(frozen_paths),
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if train_seconds > 0 else None,
        "peak_memory_mb": peak_memory_mb(device),
        "device": device_name(device),
        "precision": precision.name(device),
        "node": socket.gethostname(),
        "torch_version": torch.__version__,
        "timm_version": _version("timm"),
        "ray_version": _version("ray"),
        "started_at": started_at,
        "finished_at": results.utc_now(),
    }
