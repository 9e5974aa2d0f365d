"""Work a trial need not repeat, each exact: frozen features and frozen-prefix outputs computed once per
dataset, BatchNorm folded for evaluation, and the padded depthwise weight gradient on a CPU."""

from bench.speedups.depthwise import padded_weight_grad
from bench.speedups.features import FrozenRows, compute_features, frozen_rows, split_rows
from bench.speedups.fold import BatchNormFolded
from bench.speedups.prefix import FrozenPrefix, cached_prefix_outputs, split_frozen_prefix

__all__ = [
    "BatchNormFolded",
    "FrozenPrefix",
    "FrozenRows",
    "cached_prefix_outputs",
    "compute_features",
    "frozen_rows",
    "padded_weight_grad",
    "split_frozen_prefix",
    "split_rows",
]
