"""Canonical splits and stratified, nested subsets: the data side of a reproducible low-data protocol.

Three different selections are made per class, each with its own random stream so they never correlate:
the held-out test split of datasets that ship without one (fixed seed, `HELDOUT_TEST_FRACTION`), the
validation split carved from the training split (`split_seed`, shared by every trial of a dataset), and the
trial's training subset (`seed`: the trial's data seed, `TrialConfig.subset_seed`). Each is a per-class
permutation of which the first k are taken, so a smaller subset is always inside a larger one for the same seed
(1% inside 10%, 5-shot inside 10-shot).
"""

from __future__ import annotations

import math

import numpy as np

HELDOUT_TEST_FRACTION = 0.25  # datasets without an official test split: this share of each class is test
HELDOUT_SPLIT_SEED = 0  # fixed forever: changing it changes every such dataset's test set

# Stream tags: the first word of each SeedSequence, so seed 0 of one purpose is unrelated to seed 0 of another.
_TEST_STREAM = 1
_VAL_STREAM = 2
_SUBSET_STREAM = 3


def _round_half_up(value: float) -> int:
    # Python's round() is banker's rounding (round(2.5) == 2); half-up is what people expect of "10% of 25".
    return int(math.floor(value + 0.5 + 1e-9))


def _class_permutation(indices: np.ndarray, stream: int, seed: int, label: int) -> np.ndarray:
    rng = np.random.default_rng([stream, seed % 2**64, label])
    return indices[rng.permutation(len(indices))]


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0)):
        raise ValueError(f"labels must be a 1-D array of non-negative integers, got {y.dtype} {y.shape}")
    return y


def holdout_split(
    y: np.ndarray, fraction: float, seed: int, stream: int = _TEST_STREAM
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out round(fraction * n_c) items (at least 1 when the class has >= 2, none when it has
    1, never all of them). Returns (kept_idx, held_idx), disjoint and sorted."""
    y = _labels(y)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    held: list[np.ndarray] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_class = len(members)
        count = _round_half_up(fraction * n_class)
        if fraction > 0 and n_class >= 2:
            count = min(max(count, 1), n_class - 1)
        else:
            count = 0
        held.append(_class_permutation(members, stream, seed, int(label))[:count])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    kept_mask = np.ones(len(y), dtype=bool)
    kept_mask[held_idx] = False
    return np.flatnonzero(kept_mask).astype(np.int64), held_idx.astype(np.int64)


def split_train_val(y_train: np.ndarray, val_fraction: float, split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical validation split from the training split: per class round(val_fraction * n_c) images (half
    up; at least 1 when the class has >= 2 images, 0 when it has 1, and at least one always stays for
    training). `split_seed` is fixed per dataset, not the trial seed, so every trial shares one val set.
    Returns (train_pool_idx, val_idx): indices into `y_train`, disjoint, sorted."""
    return holdout_split(y_train, val_fraction, split_seed, stream=_VAL_STREAM)


def stratified_subset(
    y_pool: np.ndarray, *, seed: int, data_fraction: float | None = None, shots: int | None = None
) -> np.ndarray:
    """The trial's training subset: per class the first max(1, round(data_fraction * n_c)) (half up), or the
    first min(shots, n_c) -- a class with fewer images than `shots` gives all it has -- of a permutation
    seeded by (seed, class). Nested across fractions and shots for one seed. Returns sorted indices into
    `y_pool`."""
    y_pool = _labels(y_pool)
    if (data_fraction is None) == (shots is None):
        raise ValueError("give exactly one of data_fraction and shots")
    if data_fraction is not None and not (
        isinstance(data_fraction, (int, float)) and not isinstance(data_fraction, bool) and 0.0 < data_fraction <= 1.0
    ):
        raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction!r}")
    if shots is not None and not (isinstance(shots, (int, np.integer)) and not isinstance(shots, bool) and shots >= 1):
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
    chosen: list[np.ndarray] = []
    for label in np.unique(y_pool):
        members = np.flatnonzero(y_pool == label)
        if data_fraction is not None:
            count = max(1, _round_half_up(data_fraction * len(members)))
        else:
            count = min(int(shots), len(members))  # type: ignore[arg-type]
        chosen.append(_class_permutation(members, _SUBSET_STREAM, seed, int(label))[:count])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, dtype=np.int64)
