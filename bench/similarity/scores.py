"""Source-domain similarity to ImageNet, measured: the numbers behind ``similarity_regime``.

``source_similarity`` passes target images through the pretrained network (eval mode, resized to its pretraining
resolution) and compares their BatchNorm input moments with the ImageNet moments each BN layer stores:
``bn_divergence`` is the mean per-channel Bhattacharyya distance over the coarsest-resolution layers, less a
split-half jackknife's small-sample bias; ``similarity_score = exp(-bn_divergence)``, in (0, 1], higher = more
ImageNet-like. A network without BN statistics is measured through ``REFERENCE_BACKBONE``. ``similarity_regime``
cuts the score at ``DEFAULT_SIMILARITY_THRESHOLD`` (0.903). ``compute_similarity`` gathers it with the scores of
``bench.similarity.transferability`` for one (backbone, weights, dataset, image size) and never raises on odd
data (NaN, with the reason in ``notes``). Method and calibration: docs/similarity.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data.shards import ImageRows
from bench.similarity.batchnorm import BatchNormRecorder, LayerStatistics, batchnorm_layers, coarsest_layers
from bench.similarity.transferability import check_features, h_score, leep, logme, nce

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "REFERENCE_BACKBONE",
    "BatchNormRecorder",
    "LayerStatistics",
    "RecordedStatistics",
    "SimilarityScores",
    "bhattacharyya_distance",
    "bn_divergence",
    "coarsest_layers",
    "compute_similarity",
    "divergence_corrected",
    "divergence_from_statistics",
    "energy_score",
    "h_score",
    "leep",
    "logme",
    "max_softmax_score",
    "has_imagenet_statistics",
    "nce",
    "pretraining_resolution",
    "record_statistics",
    "similarity_regime",
    "source_similarity",
]

SIMILARITY_VERSION = 2  # bump when a score's definition or its defaults change (cache keys carry it)

# Calibrated with scripts/calibrate_similarity.py on 168 labelled cases (3 backbones x 4 image sizes x 14 image
# sets): the midpoint, in divergence, between the lowest natural set (0.914) and the highest far domain (0.892)
# (docs/similarity.md, "Calibration and the regime threshold"). Override per call.
DEFAULT_SIMILARITY_THRESHOLD = 0.903
REFERENCE_BACKBONE = "efficientnet_lite0"
DEFAULT_MAX_IMAGES = 256  # a few hundred images pin the last-stage moments to ~1%; more only costs time
_MIN_IMAGES_NOTE = 32  # below this even the bias-corrected divergence is noisy: noted in `notes`
_EPS = 1e-5  # BatchNorm's own epsilon: variances below it carry no signal

ImageSource = np.ndarray | torch.Tensor | ImageRows | Iterable[torch.Tensor]


@dataclass(frozen=True)
class SimilarityScores:
    """The source-domain similarity of one image set under one pretrained model."""

    similarity_score: float  # exp(-bn_divergence) in (0, 1]; higher = more ImageNet-like; NaN if unavailable
    bn_divergence: float  # mean Bhattacharyya distance per channel over the coarsest-resolution BN layers
    method: str  # "bn_statistics" | "bn_reference:<backbone>" | "unavailable"
    n_images: int
    n_layers: int
    resolution: int  # side in pixels the images were resized to for the measurement
    note: str | None = None  # why the score is NaN, or what to keep in mind

    @property
    def similarity_regime(self) -> str | None:
        return similarity_regime(self.similarity_score) if math.isfinite(self.similarity_score) else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ obvious scores


def _logits(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    return check_features(logits, "logits")


def max_softmax_score(logits: np.ndarray | torch.Tensor) -> float:
    """Mean over images of the ImageNet head's largest softmax probability (Hendrycks & Gimpel 2017).

    The "obvious" in-distribution score, kept for comparison: it misranks domains on the bundled backbones.
    """
    from scipy.special import softmax

    return float(softmax(_logits(logits), axis=1).max(1).mean())


def energy_score(logits: np.ndarray | torch.Tensor, T: float = 1.0) -> float:
    """Mean negative energy T * logsumexp(logits / T) (Liu et al. 2020); higher = more in-distribution.

    Kept for comparison, like `max_softmax_score`; unbounded, in logit units.
    """
    from scipy.special import logsumexp

    if T <= 0:
        raise ValueError(f"energy temperature T must be positive, got {T}")
    return float((T * logsumexp(_logits(logits) / T, axis=1)).mean())


# ------------------------------------------------------------------------------ BatchNorm-statistics score


def bhattacharyya_distance(
    mean_a: np.ndarray, var_a: np.ndarray, mean_b: np.ndarray, var_b: np.ndarray, eps: float = _EPS
) -> np.ndarray:
    """Elementwise Bhattacharyya distance between N(mean_a, var_a) and N(mean_b, var_b) (>= 0, 0 iff equal).

    D = (mean_a - mean_b)^2 / (4 (var_a + var_b)) + 1/2 log((var_a + var_b) / (2 sqrt(var_a var_b))),
    with `eps` added to both variances (BatchNorm's epsilon), so a constant channel gives a finite distance.
    """
    va = np.asarray(var_a, dtype=np.float64) + eps
    vb = np.asarray(var_b, dtype=np.float64) + eps
    diff = np.asarray(mean_a, dtype=np.float64) - np.asarray(mean_b, dtype=np.float64)
    return diff**2 / (4 * (va + vb)) + 0.5 * np.log((va + vb) / (2 * np.sqrt(va * vb)))


def divergence_from_statistics(stats: Sequence[LayerStatistics], layers: str = "coarsest") -> tuple[float, int]:
    """(mean Bhattacharyya distance over channels, number of layers used) from recorded BN statistics.

    `layers="coarsest"` keeps the layers whose input map has the smallest spatial size seen (the network's
    last stage, stride 32 in most CNNs); `"all"` keeps every layer. Channels are pooled across the kept
    layers, so a wide layer weighs in proportion to its width.
    """
    if not stats:
        return float("nan"), 0
    if layers == "coarsest":
        smallest = min(s.spatial[0] * s.spatial[1] for s in stats)
        kept = [s for s in stats if s.spatial[0] * s.spatial[1] == smallest]
    elif layers == "all":
        kept = list(stats)
    else:
        raise ValueError(f"layers must be 'coarsest' or 'all', got {layers!r}")
    distances = np.concatenate([bhattacharyya_distance(s.running_mean, s.running_var, s.mean, s.var) for s in kept])
    return float(distances.mean()), len(kept)


def has_imagenet_statistics(model: nn.Module) -> bool:
    """True if the model has BatchNorm2d layers whose buffers were ever updated (not the 0/1 initial values)."""
    for _, module in batchnorm_layers(model):
        if not (torch.all(module.running_mean == 0) and torch.all(module.running_var == 1)):
            return True
    return False


def pretraining_resolution(model: nn.Module, default: int = 224) -> int:
    """The input side the model's statistics were recorded at: timm's pretrained_cfg, else 224."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("test_input_size") or cfg.get("input_size")
    return int(size[-1]) if size else default


def _batches(
    images: ImageSource,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    *,
    max_images: int,
    batch_size: int,
) -> Iterable[torch.Tensor]:
    """Float batches [B, 3, H, W] normalised with mean/std, at most `max_images` images in all.

    Arrays and tensors (uint8 0..255 or float 0..1, NCHW) are subsampled evenly (datasets are often sorted by
    class, so even spacing keeps every class) and normalised here; an iterable of tensors is taken as
    already-normalised batches and used as given, until `max_images`.
    """
    if isinstance(images, (np.ndarray, torch.Tensor, ImageRows)):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, 3, H, W] (or [N, 1, H, W]), got shape {tuple(images.shape)}")
        n = images.shape[0]
        index = np.unique(np.linspace(0, n - 1, num=min(n, max_images)).round().astype(np.int64)) if n else []
        m = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0)).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else (1.0, 1.0, 1.0)).view(1, -1, 1, 1)
        for start in range(0, len(index), batch_size):
            chunk = images[index[start : start + batch_size]]
            x = torch.as_tensor(np.ascontiguousarray(chunk) if isinstance(chunk, np.ndarray) else chunk)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            yield (x - m) / s
        return
    seen = 0
    for batch in images:
        if seen >= max_images:
            return
        batch = batch[: max_images - seen].float()
        seen += batch.shape[0]
        yield batch


