"""What a model is fed: a split's inputs and labels, and the random augmentation of a training batch.

A split holds uint8 images, or the cached rows of a frozen part of the body (``bench.training.phases``); the
model's own normalisation (``bench.models.Normalize``) turns images into its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import TrialConfig
from bench.data import split_train_val, stratified_subset
from bench.data.shards import ImageRows

EVAL_BATCH_SIZE = 128  # evaluation's chunk size; on a CPU at small images 128 beats 256 (activations stay in cache)


@dataclass
class Split:
    """Inputs and labels of one split, on the CPU: uint8 images read on demand from the dataset's shards
    (``ImageRows``), or float features in memory. ``inputs[index]`` gives a batch (``batch_of`` makes it a tensor).

    ``short_batch``: for cached rows computed in full training batches, the rows of a shorter batch, computed
    from its images in one batch of that size (what the plain path computes for them) or read back from an
    earlier batch of that size (``ShortBatchRows``).
    """

    inputs: torch.Tensor | ImageRows
    labels: torch.Tensor
    short_batch: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)


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
            batch = torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])
        flip = (torch.rand(n, generator=self.generator) < 0.5).to(batch.device)
        return torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)


def batch_of(rows: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch read from a split's inputs, as a tensor (no copy)."""
    return torch.as_tensor(rows)


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


def as_labels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(values, dtype=np.int64))  # a copy: object-store arrays are read-only


def select_indices(y_train: np.ndarray, config: TrialConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training-subset and validation indices into the dataset's training split.

    The validation split is canonical (the same for every trial of the dataset); the training subset is
    drawn from the rest, stratified, nested across fractions and shots, by ``config.subset_seed`` (the trial's
    ``data_seed``, else its ``seed``): the seed of everything else does not move it.
    """
    pool_idx, val_idx = split_train_val(y_train, config.val_fraction)
    chosen = stratified_subset(
        y_train[pool_idx], seed=config.subset_seed, data_fraction=config.data_fraction, shots=config.shots
    )
    return pool_idx[chosen], val_idx
