"""Frozen features, computed once and shared.

When a backbone's body is frozen and sees no random augmentation, its output on an image is the same for every
trial that shares (weights, dataset, image size, preprocessing), whatever the data fraction, seed or learning
rate. So the pooled features of *every* image of a dataset are computed once, kept in memory (and, with a
cache folder, on disk next to the prepared dataset), and a linear probe trains its head on them: one forward
pass per dataset instead of one per image per epoch per trial.

The cache key holds everything the features depend on -- the weights' hash, the architecture, the dataset's
fingerprint (name, root, size, preprocessing version), mean/std, the precision (bf16 on CUDA) and this
module's version -- so a stale hit is impossible: change any of them and the key changes.

Memory holds at most ``BENCH_FEATURE_MEMORY_GB`` (default 4) of feature sets per process, least recently used
dropped first; the disk copy in the cache folder stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import precision
from bench.atomic import atomic_write

log = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when the way features are computed changes
MEMORY_BUDGET_BYTES = int(float(os.environ.get("BENCH_FEATURE_MEMORY_GB", "4")) * 2**30)
_MEMORY: OrderedDict[str, "FeatureSet"] = OrderedDict()  # least recently used first
STATS = {"hits": 0, "misses": 0, "disk_hits": 0, "evictions": 0}


@dataclass
class FeatureSet:
    """Pooled body features of one prepared dataset; rows align with the dataset's arrays."""

    train: torch.Tensor  # float32 [N_train, D]
    test: torch.Tensor  # float32 [N_test, D]

    @property
    def nbytes(self) -> int:
        return self.train.numel() * 4 + self.test.numel() * 4


def feature_key(*, arch: str, weights_key: str, dataset_fingerprint: str, mean: tuple, std: tuple,
                img_size: int, device_type: str = "cpu") -> str:
    """Everything the features depend on; the precision too (bf16 autocast on CUDA, fp32 elsewhere)."""
    # fp32 keys carry no precision entry: keys written before it existed stay valid.
    arithmetic = {"precision": "bf16"} if precision.uses_bf16(torch.device(device_type)) else {}
    blob = json.dumps({"arch": arch, "weights": weights_key, "dataset": dataset_fingerprint, "mean": list(mean),
                       "std": list(std), "img_size": img_size, "version": FEATURES_VERSION, **arithmetic},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# Images per forward pass of a frozen body. On a CPU the activations of 64 small images stay in the caches,
# where 256 spill to memory: 1.3-1.5x faster on 48 px images here. An image's output does not depend on the
# batch size, bit for bit, except in a very short last batch (a handful of images), which oneDNN computes with
# another kernel: those differ by float rounding (1e-5). A card wants large batches.
BATCH_SIZE = {"cpu": 64, "cuda": 256}


@torch.no_grad()
def compute_features(body: nn.Module, images: np.ndarray, normalize: nn.Module, *, device: torch.device,
                     batch_size: int | None = None) -> torch.Tensor:
    """body(normalize(images)) in eval mode, in batches; returns float32 features on the CPU."""
    batch_size = batch_size or BATCH_SIZE.get(device.type, 256)
    body.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)  # a writable copy
        with precision.autocast(device):
            outputs.append(body(normalize(batch).contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def cached_features(key: str, body: nn.Module, x_train: np.ndarray, x_test: np.ndarray, normalize: nn.Module, *,
                    device: torch.device, cache_dir: str | None) -> FeatureSet:
    """The features for ``key``: from memory, else from ``cache_dir``, else computed (and stored)."""
    if key in _MEMORY:
        STATS["hits"] += 1
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = Path(cache_dir) / "features" / f"{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            features = FeatureSet(train=stored["train"], test=stored["test"])
            STATS["disk_hits"] += 1
        except Exception as error:  # a torn file from a killed writer: recompute it
            log.warning("feature cache %s unreadable (%s); recomputing", path, error)
            features = None
    else:
        features = None
    if features is None:
        STATS["misses"] += 1
        features = FeatureSet(train=compute_features(body, x_train, normalize, device=device),
                              test=compute_features(body, x_test, normalize, device=device))
        if path is not None:
            _atomic_save({"train": features.train, "test": features.test}, path)
    _remember(key, features)
    log.info("feature cache: key %s, %.1f MB, hits %d, misses %d", key, features.nbytes / 2**20, STATS["hits"],
             STATS["misses"])
    return features


def _remember(key: str, features: FeatureSet) -> None:
    """Keep ``features`` in memory, dropping the least recently used sets beyond the budget (the disk copy
    stays, so an evicted set costs one read, not a recomputation)."""
    _MEMORY[key] = features
    while len(_MEMORY) > 1 and sum(f.nbytes for f in _MEMORY.values()) > MEMORY_BUDGET_BYTES:
        _MEMORY.popitem(last=False)
        STATS["evictions"] += 1


def _atomic_save(obj: object, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def clear_memory_cache() -> None:
    _MEMORY.clear()
    for name in STATS:
        STATS[name] = 0
