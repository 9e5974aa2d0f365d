"""A trial's similarity and transferability scores, measured once per (weights, dataset, image size).

The scores themselves are ``bench.similarity``'s; this module computes them from the pooled features a
linear probe computes anyway and keeps them in memory and in the cache folder, for every trial of a run.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from bench import similarity
from bench.config import TrialConfig
from bench.data import PreparedDataset
from bench.errors import UserError
from bench.models import Backbone, Normalize, build_backbone
from bench.results.schema import SIMILARITY_COLUMNS
from bench.speedups import features
from bench.training.device import resolve_device
from bench.training.phases import trial_feature_key
from bench.utils.atomic import atomic_write_text

_SIMILARITY: dict[str, dict[str, Any]] = {}


def measure_similarity(
    config: TrialConfig, data: PreparedDataset, *, backbone: Backbone | None = None, device: torch.device | None = None
) -> dict[str, Any]:
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


def _measure_similarity(
    config: TrialConfig, data: PreparedDataset, *, backbone: Backbone | None, device: torch.device | None
) -> dict[str, Any]:
    device = device or resolve_device(config.device)
    if backbone is None or not backbone.pretrained:
        try:
            backbone = build_backbone(
                config.backbone, data.n_classes, pretrained=True, weights=config.weights, img_size=config.img_size
            )
        except UserError:
            return {name: None for name in SIMILARITY_COLUMNS}
        backbone.body.to(device, memory_format=torch.channels_last)
    key = f"{trial_feature_key(backbone, data, config, device)}-s{similarity.SIMILARITY_VERSION}"
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
        scores = similarity.compute_similarity(
            pooled,
            data.y_train,
            source_logits=source_logits,
            model=backbone.body,
            images=data.x_train,
            mean=backbone.mean,
            std=backbone.std,
        )
        backbone.body.to(memory_format=torch.channels_last)  # the BN recorder may have run it contiguous
        _SIMILARITY[key] = {name: _finite_or_none(scores[name]) for name in SIMILARITY_COLUMNS}
        if path is not None:
            atomic_write_text(json.dumps(_SIMILARITY[key], sort_keys=True), path)
    measured = dict(_SIMILARITY[key])
    if measured["similarity_score"] is not None:
        measured["similarity_regime"] = similarity.similarity_regime(
            measured["similarity_score"], config.similarity_threshold
        )
    return measured


def _pooled_train_features(
    backbone: Backbone, data: PreparedDataset, config: TrialConfig, device: torch.device
) -> torch.Tensor:
    """The pooled features of every training image, batched the same way whatever trial asks first."""
    return features.split_rows(
        trial_feature_key(backbone, data, config, device),
        "train",
        backbone.body,
        data.x_train,
        Normalize(backbone.mean, backbone.std).to(device),
        device=device,
        batch_size=features.BATCH_SIZE.get(device.type, 256),
        pad=True,
        cache_dir=config.cache_dir,
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def clear_similarity_cache() -> None:
    """Forget the scores this process measured (the cache folder's files stay)."""
    _SIMILARITY.clear()
