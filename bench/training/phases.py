"""A trial's phases, and for each the cached path where it gives the plain path's numbers, else the plain one.

``plan_phases``: one phase per freeze depth (``lp_ft`` has two). ``phase_setup``: what a phase trains and on
which inputs. With every group frozen the head trains on pooled features computed once per dataset; with
some frozen, the rest of the body trains on the frozen prefix's outputs computed once per boundary
(``bench.speedups``). The cached rows are batched as the plain path batches them, so the numbers are the
same bit for bit (docs/design.md, "Why the cached paths are exact").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.config import TrialConfig
from bench.data import PreparedDataset
from bench.models import Backbone, Normalize, TransferModel
from bench.models.freeze import FreezePlan
from bench.models.strategies import probes_first
from bench.speedups import features, prefix
from bench.training.inputs import EVAL_BATCH_SIZE, Augment, Split, channels_last


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one freeze depth and one learning rate (lp_ft has two)."""

    name: str
    freeze: float | str  # a freeze depth, or the strategy whose own choice of parameters trains
    lr: float
    steps: int
    batch_size: int


def plan_phases(config: TrialConfig, *, n_train: int, batch_size: int | None = None) -> list[Phase]:
    """Training steps per phase. ``lp_ft`` (Kumar et al. 2022), and any strategy that probes first, spends the
    first half of the budget as a linear probe at ``probe_lr`` and the second half training as the strategy
    does (``lp_ft``: everything) at ``lr``. ``batch_size`` (default: the config's) is smaller after an
    out-of-memory halving."""
    batch_size = batch_size or config.batch_size
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    total = config.steps if config.steps is not None else (config.epochs or 1) * steps_per_epoch
    trains = _phase_trains(config)
    if probes_first(config.strategy):
        probe = max(1, total // 2)
        return [
            Phase("probe", 1.0, config.probe_lr or config.lr, probe, batch_size),
            Phase("finetune", trains, config.lr, max(1, total - probe), batch_size),
        ]
    return [Phase("train", trains, config.lr, total, batch_size)]


def _phase_trains(config: TrialConfig) -> float | str:
    """What the (last) phase trains: a depth where the strategy is one, else the strategy's name."""
    depth = config.freeze_fraction
    return config.strategy if depth is None else depth


def trial_feature_key(backbone: Backbone, data: PreparedDataset, config: TrialConfig, device: torch.device) -> str:
    return features.feature_key(
        arch=config.backbone,
        weights_key=backbone.weights_key,
        dataset_fingerprint=data.fingerprint,
        mean=backbone.mean,
        std=backbone.std,
        img_size=config.img_size,
        device_type=device.type,
    )


def _features_for(
    backbone: Backbone,
    data: PreparedDataset,
    normalize: Normalize,
    val_idx: np.ndarray,
    config: TrialConfig,
    device: torch.device,
    batch_size: int,
) -> features.FrozenRows:
    return features.frozen_rows(
        trial_feature_key(backbone, data, config, device),
        backbone.body,
        data.x_train,
        data.x_test,
        val_idx,
        normalize,
        device=device,
        train_batch=batch_size,
        eval_batch=EVAL_BATCH_SIZE,
        cache_dir=config.cache_dir,
    )


@dataclass
class PhaseSetup:
    """What one phase trains (``model``), on which inputs (``splits``, turned into model inputs by ``prepare``),
    and how the frozen part of the body is computed (``frozen_path``, recorded in the row)."""

    model: nn.Module
    splits: dict[str, Split]
    prepare: Callable[[torch.Tensor, bool], torch.Tensor]
    frozen_path: str


def phase_setup(
    backbone: Backbone,
    plan: FreezePlan,
    images: dict[str, Split],
    indices: tuple[np.ndarray, np.ndarray],
    data: PreparedDataset,
    normalize: Normalize,
    config: TrialConfig,
    device: torch.device,
    batch_size: int,
) -> PhaseSetup:
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
        return PhaseSetup(
            backbone.head,
            _index(stored, images, indices[0], backbone.body, normalize, device),
            lambda batch, train: batch,
            "features",
        )
    if reason is None:
        split = prefix.split_frozen_prefix(backbone.body, plan.n_frozen_groups)
        if split is None:
            reason = "plain (no prefix split for this architecture)"
        else:
            front, back = split
            key = prefix.prefix_cache_key(
                arch=config.backbone,
                weights_key=backbone.weights_key,
                dataset_fingerprint=data.fingerprint,
                mean=backbone.mean,
                std=backbone.std,
                img_size=config.img_size,
                n_frozen_groups=plan.n_frozen_groups,
                stage_names=front.stage_names,
                device_type=device.type,
            )
            stored = prefix.cached_prefix_outputs(
                key,
                front,
                data.x_train,
                data.x_test,
                indices[1],
                normalize,
                device=device,
                train_batch=batch_size,
                eval_batch=EVAL_BATCH_SIZE,
                cache_dir=config.cache_dir,
            )
            if stored is None:
                reason = "plain (prefix outputs over the memory cap)"
            else:
                return PhaseSetup(
                    TransferModel(back, backbone.head),
                    _index(stored, images, indices[0], front, normalize, device),
                    lambda batch, train: channels_last(batch),
                    "prefix",
                )
    augmenter = Augment(config.augment, seed=config.seed)

    def prepare(batch: torch.Tensor, train: bool) -> torch.Tensor:
        batch = normalize(batch)
        if train:
            batch = augmenter(batch)
        return channels_last(batch)

    return PhaseSetup(TransferModel(backbone.body, backbone.head), images, prepare, reason or "plain")


def _index(
    stored: features.FrozenRows,
    images: dict[str, Split],
    train_idx: np.ndarray,
    frozen: nn.Module,
    normalize: Normalize,
    device: torch.device,
) -> dict[str, Split]:
    """The cached rows of the trial's splits; a short training batch runs ``frozen`` on its images."""
    short_batch = ShortBatchRows(frozen, images["train"].inputs, normalize, device)
    return {
        "train": Split(stored.train[train_idx], images["train"].labels, short_batch),
        "val": Split(stored.val, images["val"].labels),
        "test": Split(stored.test, images["test"].labels),
    }


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
        rows = features.compute_features(
            self.frozen, self.images[batch_idx], self.normalize, device=self.device, batch_size=len(batch_idx)
        )
        kept.update(zip(ids, rows, strict=True))
        self.computed += 1
        return rows
