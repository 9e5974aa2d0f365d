"""One trial, fully resolved: the value that crosses every layer.

`bench.suite.spec` expands a suite file into `TrialConfig`s, `bench.runner.tune` ships them to workers, and
`bench.training.trial.run_trial` runs one. Everything that can change a trial's numbers is a field here, so
`trial_id` (a hash of those fields) recognises the same trial in a rerun, a resume or another suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

TRACKERS = ("mlflow", "wandb", "tensorboard")  # experiment trackers a run can mirror its trials to

OPTIMIZERS = ("adamw", "sgd")
AUGMENTS = ("none", "flip", "crop_flip")
COMPILE_SETTINGS = ("off", "on", "auto")  # train.compile (bench.training.compiled)

# Fields that say where or how a trial runs but not what it computes: left out of trial_id.
_PLACEMENT_FIELDS = (
    "suite",
    "cache_dir",
    "device",
    "feature_cache",
    "fold_batchnorm",
    "padded_depthwise_grad",
    "download",
    "similarity",
    "similarity_threshold",
    "gpu_share",
    "compile",
    "plugins",
    "memory_share_mb",
)
# Fields added after trial ids were first published: part of the identity only when set, so the trials of
# earlier runs keep their ids (and resume) unless they use the field.
_OPTIONAL_IDENTITY: dict[str, Any] = {"eval_every_steps": None, "shard_format": "raw"}


# Training hyperparameters a suite's `search:` block may search: everything else identifies the trial's cell.
SEARCHABLE = (
    "lr",
    "probe_lr",
    "weight_decay",
    "momentum",
    "warmup_fraction",
    "label_smoothing",
    "optimizer",
    "augment",
    "batch_size",
)


@dataclass(frozen=True)
class TrialConfig:
    """Every knob of one trial. Defaults are the smoke suite's (suites/smoke.yaml)."""

    backbone: str
    dataset: str
    freeze: float | str = "linear_probe"  # 0..1, or a strategy's name (bench.models.strategies)
    pretrained: bool = True
    weights: str | None = None  # explicit weights file (timm `file:`), else the registry default
    dataset_root: str | None = None
    download: bool = False
    data_fraction: float | None = 1.0  # fraction of each class's training pool ...
    shots: int | None = None  # ... or a fixed number per class (then data_fraction is None)
    seed: int = 0
    img_size: int = 64
    epochs: int | None = 5  # train for epochs ...
    steps: int | None = None  # ... or for a fixed number of optimiser steps
    batch_size: int | Literal["auto"] = 64  # "auto": the largest that fits the card (bench.training.batch_size)
    optimizer: str = "adamw"
    lr: float = 1e-3
    probe_lr: float | None = None  # lp_ft: learning rate of the linear-probe phase (default: lr)
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    warmup_fraction: float = 0.1  # share of the steps spent in linear warm-up before the cosine decay
    label_smoothing: float = 0.0
    augment: str = "none"
    val_fraction: float = 0.1  # share of each class's training split held out for model selection
    eval_every: int = 1  # epochs between validation evaluations (epochs.parquet rows) ...
    eval_every_steps: int | None = None  # ... or optimiser steps between them (and after the last step)
    shard_format: str = "raw"  # prepared images as stored: "raw" uint8, or "jpeg" (lossy: bench.data.shards)
    suite: str = ""
    cache_dir: str | None = None  # prepared datasets and frozen features; None = no disk cache
    device: str = "auto"  # "auto" = cuda when available, else cpu
    feature_cache: bool = True  # train on cached frozen features where that is exact (see bench.speedups.features)
    fold_batchnorm: bool = True  # CPU: evaluate with BatchNorm folded into the conv before it (bench.speedups.fold)
    padded_depthwise_grad: bool = (
        True  # CPU: the slow depthwise weight gradients from padded input (bench.speedups.depthwise)
    )
    similarity: bool = True  # measure similarity / transferability (bench.similarity.scores) into the row
    similarity_threshold: float | None = (
        None  # regime cut on similarity_score; None = bench.similarity.scores's default
    )
    gpu_share: float = 1.0  # the share of one card this trial may use (tune.resources_per_trial.gpu when < 1)
    compile: str = "auto"  # "off" | "on" | "auto": forward passes through torch.compile (bench.training.compiled)
    plugins: tuple[str, ...] = ()  # modules imported before the trial runs (the suite's `plugins:`)
    memory_share_mb: float | None = None  # this trial's share of its node's memory (set by the runner)

    @property
    def strategy(self) -> str:
        """The strategy's name (`linear_probe`, `full`, `lp_ft`, `bitfit`, ...), or `partial` for a fractional
        freeze."""
        if isinstance(self.freeze, str):
            return self.freeze
        if self.freeze >= 1.0:
            return "linear_probe"
        if self.freeze <= 0.0:
            return "full"
        return "partial"

    @property
    def freeze_fraction(self) -> float | None:
        """The freeze depth as a number (`lp_ft` ends fully fine-tuned, so it counts as 0); None for a
        strategy that is not a depth (`bitfit`, `norm`, `lora`)."""
        if isinstance(self.freeze, str):
            from bench.models.strategies import strategy_depth

            return strategy_depth(self.freeze)
        return float(self.freeze)

    @property
    def fixed_batch_size(self) -> int | None:
        """The suite's batch size, or None for ``auto`` (chosen per trial; the row's ``batch_size_used``)."""
        return None if self.batch_size == "auto" else int(self.batch_size)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the trial's result (the input of `trial_id`)."""
        from bench.data.names import identity_name

        fields = dataclasses.asdict(self)
        fields["dataset"] = identity_name(self.dataset)  # a display name changes no data
        for name in _PLACEMENT_FIELDS:
            fields.pop(name)
        for name, default in _OPTIONAL_IDENTITY.items():
            if fields[name] == default:
                fields.pop(name)
        return fields

    @property
    def trial_id(self) -> str:
        return _digest(self.identity())

    @property
    def cell_id(self) -> str:
        """The trial's cell: everything but the searchable hyperparameters (backbone, weights, strategy,
        dataset, data size, seed, schedule). Samples of a hyperparameter search are compared within a cell."""
        identity = self.identity()
        for name in SEARCHABLE:
            identity.pop(name)
        return _digest(identity)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        return cls(**{**values, "plugins": tuple(values.get("plugins") or ())})


def _digest(fields: dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
