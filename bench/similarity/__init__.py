"""Similarity of a dataset to ImageNet and transferability of frozen features (docs/similarity.md)."""

from bench.similarity.batchnorm import BatchNormRecorder, LayerStatistics
from bench.similarity.scores import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_SIMILARITY_THRESHOLD,
    REFERENCE_BACKBONE,
    SIMILARITY_VERSION,
    RecordedStatistics,
    SimilarityScores,
    bhattacharyya_distance,
    bn_divergence,
    compute_similarity,
    divergence_corrected,
    divergence_from_statistics,
    energy_score,
    has_imagenet_statistics,
    max_softmax_score,
    pretraining_resolution,
    record_statistics,
    similarity_regime,
    source_similarity,
)
from bench.similarity.transferability import h_score, leep, logme, nce

__all__ = [
    "DEFAULT_MAX_IMAGES", "DEFAULT_SIMILARITY_THRESHOLD", "REFERENCE_BACKBONE", "SIMILARITY_VERSION",
    "BatchNormRecorder", "LayerStatistics", "RecordedStatistics", "SimilarityScores", "bhattacharyya_distance",
    "bn_divergence", "compute_similarity", "divergence_corrected", "divergence_from_statistics", "energy_score",
    "h_score", "has_imagenet_statistics", "leep", "logme", "max_softmax_score", "nce", "pretraining_resolution",
    "record_statistics", "similarity_regime", "source_similarity",
]
