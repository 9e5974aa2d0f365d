"""The suite file's schema: pydantic v2 models with unknown keys forbidden and strict types.

``epochs: "5"`` is refused, not coerced; each grid axis is checked for duplicates, which keeps every
``trial_id`` of a suite unique without expanding the grid. The contract is docs/design.md, "Suite file".
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bench.config import TRACKERS, TrialConfig
from bench.errors import UserError
from bench.models.strategies import strategy_names
from bench.suite.reading import expand_dataset_name, expand_optional, expand_vars, shorten
from bench.suite.search import SearchSpec, strategy_keys
from bench.suite.strict import Strict as _Strict

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrialConfig)}


# ---------------------------------------------------------------------------------------------------------
# The typed spec


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _no_duplicates(values: list[Any] | None, keys: list[Any] | None = None) -> list[Any] | None:
    """Refuse a repeated value (compared by `keys` where given): it would repeat every trial it is in."""
    if values is not None:
        keys = values if keys is None else keys
        for index, key in enumerate(keys):
            if key in keys[:index]:
                raise PydanticCustomError(
                    "duplicate", "duplicate", {"index": index, "first": keys.index(key), "value": values[index]}
                )
    return values


def _freeze_value(value: Any) -> str | float:
    names = strategy_names()
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0:
        return float(value)
    hint = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
    extra = f" (did you mean {hint[0]}?)" if hint else ""
    raise ValueError(f"expected a strategy ({', '.join(names)}) or a number in [0, 1], got {shorten(value)}{extra}")


def _batch_size_value(value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(
        f"expected a positive integer or auto (the largest batch that fits the card), got {shorten(value)}"
    )


def _freeze_key(value: str | float) -> tuple[str, float]:
    """What a freeze value does: `linear_probe` and 1.0 are the same trial, so a grid may not list both."""
    trial = TrialConfig(backbone="", dataset="", freeze=value)
    return trial.strategy, trial.freeze_fraction


def _unique_freeze(values: list[str | float]) -> list[str | float]:
    return _no_duplicates(values, [_freeze_key(value) for value in values])


def _unique_values(values: list[Any]) -> list[Any]:
    return _no_duplicates(values)


def _list_of(item: Any) -> Any:
    """A non-empty grid list without repeats."""
    return Annotated[list[item], Field(min_length=1), AfterValidator(_unique_values)]


class BackboneSpec(_Strict):
    """One backbone axis entry; a bare string in YAML is `{name: <string>}`."""

    name: str
    pretrained: bool = True
    weights: str | None = None  # explicit weights file; ${VAR} expanded

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict):
            raise ValueError(
                f"expected a backbone name or a mapping {{name, pretrained, weights}}, got {shorten(data)}"
            )
        return data

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from bench.models.registry import check_backbone_name

        try:
            check_backbone_name(name)
        except UserError as error:
            raise ValueError(str(error)) from None
        return name

    @field_validator("weights")
    @classmethod
    def _expand_weights(cls, weights: str | None) -> str | None:
        return expand_optional(weights)

    @model_validator(mode="after")
    def _weights_need_pretrained(self) -> BackboneSpec:
        if self.weights is not None and not self.pretrained:
            raise ValueError(
                "expected no weights with pretrained: false (the from-scratch baseline loads "
                f"nothing), got weights {self.weights!r}"
            )
        return self


class DatasetSpec(_Strict):
    """One dataset axis entry; a bare string in YAML is `{name: <string>}`.

    The option keys (`display_name`, `group`, and for ``hf:`` sets `image_column`, `label_column`,
    `train_split`, `test_split`, `config`, `revision`) are folded into `name` as ``?key=value`` options
    (``bench.data.names``), so the name alone identifies the data and reaches every worker; after validation
    they read None. Options that change no data (`display_name`, `group`) are still part of the name; the trial
    id leaves `display_name` out (``TrialConfig.identity``).
    """

    name: str
    root: str | None = None  # where torchvision datasets live, an hf: Hub cache, or the base of relative paths
    download: bool = False
    display_name: str | None = None  # the short name tables, figures and trackers show
    group: str | None = None  # natural | specialized | structured (imagefolder: and hf:)
    image_column: str | None = None  # hf: options, see bench.data.hf
    label_column: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    config: str | None = None
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict):
            raise ValueError(f"expected a dataset name or a mapping {{name, root, download, ...}}, got {shorten(data)}")
        return _fold_dataset_options(data)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from bench.data import HF_PREFIX, check_dataset_name

        name = expand_dataset_name(name)
        if name.startswith(HF_PREFIX):
            name = HF_PREFIX + expand_vars(name[len(HF_PREFIX) :])
        try:
            check_dataset_name(name)
        except UserError as error:
            raise ValueError(str(error)) from None
        return name

    @field_validator("root")
    @classmethod
    def _expand_root(cls, root: str | None) -> str | None:
        return expand_optional(root)

    @model_validator(mode="after")
    def _source_holds_classes(self) -> DatasetSpec:
        """Where the data is on this machine and the check is cheap (bench.data.check_dataset_source)."""
        from bench.data import check_dataset_source

        try:
            check_dataset_source(self.name, self.root)
        except UserError as error:
            raise ValueError(str(error)) from None
        return self


_DATASET_OPTION_KEYS = (
    "group",
    "display_name",
    "config",
    "revision",
    "image_column",
    "label_column",
    "train_split",
    "test_split",
)


def _fold_dataset_options(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its option keys moved into `name` as ``?key=value`` options (bench.data.names)."""
    from bench.data.names import DatasetNameError, with_options

    options = {key: data[key] for key in _DATASET_OPTION_KEYS if data.get(key) is not None}
    name = data.get("name")
    if not options or not isinstance(name, str):
        return data  # nothing to fold, or the name's own check reports it
    for key, value in options.items():
        if not isinstance(value, str):
            raise ValueError(f"expected {key} to be a string, got {shorten(value)}")
    try:
        folded = with_options(name, options)
    except DatasetNameError as error:
        raise ValueError(f"dataset '{name}': {error}") from None
    return {**{k: v for k, v in data.items() if k not in options}, "name": folded}


