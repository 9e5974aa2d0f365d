"""One trial, fully resolved: the value that crosses every layer.

`bench.suite.spec` expands a suite file into `TrialConfig`s, `bench.runner.tune` ships them to workers, and
`bench.training.trial.run_trial` runs one. Everything that can change a trial's numbers is a field here, so
`trial_id` (a hash of those fields) recognises the same trial in a rerun, a resume or another suite.

Each field declares its role in its metadata, and a field without one is refused (`field_roles`):

- ``IDENTITY``: what the trial computes; part of `trial_id`.
- ``IDENTITY_WHEN_SET``: added after trial ids were first published; part of `trial_id` only when it differs
  from its default, so the trials of earlier runs keep their ids (and resume) unless they use the field.
- ``PLACEMENT``: where or how the trial runs, not what it computes; left out of `trial_id`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

TRACKERS = ("mlflow", "wandb", "tensorboard")  # experiment trackers a run can mirror its trials to

OPTIMIZERS = ("adamw", "sgd")
PROBE_SOLVERS = ("lbfgs", "sgd")  # train.probe.solver
AUGMENTS = ("none", "flip", "crop_flip")
COMPILE_SETTINGS = ("off", "on", "auto")  # train.compile (bench.training.compiled)

IDENTITY = {"role": "identity"}
IDENTITY_WHEN_SET = {"role": "identity_when_set"}
PLACEMENT = {"role": "placement"}
ROLES = ("identity", "identity_when_set", "placement")

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
    """Every knob of one trial. Defaults are the smoke suite's (suites/smoke.yaml). Raises TypeError when built
    from a subclass that adds a field without a role (see `field_roles`)."""

    # --- what the trial computes (identity) ---
    backbone: str = field(metadata=IDENTITY)
    dataset: str = field(metadata=IDENTITY)  # by its identity name (bench.data.names): a display name is not data
    freeze: float | str = field(default="linear_probe", metadata=IDENTITY)  # 0..1, or a strategy (models.strategies)
    pretrained: bool = field(default=True, metadata=IDENTITY)
    weights: str | None = field(default=None, metadata=IDENTITY)  # weights file (timm `file:`), else the default
    dataset_root: str | None = field(default=None, metadata=IDENTITY)
    download: bool = field(default=False, metadata=PLACEMENT)  # fetch a missing dataset: the same data either way
    data_fraction: float | None = field(default=1.0, metadata=IDENTITY)  # fraction of each class's training pool ...
    shots: int | None = field(default=None, metadata=IDENTITY)  # ... or a number per class (data_fraction None)
    seed: int = field(default=0, metadata=IDENTITY)
    img_size: int = field(default=64, metadata=IDENTITY)
    epochs: int | None = field(default=5, metadata=IDENTITY)  # train for epochs ...
    steps: int | None = field(default=None, metadata=IDENTITY)  # ... or for a fixed number of optimiser steps
    # "auto": the largest that fits the card (bench.training.batch_size)
    batch_size: int | Literal["auto"] = field(default=64, metadata=IDENTITY)
    optimizer: str = field(default="adamw", metadata=IDENTITY)
    lr: float = field(default=1e-3, metadata=IDENTITY)
    probe_lr: float | None = field(default=None, metadata=IDENTITY)  # lp_ft: the probe phase's lr (default: lr)
    weight_decay: float = field(default=1e-4, metadata=IDENTITY)
    momentum: float = field(default=0.9, metadata=IDENTITY)  # SGD only
    # share of the steps spent in linear warm-up before the cosine decay
    warmup_fraction: float = field(default=0.1, metadata=IDENTITY)
    label_smoothing: float = field(default=0.0, metadata=IDENTITY)
    augment: str = field(default="none", metadata=IDENTITY)
    # share of each class's training split held out for model selection
    val_fraction: float = field(default=0.1, metadata=IDENTITY)
    eval_every: int = field(default=1, metadata=IDENTITY)  # epochs between validation evaluations (epochs rows) ...

    # --- what the trial computes, added later: identity only when set ---
    # ... or optimiser steps between them (and after the last step)
    eval_every_steps: int | None = field(default=None, metadata=IDENTITY_WHEN_SET)
    # prepared images as stored: "raw" uint8, or "jpeg" (lossy: bench.data.shards)
    shard_format: str = field(default="raw", metadata=IDENTITY_WHEN_SET)
    # the seed that draws the training subset (bench.data.splits); None = `seed`, which seeds everything else
    data_seed: int | None = field(default=None, metadata=IDENTITY_WHEN_SET)
    # a phase ends after this many evaluations without a validation top-1 gain of more than ...
    early_stop_patience: int | None = field(default=None, metadata=IDENTITY_WHEN_SET)
    early_stop_min_delta: float = field(default=0.0, metadata=IDENTITY_WHEN_SET)  # ... this many points
    # test the weights of the best validation evaluation (bench.training.convergence), not the last ones
    keep_best: bool = field(default=False, metadata=IDENTITY_WHEN_SET)
    # a linear probe solved ("lbfgs": multinomial logistic regression to convergence, bench.training.convex_probe)
    # or stepped ("sgd": the optimiser for `steps`/`epochs`, as LP-FT's first phase). A solved probe's id names its
    # solver (see `identity`); a stepped one's is the id stepped probes always had.
    probe_solver: str = field(default="lbfgs", metadata=IDENTITY_WHEN_SET)
    probe_refit: bool = field(default=True, metadata=IDENTITY_WHEN_SET)  # refit on train + val at the chosen C
    probe_c_grid: tuple[float, ...] | None = field(default=None, metadata=IDENTITY_WHEN_SET)  # None: DEFAULT_GRID

    # --- where and how the trial runs (placement): not part of trial_id ---
    suite: str = field(default="", metadata=PLACEMENT)
    # prepared datasets and frozen features; None = no disk cache
    cache_dir: str | None = field(default=None, metadata=PLACEMENT)
    device: str = field(default="auto", metadata=PLACEMENT)  # "auto" = cuda when available, else cpu
    # train on cached frozen features where that is exact (see bench.speedups.features)
    feature_cache: bool = field(default=True, metadata=PLACEMENT)
    # CPU: evaluate with BatchNorm folded into the conv before it (bench.speedups.fold)
    fold_batchnorm: bool = field(default=True, metadata=PLACEMENT)
    # CPU: the slow depthwise weight gradients from padded input (bench.speedups.depthwise)
    padded_depthwise_grad: bool = field(default=True, metadata=PLACEMENT)
    # measure similarity / transferability (bench.similarity.scores) into the row
    similarity: bool = field(default=True, metadata=PLACEMENT)
    # regime cut on similarity_score; None = bench.similarity.scores's default
    similarity_threshold: float | None = field(default=None, metadata=PLACEMENT)
    # the share of one card this trial may use (tune.resources_per_trial.gpu when < 1)
    gpu_share: float = field(default=1.0, metadata=PLACEMENT)
    # "off" | "on" | "auto": forward passes through torch.compile (bench.training.compiled)
    compile: str = field(default="auto", metadata=PLACEMENT)
    # modules imported before the trial runs (the suite's `plugins:`)
    plugins: tuple[str, ...] = field(default=(), metadata=PLACEMENT)
    # this trial's share of its node's memory (set by the runner)
    memory_share_mb: float | None = field(default=None, metadata=PLACEMENT)

    def __post_init__(self) -> None:
        field_roles(type(self))  # a subclass's field without a role is refused before any id is computed

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
    def subset_seed(self) -> int:
        """The seed that draws the training subset: ``data_seed``, or ``seed`` when it is unset."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def fixed_batch_size(self) -> int | None:
        """The suite's batch size, or None for ``auto`` (chosen per trial; the row's ``batch_size_used``)."""
        return None if self.batch_size == "auto" else int(self.batch_size)

    def identity(self) -> dict[str, Any]:
        """The input of `trial_id`: field name -> value for the ``IDENTITY`` fields, and for the
        ``IDENTITY_WHEN_SET`` fields that differ from their defaults; ``dataset`` by its identity name; a
        ``data_seed`` equal to ``seed`` left out (it draws the subset an unset one draws); ``probe_solver`` in the
        identity of a solved linear probe (lbfgs) only, so a stepped probe keeps the id it had before probes were
        solved, and the probe's settings in no other strategy's."""
        from bench.data.names import identity_name

        fields: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            role, value = spec.metadata["role"], getattr(self, spec.name)
            if role == "identity" or (role == "identity_when_set" and value != spec.default):
                fields[spec.name] = value
        if fields.get("data_seed") == self.seed:
            del fields["data_seed"]
        if self.strategy == "linear_probe" and self.probe_solver == "lbfgs":
            fields["probe_solver"] = self.probe_solver  # solved: not the computation a stepped probe's id names
        else:  # stepped probes keep the ids they always had; no other strategy solves a probe
            for name in ("probe_solver", "probe_refit", "probe_c_grid"):
                fields.pop(name, None)
        fields["dataset"] = identity_name(self.dataset)  # a display name changes no data
        return fields

    @property
    def trial_id(self) -> str:
        """16 hex digits of the SHA-256 of `identity()`: the same for the same computation, wherever it runs."""
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
        """Every field by name (``plugins`` as a tuple): what `from_dict` takes back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """The config of ``values`` (as `to_dict` gives them; ``plugins`` and ``probe_c_grid`` may be lists, as JSON
        gives them back).
        Raises TypeError for an unknown or a missing required field."""
        grid = values.get("probe_c_grid")
        return cls(
            **{
                **values,
                "plugins": tuple(values.get("plugins") or ()),
                **({"probe_c_grid": tuple(grid)} if grid is not None else {}),
            }
        )


@functools.cache
def field_roles(cls: type) -> dict[str, str]:
    """Field name -> role (``identity``, ``identity_when_set`` or ``placement``) of the dataclass ``cls``.

    Raises TypeError when a field declares no role or an unknown one, so that no new field silently joins (or
    leaves) the identity, and when a searchable hyperparameter (``SEARCHABLE``) is not an ``identity`` field."""
    roles = {spec.name: spec.metadata.get("role") for spec in dataclasses.fields(cls)}
    undeclared = sorted(name for name, role in roles.items() if role not in ROLES)
    if undeclared:
        raise TypeError(
            f"{cls.__name__}: fields {undeclared} declare no role: give each `field(metadata=IDENTITY)`, "
            "`IDENTITY_WHEN_SET` (for a field added after ids were published) or `PLACEMENT` (bench.config)"
        )
    not_identity = sorted(name for name in SEARCHABLE if roles.get(name) != "identity")
    if not_identity:
        raise TypeError(f"{cls.__name__}: searchable fields {not_identity} are not identity fields")
    return roles


def _digest(fields: dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


field_roles(TrialConfig)  # at import: every field of the config has a role
