"""Frozen features, computed once and shared: the rows a frozen module gives every image of a prepared dataset.

A body that is frozen and sees no random augmentation gives each image the same output in every trial that shares
(weights, dataset, image size, preprocessing), whatever the data fraction, seed or learning rate. ``frozen_rows``
computes those rows once per dataset, split by split, and keeps them in memory (least recently used dropped beyond
``BENCH_FEATURE_MEMORY_GB``, default 4, per process) and under ``<cache_dir>/features/``. ``feature_key`` holds
everything the outputs depend on; ``rows_key`` adds the batching and the CPU thread count, because each row is
computed in a batch of the size the plain path computes it in (training rows padded to full batches, evaluation
rows in evaluation's chunks), which keeps the cached path's numbers bit for bit the plain path's. Why that
batching, and what the key holds: (docs/design.md, "The cached paths, and why they are exact").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.data.shards import ImageRows
from bench.training import precision
from bench.utils.atomic import atomic_write

Images = np.ndarray | ImageRows  # uint8 [N, 3, S, S]: in memory, or read on demand from a dataset's shards

log = logging.getLogger(__name__)

FEATURES_VERSION = 2  # bump when the way features are computed changes (cache keys carry it)
MEMORY_BUDGET_BYTES = int(float(os.environ.get("BENCH_FEATURE_MEMORY_GB", "4")) * 2**30)
_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first
STATS = {"hits": 0, "misses": 0, "disk_hits": 0, "evictions": 0}

# Images per forward pass where nothing else fixes the batching (the similarity pass, the size probe). On a CPU
# the activations of 64 small images stay in the processor's caches, where 256 spill to memory; a card wants large
# batches.
BATCH_SIZE = {"cpu": 64, "cuda": 256}


def feature_key(
    *,
    arch: str,
    weights_key: str,
    dataset_fingerprint: str,
    mean: tuple,
    std: tuple,
    img_size: int,
    device_type: str = "cpu",
) -> str:
    """Everything the features depend on; the precision too (bf16 autocast on CUDA, fp32 elsewhere)."""
    # fp32, the default, adds no entry to the key; bf16 does, so bf16 and fp32 rows never share a key.
    arithmetic = {"precision": "bf16"} if precision.uses_bf16(torch.device(device_type)) else {}
    blob = json.dumps(
        {
            "arch": arch,
            "weights": weights_key,
            "dataset": dataset_fingerprint,
            "mean": list(mean),
            "std": list(std),
            "img_size": img_size,
            "version": FEATURES_VERSION,
            **arithmetic,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def rows_key(
    base: str, split: str, *, batch_size: int, pad: bool, device: torch.device, indices: np.ndarray | None = None
) -> str:
    """The key of one split's rows: ``base`` (what the outputs depend on), and how they were computed: the
    batching, and on a CPU the thread count, which also picks kernels (PyTorch's small-batch 1x1 convolution
    kernel is a one-thread choice); for a subset of a split, such as the validation images, which images in
    which order."""
    threads = torch.get_num_threads() if device.type == "cpu" else None
    blob = json.dumps(
        {
            "base": base,
            "split": split,
            "batch_size": batch_size,
            "pad": pad,
            "threads": threads,
            "indices": None
            if indices is None
            else hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@torch.no_grad()
def compute_features(
    body: nn.Module,
    images: Images | torch.Tensor,
    normalize: nn.Module,
    *,
    device: torch.device,
    batch_size: int | None = None,
    pad: bool = False,
) -> torch.Tensor:
    """body(normalize(images)) in eval mode, in consecutive batches of ``batch_size``; float32, on the CPU.

    ``pad``: the last batch, when short, is filled up to ``batch_size`` with the images before it (repeated
    when there are fewer images than that), so that every image is computed in a batch of exactly
    ``batch_size``; the extra rows are dropped.
    """
    batch_size = batch_size or BATCH_SIZE.get(device.type, 256)
    body.eval()
    n, outputs = len(images), []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        window = np.arange(stop - batch_size, stop) % n if pad and stop - start < batch_size else None
        chunk = images[window] if window is not None else images[start:stop]
        batch = torch.as_tensor(np.array(chunk) if isinstance(chunk, np.ndarray) else chunk).to(device)
        with precision.autocast(device):
            out = body(normalize(batch).contiguous(memory_format=torch.channels_last)).float().cpu()
        outputs.append(out[-(stop - start) :] if window is not None else out)
    return torch.cat(outputs) if outputs else torch.empty(0)


def cached_rows(key: str, compute: Callable[[], torch.Tensor], *, cache_dir: str | None) -> torch.Tensor:
    """The rows for ``key``: from memory, else from ``cache_dir``, else ``compute()`` (and stored)."""
    if key in _MEMORY:
        STATS["hits"] += 1
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = Path(cache_dir) / "features" / f"{key}.pt" if cache_dir else None
    rows = None
    if path is not None and path.is_file():
        try:
            rows = torch.load(path, map_location="cpu", weights_only=True)["rows"]
            STATS["disk_hits"] += 1
        except Exception as error:  # a torn file from a killed writer: recompute it
            log.warning("feature cache %s unreadable (%s); recomputing", path, error)
    if rows is None:
        STATS["misses"] += 1
        rows = compute()
        if path is not None:
            atomic_write(path, lambda tmp: torch.save({"rows": rows}, tmp))
    _remember(key, rows)
    log.info(
        "feature cache: key %s, %.1f MB, hits %d, misses %d", key, nbytes(rows) / 2**20, STATS["hits"], STATS["misses"]
    )
    return rows


@dataclass
class FrozenRows:
    """A frozen module's outputs on one prepared dataset, each row batched as the plain path batches it."""

    train: torch.Tensor  # every training-split image (x_train), in full batches of the training batch size
    val: torch.Tensor  # the validation images (x_train[val_idx]), in evaluation's chunks
    test: torch.Tensor  # x_test, in evaluation's chunks

    @property
    def nbytes(self) -> int:
        return nbytes(self.train) + nbytes(self.val) + nbytes(self.test)