class GridSpec(_Strict):
    """The swept axes. `data_fraction` and `shots` values each give their own trials."""

    freeze: Annotated[
        list[Annotated[Any, AfterValidator(_freeze_value)]], Field(min_length=1), AfterValidator(_unique_freeze)
    ]
    data_fraction: _list_of(Annotated[float, Field(gt=0, le=1)]) | None = None
    shots: _list_of(Annotated[int, Field(ge=1)]) | None = None
    seed: _list_of(Annotated[int, Field(ge=0, lt=2**32)]) = [0]
    # seeds drawing the training subset, crossed with `seed`; None: each trial's subset follows its seed
    data_seed: _list_of(Annotated[int, Field(ge=0, lt=2**32)]) | None = None
    lr: _list_of(PositiveFloat) | None = None  # overrides train.lr
    weight_decay: _list_of(NonNegativeFloat) | None = None  # overrides train.weight_decay

    @model_validator(mode="after")
    def _some_data_size(self) -> GridSpec:
        if self.data_fraction is None and self.shots is None:
            raise ValueError("expected data_fraction: [...] and/or shots: [...], got neither")
        return self

    def data_sizes(self) -> list[tuple[float | None, int | None]]:
        """(data_fraction, shots) per data-size trial: the fractions first, then the shots."""
        return [(f, None) for f in self.data_fraction or []] + [(None, s) for s in self.shots or []]


def _lr_keys() -> list[str]:
    return [*strategy_keys(), "default"]