@dataclass(frozen=True)
class RecordedStatistics:
    """BN input moments of one image set, whole and in two interleaved halves (for the bias correction)."""

    layers: list[LayerStatistics]
    halves: tuple[list[LayerStatistics], list[LayerStatistics]]
    n_images: int
    resolution: int


def record_statistics(
    model: nn.Module,
    images: ImageSource,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resolution: int | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    batch_size: int = 8,
    coarsest_only: bool = False,
) -> RecordedStatistics:
    """Run `images` through `model` (eval mode, no grad, resized to `resolution`) recording BN input moments.

    Alternate images go to two halves, recorded apart, so `divergence_corrected` can remove the small-sample
    bias. The model's train/eval mode is restored afterwards. `coarsest_only` records only the layers that
    `layers="coarsest"` reads (`coarsest_layers`), and, for speed, runs the images through a twin of the model
    with every other BatchNorm folded into its convolution (`bench.speedups.fold`: the same function up to float
    rounding). Small batches (default 8, 4 per half) keep a CPU's caches warm at 224 px.
    """
    side = resolution or pretraining_resolution(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        runner, only = model, None
        if coarsest_only:
            from bench.speedups.fold import BatchNormFolded  # deferred: torch.fx and timm

            only = coarsest_layers(model, side)
            runner = BatchNormFolded(model, keep=only).current()
        with BatchNormRecorder(model, groups=2, only=only) as recorder, torch.no_grad():
            for batch in _batches(images, mean, std, max_images=max_images, batch_size=batch_size):
                if batch.shape[-2:] != (side, side):  # bicubic, as timm's eval transforms for these weights
                    batch = F.interpolate(batch, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
                batch = batch.to(device).contiguous(memory_format=torch.channels_last)  # as the trials run it
                for group, offset in enumerate(((seen % 2), 1 - (seen % 2))):  # image i -> half i % 2
                    part = batch[offset::2]
                    if len(part):
                        recorder.group = group
                        runner(part)
                seen += batch.shape[0]
    finally:
        model.train(was_training)
    halves = (recorder.statistics(group=0), recorder.statistics(group=1))
    return RecordedStatistics(recorder.statistics(), halves, seen, side)


def divergence_corrected(recorded: RecordedStatistics, layers: str = "coarsest") -> tuple[float, int]:
    """Jackknife (split-half) estimate of the divergence with the 1/N small-sample bias removed.

    Estimated from N images the divergence reads high by about c/N (fewer images vary less and their mean
    is noisier; c ~ 0.3 on the bundled backbones, i.e. +0.01 at 32 images). With D_N from all images and
    D_A, D_B from the two halves, 2 D_N - (D_A + D_B) / 2 cancels that term; clipped at 0. Falls back to
    D_N below 8 images, where halves are too small to estimate anything.
    """
    full, n_layers = divergence_from_statistics(recorded.layers, layers)
    if recorded.n_images < 8 or not all(recorded.halves):
        return full, n_layers
    half_a, _ = divergence_from_statistics(recorded.halves[0], layers)
    half_b, _ = divergence_from_statistics(recorded.halves[1], layers)
    return max(0.0, 2 * full - (half_a + half_b) / 2), n_layers


def bn_divergence(
    model: nn.Module,
    images: ImageSource,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resolution: int | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    layers: str = "coarsest",
    batch_size: int = 8,
    bias_correction: bool = True,
) -> float:
    """Mean Bhattacharyya distance between the model's stored BN statistics and the images' (>= 0; 0 = same).

    `images`: uint8 (0..255) or float (0..1) arrays/tensors [N, 3, H, W], normalised here with `mean`/`std`
    (the model's preprocessing), or an iterable of already-normalised float batches. Images are resized to
    `resolution` (default: the model's pretraining input size), evenly subsampled to `max_images`. Raises
    ValueError if the model has no BatchNorm statistics or no image was given.
    """
    if not has_imagenet_statistics(model):
        raise ValueError(f"{type(model).__name__} has no trained BatchNorm statistics to compare with")
    recorded = record_statistics(
        model,
        images,
        mean=mean,
        std=std,
        resolution=resolution,
        max_images=max_images,
        batch_size=batch_size,
        coarsest_only=layers == "coarsest",
    )
    if recorded.n_images == 0:
        raise ValueError("no images to measure: the image set is empty")
    return (
        divergence_corrected(recorded, layers)[0]
        if bias_correction
        else divergence_from_statistics(recorded.layers, layers)[0]
    )


@functools.lru_cache(maxsize=2)
def _reference_model(name: str) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    from bench.models.build import build_backbone  # deferred: similarity stays importable without the registry

    backbone = build_backbone(name, num_classes=1)
    return backbone.body.eval(), tuple(backbone.mean), tuple(backbone.std)


def source_similarity(
    model: nn.Module | None,
    images: ImageSource,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resolution: int | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    batch_size: int = 8,
    reference: str | None = REFERENCE_BACKBONE,
    bias_correction: bool = True,
) -> SimilarityScores:
    """How ImageNet-like `images` look, the best way the architecture allows (docs/similarity.md).

    With trained BatchNorm statistics: the model's own BN divergence. Without (ViT, LayerNorm nets, random
    init, or `model=None`): the same measure through the `reference` network (its own preprocessing is used,
    so pass uint8 or 0..1 images, not batches normalised for another model). `reference=None` turns the
    fallback off (score NaN). Never raises on the data: an empty set gives NaN with a note.
    """
    if model is not None and has_imagenet_statistics(model):
        method, probe, probe_mean, probe_std = "bn_statistics", model, mean, std
    elif reference is not None:
        if not isinstance(images, (np.ndarray, torch.Tensor, ImageRows)):
            raise ValueError(
                "the reference-network fallback needs raw images (an array or tensor), not batches "
                "normalised for another model"
            )
        probe, probe_mean, probe_std = _reference_model(reference)
        method = f"bn_reference:{reference}"
        resolution = None  # the reference's own pretraining size
    else:
        return SimilarityScores(
            float("nan"),
            float("nan"),
            "unavailable",
            0,
            0,
            0,
            "the model has no BatchNorm statistics and no reference network was allowed",
        )
    recorded = record_statistics(
        probe,
        images,
        mean=probe_mean,
        std=probe_std,
        resolution=resolution,
        max_images=max_images,
        batch_size=batch_size,
        coarsest_only=True,
    )
    seen, side = recorded.n_images, recorded.resolution
    if seen == 0:
        return SimilarityScores(float("nan"), float("nan"), method, 0, 0, side, "no images to measure")
    divergence, n_layers = (
        divergence_corrected(recorded) if bias_correction else divergence_from_statistics(recorded.layers)
    )
    note = None
    if seen < _MIN_IMAGES_NOTE:
        note = f"only {seen} images: the score is noisy (calibrated with 64 to 256 images)"
    if not math.isfinite(divergence):
        note = "the BatchNorm statistics of these images are not finite (NaN or inf activations)"
    return SimilarityScores(math.exp(-divergence), divergence, method, seen, n_layers, side, note)


def similarity_regime(score: float, threshold: float | None = None) -> str:
    """'high' if `score` >= threshold (default DEFAULT_SIMILARITY_THRESHOLD), else 'low'.

    The threshold applies to `similarity_score` (exp(-divergence), in (0, 1]). A NaN score raises ValueError:
    an unmeasured regime must not silently become 'low'.
    """
    threshold = DEFAULT_SIMILARITY_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"similarity threshold must lie in (0, 1], got {threshold}")
    if score is None or not math.isfinite(score):
        raise ValueError(f"cannot assign a similarity regime to a score of {score}")
    return "high" if score >= threshold else "low"


# ----------------------------------------------------------------------------------------- convenience


def _safe(name: str, fn: Any, notes: dict[str, str], *args: Any) -> float:
    try:
        value = float(fn(*args))
    except ValueError as error:
        notes[name] = str(error)
        return float("nan")
    if not math.isfinite(value):
        notes[name] = "not finite"
        return float("nan")
    return value


def compute_similarity(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    source_logits: np.ndarray | torch.Tensor | None = None,
    model: nn.Module | None = None,
    images: ImageSource | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    source: SimilarityScores | None = None,
    threshold: float | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> dict[str, Any]:
    """Every similarity and transferability number for one (backbone, weights, dataset, image size).

    Takes what a linear probe has computed anyway, so nothing is trained or extracted twice:
      features       [N, D] frozen pooled features of the dataset's training images (the probe's input)
      labels         [N] their labels
      source_logits  [N, Z] the ImageNet head's logits for the same images (None: LEEP, NCE, max-softmax and
                     energy are NaN, e.g. for a backbone without its ImageNet head)
      model, images  the pretrained body and its training images (uint8 NCHW), with the body's mean/std,
                     for the source-domain score (`source_similarity`); or pass a ready `source`
    Returns a flat dict: similarity_score, similarity_regime, similarity_method, bn_divergence,
    transferability (= logme), logme, leep, nce, h_score, max_softmax, energy, n_images, notes.
    Never raises on the data: one class, NaN features or a missing input give NaN for the affected scores
    and `None` regime, with the reason in `notes` (score name -> reason). A class with a single image is
    valid and scored normally.
    """
    notes: dict[str, str] = {}
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)

    if source is None and model is not None and images is not None:
        source = source_similarity(model, images, mean=mean, std=std, max_images=max_images)
    elif source is None and images is not None:
        source = source_similarity(None, images, max_images=max_images)
    if source is None:
        notes["similarity_score"] = "no model/images given for the source-domain score"
        source = SimilarityScores(float("nan"), float("nan"), "unavailable", 0, 0, 0)
    elif source.note:
        notes["similarity_score"] = source.note
    regime = None
    if math.isfinite(source.similarity_score):
        regime = similarity_regime(source.similarity_score, threshold)

    scores: dict[str, float] = {
        "logme": _safe("logme", logme, notes, features, labels),
        "h_score": _safe("h_score", h_score, notes, features, labels),
    }
    if source_logits is None:
        for name in ("leep", "nce", "max_softmax", "energy"):
            scores[name] = float("nan")
            notes[name] = "no ImageNet logits given"
    else:
        logits = (
            source_logits.detach().float().cpu().numpy()
            if isinstance(source_logits, torch.Tensor)
            else np.asarray(source_logits, dtype=np.float64)
        )
        scores["max_softmax"] = _safe("max_softmax", max_softmax_score, notes, logits)
        scores["energy"] = _safe("energy", energy_score, notes, logits)
        probs = _softmax_or_none(logits)
        if probs is None:
            scores["leep"] = scores["nce"] = float("nan")
            notes["leep"] = notes["nce"] = "ImageNet logits hold NaN or infinite values"
        else:
            scores["leep"] = _safe("leep", leep, notes, probs, labels)
            scores["nce"] = _safe("nce", nce, notes, probs.argmax(1), labels)

    return {
        "similarity_score": source.similarity_score,
        "similarity_regime": regime,
        "similarity_method": source.method,
        "bn_divergence": source.bn_divergence,
        "transferability": scores["logme"],
        **scores,
        "n_images": source.n_images,
        "notes": notes,
    }


def _softmax_or_none(logits: np.ndarray) -> np.ndarray | None:
    from scipy.special import softmax

    if logits.ndim != 2 or not np.all(np.isfinite(logits)):
        return None
    return softmax(logits.astype(np.float64), axis=1)