def frozen_rows(
    base: str,
    body: nn.Module,
    x_train: Images,
    x_test: Images,
    val_idx: np.ndarray,
    normalize: nn.Module,
    *,
    device: torch.device,
    train_batch: int,
    eval_batch: int,
    cache_dir: str | None,
) -> FrozenRows:
    """``body(normalize(x))`` for every image a trial trains or evaluates on, each split from memory, disk or
    computed once (``cached_rows``), keyed by ``base`` and the batching."""

    def rows(split: str, images: Images, batch_size: int, pad: bool, indices: np.ndarray | None = None) -> torch.Tensor:
        return split_rows(
            base,
            split,
            body,
            images,
            normalize,
            device=device,
            batch_size=batch_size,
            pad=pad,
            cache_dir=cache_dir,
            indices=indices,
        )

    return FrozenRows(
        train=rows("train", x_train, train_batch, True),
        val=rows("val", x_train.take(val_idx, axis=0), eval_batch, False, val_idx),
        test=rows("test", x_test, eval_batch, False),
    )


def split_rows(
    base: str,
    split: str,
    body: nn.Module,
    images: Images,
    normalize: nn.Module,
    *,
    device: torch.device,
    batch_size: int,
    pad: bool,
    cache_dir: str | None,
    indices: np.ndarray | None = None,
) -> torch.Tensor:
    """``body(normalize(images))`` for one split, batched as given (``compute_features``), from memory, disk
    or computed once (``cached_rows``), keyed by ``base`` and that batching (``rows_key``)."""
    return cached_rows(
        rows_key(base, split, batch_size=batch_size, pad=pad, device=device, indices=indices),
        lambda: compute_features(body, images, normalize, device=device, batch_size=batch_size, pad=pad),
        cache_dir=cache_dir,
    )


def nbytes(rows: torch.Tensor) -> int:
    return rows.numel() * rows.element_size()


def _remember(key: str, rows: torch.Tensor) -> None:
    """Keep ``rows`` in memory, dropping the least recently used beyond the budget (the disk copy stays, so an
    evicted set costs one read, not a recomputation)."""
    _MEMORY[key] = rows
    while len(_MEMORY) > 1 and sum(nbytes(r) for r in _MEMORY.values()) > MEMORY_BUDGET_BYTES:
        _MEMORY.popitem(last=False)
        STATS["evictions"] += 1


def clear_memory_cache() -> None:
    _MEMORY.clear()
    for name in STATS:
        STATS[name] = 0