class LrByStrategy(_Strict):
    """Learning rate per strategy (any registered strategy's name, ``partial`` for 0 < freeze < 1, ``default``);
    a bare number in YAML is `{default: <number>}`."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    default: PositiveFloat | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            if not (math.isfinite(data) and data > 0):
                raise ValueError(f"expected a number > 0 or a mapping per strategy, got {shorten(data)}")
            return {"default": data}
        if not isinstance(data, dict):
            raise ValueError(
                f"expected a number > 0 or a mapping with keys among {', '.join(_lr_keys())}, got {shorten(data)}"
            )
        allowed = _lr_keys()
        for key, value in data.items():
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key",
                    {
                        "key": key if isinstance(key, str) and len(key) <= 40 else shorten(key, 40),
                        "allowed": ", ".join(allowed),
                        "hint": hint[0] if hint else "",
                    },
                )
            if key != "default" and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"{key}: expected a number > 0, got {shorten(value)}")
        return data

    def given(self, key: str) -> float | None:
        """The rate written for ``key`` (a strategy or ``partial``), None where the suite gives none."""
        value = (self.model_extra or {}).get(key)
        return None if value is None else float(value)

    def for_strategy(self, strategy: str) -> float | None:
        value = self.given(strategy)
        return self.default if value is None else value


def _on_off(value: Any) -> Any:
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class EarlyStopSpec(_Strict):
    """`train.early_stop`: a phase ends after `patience` evaluations without a validation top-1 gain of more
    than `min_delta` points over its best (bench.training.convergence.Plateau)."""

    patience: Annotated[int, Field(ge=1)]
    min_delta: NonNegativeFloat = _DEFAULTS["early_stop_min_delta"]


class ProbeSpec(_Strict):
    """`train.probe`: how the `linear_probe` strategy trains its head (bench.training.convex_probe)."""

    solver: Literal["lbfgs", "sgd"] = _DEFAULTS["probe_solver"]  # solved to convergence, or stepped
    refit: bool = _DEFAULTS["probe_refit"]  # lbfgs: refit on training + validation rows at the chosen C
    c_grid: Annotated[list[PositiveFloat], Field(min_length=2)] | None = None  # lbfgs: the C values (default 17)


class TrainSpec(_Strict):
    """Fixed training hyper-parameters; defaults are TrialConfig's."""

    img_size: Annotated[int, Field(ge=16, le=1024)] = _DEFAULTS["img_size"]
    epochs: Annotated[int, Field(ge=1)] | None = None
    steps: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[Any, AfterValidator(_batch_size_value)] = _DEFAULTS["batch_size"]
    optimizer: Literal["adamw", "sgd"] = _DEFAULTS["optimizer"]
    lr: LrByStrategy = LrByStrategy(default=_DEFAULTS["lr"])
    weight_decay: NonNegativeFloat = _DEFAULTS["weight_decay"]
    momentum: Annotated[float, Field(ge=0, lt=1)] = _DEFAULTS["momentum"]
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = _DEFAULTS["warmup_fraction"]
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = _DEFAULTS["label_smoothing"]
    augment: Literal["none", "flip", "crop_flip"] = _DEFAULTS["augment"]
    val_fraction: Annotated[float, Field(gt=0, le=0.5)] = _DEFAULTS["val_fraction"]
    eval_every: Annotated[int, Field(ge=1)] = _DEFAULTS["eval_every"]
    eval_every_steps: Annotated[int, Field(ge=1)] | None = None  # validate every k steps instead of epochs
    early_stop: EarlyStopSpec | None = None  # end a phase on a validation plateau
    keep_best: bool = _DEFAULTS["keep_best"]  # test the best validation evaluation's weights, not the last
    probe: ProbeSpec = ProbeSpec()  # the linear probe: solved (lbfgs, default) or stepped (sgd)
    padded_depthwise_grad: bool = _DEFAULTS[
        "padded_depthwise_grad"
    ]  # false: PyTorch's own backward (bench.speedups.depthwise)
    shard_format: Literal["raw", "jpeg"] = _DEFAULTS["shard_format"]  # prepared images on disk (bench.data.shards)
    # torch.compile the forward passes; YAML 1.1 reads a bare on/off as true/false
    compile: Annotated[Literal["off", "on", "auto"], BeforeValidator(_on_off)] = _DEFAULTS["compile"]

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainSpec:
        if (self.epochs is None) == (self.steps is None):
            got = "both" if self.epochs is not None else "neither"
            raise ValueError(f"expected exactly one of epochs or steps, got {got}")
        return self

    @field_serializer("lr")
    def _lr_as_written(self, lr: LrByStrategy) -> float | dict[str, float]:
        given = lr.model_dump(exclude_none=True)
        return given["default"] if list(given) == ["default"] else given


class ResourcesSpec(_Strict):
    cpu: PositiveFloat = 1.0
    gpu: NonNegativeFloat = 0.0  # a fraction packs several trials on one GPU

    @field_validator("gpu")
    @classmethod
    def _ray_gpu(cls, gpu: float) -> float:
        if gpu > 1 and not gpu.is_integer():
            raise ValueError(f"expected a fraction of one GPU or a whole number of GPUs, got {gpu}")
        return gpu


class TuneSpec(_Strict):
    """How Ray Tune schedules the trials."""

    resources_per_trial: ResourcesSpec = ResourcesSpec()
    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None
    max_failures: Annotated[int, Field(ge=0)] = 1
    trial_timeout_s: PositiveFloat | None = None


class DataRegimesSpec(_Strict):
    """Images per class where `limited` and `sufficient` start (below `limited`: scarce)."""

    limited: Annotated[int, Field(ge=1)] = 10
    sufficient: Annotated[int, Field(ge=1)] = 100

    @model_validator(mode="after")
    def _ordered(self) -> DataRegimesSpec:
        if self.limited >= self.sufficient:
            raise ValueError(
                f"expected limited < sufficient, got limited {self.limited} and sufficient {self.sufficient}"
            )
        return self


class AnalysisSpec(_Strict):
    similarity: bool = True  # measure similarity and transferability once per (backbone, dataset, size)
    similarity_threshold: Annotated[float, Field(gt=0, le=1)] | None = None  # None: bench.similarity.scores's default
    data_regimes: DataRegimesSpec = DataRegimesSpec()


class MLflowSpec(_Strict):
    """Ray Tune's MLflow callback: ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI`` (MLflow's own default
    without it), ``experiment_name`` to the suite's name."""

    tracking_uri: str | None = None
    experiment_name: str | None = None


class WandbSpec(_Strict):
    """Ray Tune's W&B callback: ``project`` defaults to the suite's name, ``mode`` to ``WANDB_MODE`` (W&B's
    own default without it); ``dir`` holds the local run folders (default: the run folder)."""

    project: str | None = None
    group: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    dir: str | None = None


class TensorBoardSpec(_Strict):
    """Ray Tune's TensorBoard callback: one event folder per trial under ``log_dir`` (default: the run
    folder's ``tensorboard/``)."""

    log_dir: str | None = None


class TrackingSpec(_Strict):
    """Experiment trackers that mirror the trials (the Parquet tables stay the record). Not part of a run's
    identity: ``--resume`` may add or drop trackers."""

    mlflow: MLflowSpec | None = None
    wandb: WandbSpec | None = None
    tensorboard: TensorBoardSpec | None = None

    def names(self) -> list[str]:
        return [name for name in TRACKERS if getattr(self, name) is not None]


def _unique_display_names(datasets: list[DatasetSpec]) -> list[DatasetSpec]:
    """Two datasets shown under one name would merge in every table: refuse, naming both entries."""
    from bench.data import display_name

    seen: dict[str, int] = {}
    for index, dataset in enumerate(datasets):
        shown = display_name(dataset.name)
        if shown in seen:
            raise ValueError(
                f"datasets[{seen[shown]}] and datasets[{index}] are both displayed as '{shown}'; "
                "give one a display_name"
            )
        seen[shown] = index
    return datasets


class SuiteSpec(_Strict):
    """A whole suite file, without its `smoke` block (that is merged in before this is validated)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
    description: str = ""
    backbones: Annotated[list[BackboneSpec], Field(min_length=1)]
    datasets: Annotated[list[DatasetSpec], Field(min_length=1)]
    grid: GridSpec
    train: TrainSpec
    tune: TuneSpec = TuneSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    search: SearchSpec | None = None
    tracking: TrackingSpec = TrackingSpec()
    plugins: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*$")]] = []  # modules imported before validation

    @field_validator("backbones")
    @classmethod
    def _unique_backbones(cls, backbones: list[BackboneSpec]) -> list[BackboneSpec]:
        return _no_duplicates(backbones, [(b.name, b.pretrained, b.weights) for b in backbones])

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, datasets: list[DatasetSpec]) -> list[DatasetSpec]:
        _no_duplicates(datasets, [(d.name, d.root) for d in datasets])  # `download` changes no data
        return _unique_display_names(datasets)

    @model_validator(mode="after")
    def _every_strategy_has_lr(self) -> SuiteSpec:
        if self.grid.lr is None:
            for value in self.grid.freeze:
                strategy = _freeze_key(value)[0]
                if self.train.lr.for_strategy(strategy) is None:
                    raise PydanticCustomError("lr_missing", "lr missing", {"strategy": strategy, "freeze": value})
        return self

    @model_validator(mode="after")
    def _backbones_take_img_size(self) -> SuiteSpec:
        """Each backbone can be built for `train.img_size` (a ViT's patch size divides it, ...): one line naming
        the backbone and the size otherwise (``bench.models.registry.check_backbone_size``)."""
        from bench.models.registry import check_backbone_size

        for backbone in self.backbones:
            try:
                check_backbone_size(backbone.name, self.train.img_size)
            except UserError as error:  # the key-path-and-message kind messages.py renders as one line
                detail = {"key": "train.img_size", "message": str(error)}
                raise PydanticCustomError("search_value", "img_size", detail) from None
        return self

    @model_validator(mode="after")
    def _search_fits_train(self) -> SuiteSpec:
        """Each searched value (list items, choices, range bounds) must be a valid `train:` value, and a
        hyperparameter is either swept by `grid:` or searched, not both."""
        if self.search is None:
            return self
        for name in ("lr", "weight_decay"):
            if getattr(self.grid, name) is not None and any(name in self.search.space_for(k) for k in strategy_keys()):
                raise PydanticCustomError(
                    "search_value",
                    "search value",
                    {"key": "search", "message": f"{name} is both swept by grid.{name} and searched: keep one"},
                )
        for where, space in [("space", self.search.space)] + [
            (f"by_strategy.{k}", v) for k, v in self.search.by_strategy.items()
        ]:
            for name, dimension in space.items():
                values = dimension if isinstance(dimension, list) else next(iter(dimension.values()))
                for value in values:
                    problem = self.train_refuses(name, value)
                    if problem is not None:
                        message = f"expected a valid train.{name} value, got {shorten(value)}: {problem}"
                        key = f"search.{where}.{name}"
                        raise PydanticCustomError("search_value", "search value", {"key": key, "message": message})
        return self

    @model_validator(mode="after")
    def _solved_probe_is_not_searched(self) -> SuiteSpec:
        """A solved linear probe (`train.probe.solver: lbfgs`) chooses its strength on validation itself and uses
        no learning rate, optimiser or schedule: a search that varies any of them for `linear_probe` would run
        the same probe several times and call its ties a selection. One value per dimension, or the stepped
        probe."""
        probes = any(_freeze_key(value)[0] == "linear_probe" for value in self.grid.freeze)
        if self.search is None or not probes or self.train.probe.solver != "lbfgs":
            return self
        for name, dimension in self.search.space_for("linear_probe").items():
            if not (isinstance(dimension, list) and len(dimension) == 1):
                message = (
                    f"linear_probe's probe is solved (train.probe.solver: lbfgs) and has no {name} to search: "
                    f"give it one value (search.by_strategy.linear_probe.{name}: [x]) or use train.probe.solver: sgd"
                )
                raise PydanticCustomError("search_value", "search value", {"key": "search", "message": message})
        return self

    def train_refuses(self, name: str, value: Any) -> str | None:
        """Why ``train:`` would refuse ``value`` for the searched hyperparameter ``name`` (``probe_lr`` as an
        lr), in one line; None when it takes it."""
        base = self.train.model_dump(exclude_none=True)
        try:
            TrainSpec.model_validate({**base, "lr" if name == "probe_lr" else name: value})
        except ValidationError as error:
            return str(error.errors()[0]["msg"]).removeprefix("Value error, ")
        return None
