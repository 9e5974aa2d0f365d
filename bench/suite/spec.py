"""Suite file (YAML) -> validated, typed spec -> the list of `TrialConfig`s it describes.

A suite file is the user's whole contract with `bench` (DESIGN.md "Suite file"), and it may describe thousands
of GPU trials, so every mistake in it has to be caught here, before anything runs, and reported in one line
that names the file, the key path and what was expected: `smoke.yaml: grid.freeze[2]: expected ..., got ...`.

The file is treated as hostile input. It is read with a `yaml.SafeLoader` subclass that also refuses anchors
and aliases (alias bombs), duplicate keys, merge keys and deep nesting, and is capped in size; every failure
of reading, parsing or validating becomes a `UserError`, never another exception. Validation is pydantic v2
with unknown keys forbidden and strict types (`epochs: "5"` is refused, not coerced).

Counting the trials is arithmetic (`Suite.trial_count`), so a 20,000-trial study validates instantly, and
each grid axis is checked for duplicates, which is what keeps every `trial_id` in a suite unique without
expanding the grid.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bench.config import STRATEGIES, TrialConfig
from bench.errors import UserError

MAX_FILE_BYTES = 1 << 20  # a real suite is a few kB; anything near this is a mistake or an attack
MAX_NESTING = 32  # deeper YAML would only exhaust the recursive composer

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
_LR_KEYS = (*STRATEGIES, "partial", "default")


# ---------------------------------------------------------------------------------------------------------
# Reading YAML safely


class _SuiteLoader(yaml.SafeLoader):
    """SafeLoader that also refuses anchors/aliases, merge keys, duplicate keys and deep nesting.

    It reads `1e-3` as a number (YAML 1.2; PyYAML's 1.1 rules would make it the string "1e-3"), and reads
    `2024-01-01` as a string: a date has no place in a suite, and PyYAML's date constructor raises a bare
    ValueError on `2024-13-45`.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name / *name) are not allowed in a suite file; "
                "write the values out", event.start_mark)
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_NESTING} levels deep", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise yaml.constructor.ConstructorError(
                        None, None, "merge keys (<<) are not allowed in a suite file", key_node.start_mark)
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark) from None
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first_line[key] + 1})",
                        key_node.start_mark)
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_text(path: Path) -> str:
    label = str(path)
    try:
        if not path.exists():
            raise UserError(f"{label}: no such suite file")
        if path.is_dir():
            raise UserError(f"{label}: is a directory, expected a suite YAML file")
        if not path.is_file():
            raise UserError(f"{label}: not a regular file, expected a suite YAML file")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UserError(f"{label}: cannot read the suite file ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{label}: larger than {MAX_FILE_BYTES // (1 << 20)} MiB; a suite file is a few kB "
                        "of YAML")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(f"{label}:{line}: not valid UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                        f"{error.start}); save the suite as UTF-8") from None


def _yaml_error_line(label: str, text: str, error: Exception) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or "invalid YAML"
        if "'\\t'" in problem:
            problem = "a tab character where YAML expects spaces (indent with spaces, not tabs)"
        elif "could not determine a constructor" in problem:
            problem += " (tags that build objects are not allowed)"
        context = f" ({error.context})" if error.context else ""
        return f"{label}:{mark.line + 1}:{mark.column + 1}: {problem}{context}"
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        return f"{label}:{line}:{column}: character #x{code:04x} is not allowed in YAML"
    return f"{label}: invalid YAML: {error}"


def _load_yaml(path: Path) -> dict[str, Any]:
    label = str(path)
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise UserError(_yaml_error_line(label, text, error)) from None
    except (ValueError, OverflowError, RecursionError) as error:  # explicit tags such as !!timestamp
        raise UserError(f"{label}: invalid YAML value ({type(error).__name__}: {error})") from None
    if data is None:
        raise UserError(f"{label}: the suite file is empty; expected a mapping with name, backbones, "
                        "datasets, grid and train")
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected a mapping (key: value lines) at the top level, got a "
                        f"{_type_name(data)}")
    return data


# ---------------------------------------------------------------------------------------------------------
# ${VAR} expansion in path-valued strings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(value: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}` (and a leading `~`) in a path; an unset VAR is a mistake."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found or default is None):
            return found
        if default is not None:
            return default
        raise ValueError(f"expected environment variable {name} to be set (or write ${{{name}:-default}}), "
                         f"got it unset in {value!r}")

    expanded = _VAR.sub(substitute, value)
    if "${" in _VAR.sub("", value):
        raise ValueError(f"expected ${{NAME}} or ${{NAME:-default}}, got a malformed reference in {value!r}")
    return os.path.expanduser(expanded)


def _expand_optional(value: str | None) -> str | None:
    return None if value is None else expand_vars(value)


def _expand_dataset_name(name: str) -> str:
    prefix = "imagefolder:"
    return prefix + expand_vars(name[len(prefix):]) if name.startswith(prefix) else name


# ---------------------------------------------------------------------------------------------------------
# The typed spec


class _Strict(BaseModel):
    """Strict types, no unknown keys, no inf/nan, and an unknown key reported with a did-you-mean."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    hint = difflib.get_close_matches(str(key), allowed, n=1)
                    raise PydanticCustomError("unknown_key", "unknown key", {
                        "key": _short(key, 40) if not isinstance(key, str) or len(key) > 40 else key,
                        "allowed": ", ".join(allowed), "hint": hint[0] if hint else ""})
        return data


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _no_duplicates(values: list[Any] | None, keys: list[Any] | None = None) -> list[Any] | None:
    """Refuse a repeated value (compared by `keys` where given): it would repeat every trial it is in."""
    if values is not None:
        keys = values if keys is None else keys
        for index, key in enumerate(keys):
            if key in keys[:index]:
                raise PydanticCustomError("duplicate", "duplicate", {
                    "index": index, "first": keys.index(key), "value": values[index]})
    return values


def _freeze_value(value: Any) -> str | float:
    if isinstance(value, str) and value in STRATEGIES:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and 0.0 <= value <= 1.0:
        return float(value)
    hint = difflib.get_close_matches(value, STRATEGIES, n=1) if isinstance(value, str) else []
    extra = f" (did you mean {hint[0]}?)" if hint else ""
    raise ValueError(f"expected linear_probe, full, lp_ft or a number in [0, 1], got {_short(value)}{extra}")


def _batch_size_value(value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"expected a positive integer or auto (the largest batch that fits the card), "
                     f"got {_short(value)}")


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
            raise ValueError(f"expected a backbone name or a mapping {{name, pretrained, weights}}, "
                             f"got {_short(data)}")
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
        return _expand_optional(weights)

    @model_validator(mode="after")
    def _weights_need_pretrained(self) -> BackboneSpec:
        if self.weights is not None and not self.pretrained:
            raise ValueError("expected no weights with pretrained: false (the from-scratch baseline loads "
                             f"nothing), got weights {self.weights!r}")
        return self


class DatasetSpec(_Strict):
    """One dataset axis entry; a bare string in YAML is `{name: <string>}`."""

    name: str
    root: str | None = None  # where torchvision datasets live; ${VAR} expanded
    download: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict):
            raise ValueError(f"expected a dataset name or a mapping {{name, root, download}}, got {_short(data)}")
        return data

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from bench.data.prepare import check_dataset_name

        name = _expand_dataset_name(name)
        try:
            check_dataset_name(name)
        except UserError as error:
            raise ValueError(str(error)) from None
        return name

    @field_validator("root")
    @classmethod
    def _expand_root(cls, root: str | None) -> str | None:
        return _expand_optional(root)


class GridSpec(_Strict):
    """The swept axes. `data_fraction` and `shots` values each give their own trials."""

    freeze: Annotated[list[Annotated[Any, AfterValidator(_freeze_value)]], Field(min_length=1),
                      AfterValidator(_unique_freeze)]
    data_fraction: _list_of(Annotated[float, Field(gt=0, le=1)]) | None = None
    shots: _list_of(Annotated[int, Field(ge=1)]) | None = None
    seed: _list_of(Annotated[int, Field(ge=0, lt=2**32)]) = [0]
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


class LrByStrategy(_Strict):
    """Learning rate per strategy; a bare number in YAML is `{default: <number>}`."""

    linear_probe: PositiveFloat | None = None
    full: PositiveFloat | None = None
    lp_ft: PositiveFloat | None = None
    partial: PositiveFloat | None = None  # 0 < freeze < 1
    default: PositiveFloat | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            if not (math.isfinite(data) and data > 0):
                raise ValueError(f"expected a number > 0 or a mapping per strategy, got {_short(data)}")
            return {"default": data}
        if not isinstance(data, dict):
            raise ValueError(f"expected a number > 0 or a mapping with keys among {', '.join(_LR_KEYS)}, "
                             f"got {_short(data)}")
        return data

    def for_strategy(self, strategy: str) -> float | None:
        value = getattr(self, strategy)
        return self.default if value is None else value


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
    padded_depthwise_grad: bool = _DEFAULTS["padded_depthwise_grad"]  # false: PyTorch's own backward (bench.speedups.depthwise)

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
            raise ValueError(f"expected limited < sufficient, got limited {self.limited} and sufficient "
                             f"{self.sufficient}")
        return self


class AnalysisSpec(_Strict):
    similarity: bool = True  # measure similarity and transferability once per (backbone, dataset, size)
    similarity_threshold: Annotated[float, Field(gt=0, le=1)] | None = None  # None: bench.similarity.scores's default
    data_regimes: DataRegimesSpec = DataRegimesSpec()


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

    @field_validator("backbones")
    @classmethod
    def _unique_backbones(cls, backbones: list[BackboneSpec]) -> list[BackboneSpec]:
        return _no_duplicates(backbones, [(b.name, b.pretrained, b.weights) for b in backbones])

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, datasets: list[DatasetSpec]) -> list[DatasetSpec]:
        return _no_duplicates(datasets, [(d.name, d.root) for d in datasets])  # `download` changes no data

    @model_validator(mode="after")
    def _every_strategy_has_lr(self) -> SuiteSpec:
        if self.grid.lr is None:
            for value in self.grid.freeze:
                strategy = _freeze_key(value)[0]
                if self.train.lr.for_strategy(strategy) is None:
                    raise PydanticCustomError("lr_missing", "lr missing", {"strategy": strategy, "freeze": value})
        return self


# ---------------------------------------------------------------------------------------------------------
# Error messages: one line, with the key path


def _type_name(value: Any) -> str:
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _bounds(ctx: dict[str, Any]) -> str:
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{ops[key]} {ctx[key]}" for key in ops if key in ctx)


_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type":
    "a mapping",
}


def _describe(error: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(key path, 'expected ..., got ...') for one pydantic error."""
    loc, kind, ctx, got = tuple(error["loc"]), error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "unknown_key":
        hint = f" (did you mean {ctx['hint']}?)" if ctx["hint"] else ""
        return (*loc, ctx["key"]), f"unknown key{hint}; expected one of: {ctx['allowed']}"
    if kind == "missing":
        return loc, "expected a value (required key), got nothing"
    if kind == "duplicate":
        value = ctx["value"]
        shown = value.name if isinstance(value, (BackboneSpec, DatasetSpec)) else value
        return (*loc, ctx["index"]), (f"expected each value once, got {_short(shown)}, the same as "
                                       f"{_key_path(loc)}[{ctx['first']}]")
    if kind == "lr_missing":
        return ("train", "lr"), (f"expected an lr for strategy {ctx['strategy']} (freeze {_short(ctx['freeze'])}) "
                                 "or a default key, got neither")
    if kind == "too_short":
        return loc, f"expected a non-empty list, got {_short(got)}"
    if kind == "string_pattern_mismatch":
        return loc, ("expected a name of letters, digits, '_', '.' and '-' that starts with a letter or digit "
                     f"(it names the results folder), got {_short(got)}")
    if kind == "string_too_long":
        return loc, f"expected at most {ctx['max_length']} characters, got {len(got)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return loc, f"expected a number {_bounds(ctx)}, got {_short(got)}"
    if kind == "literal_error":
        hint = difflib.get_close_matches(got, re.findall(r"'([^']*)'", ctx["expected"]), n=1) \
            if isinstance(got, str) else []
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        return loc, f"expected one of {ctx['expected']}, got {_short(got)}{extra}"
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"]))
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {'null' if got is None else _type_name(got) + ' ' + _short(got)}"
    return loc, f"{error['msg']}, got {_short(got)}"


def _lookup(tree: Any, loc: tuple[Any, ...]) -> bool:
    """Whether `loc` names something written in `tree` (used to blame the smoke block).

    Reaching a plain value early counts: `backbones: [x]` in the tree wrote `backbones[0].name`.
    """
    for part in loc:
        if isinstance(tree, dict):
            if part not in tree:
                return False
            tree = tree[part]
        elif isinstance(tree, list):
            if not (isinstance(part, int) and 0 <= part < len(tree)):
                return False
            tree = tree[part]
        else:
            return True
    return True


def _validate(label: str, data: dict[str, Any], smoke_block: dict[str, Any] | None = None) -> SuiteSpec:
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as errors:
        loc, message = _describe(errors.errors()[0])
        if smoke_block is None:
            where = _key_path(loc) or "(top level)"
        elif _lookup(smoke_block, loc):
            where = _key_path(("smoke", *loc))
        else:
            where = f"{_key_path(loc) or '(top level)'} (with the smoke block merged)"
        more = len(errors.errors()) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise UserError(f"{label}: {where}: {message}{tail}") from None


# ---------------------------------------------------------------------------------------------------------
# Loading and expanding


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, everything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclasses.dataclass(frozen=True)
class Suite:
    """A validated suite: its typed spec, the resolved dict to save with results, and its trials."""

    path: Path
    spec: SuiteSpec
    resolved: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def tune(self) -> TuneSpec:
        return self.spec.tune

    @property
    def analysis(self) -> AnalysisSpec:
        return self.spec.analysis

    def trial_count(self) -> int:
        """The number of trials, by arithmetic: instant for any grid."""
        grid = self.spec.grid
        return math.prod([
            len(self.spec.datasets), len(self.spec.backbones), len(grid.freeze), len(grid.data_sizes()),
            len(grid.seed), len(grid.lr or [None]), len(grid.weight_decay or [None]),
        ])

    def trials(self) -> list[TrialConfig]:
        """The grid, expanded: datasets x backbones x freeze x data size x seed x lr x weight decay."""
        return list(self._iter_trials())

    def _iter_trials(self) -> Iterator[TrialConfig]:
        spec, grid, train = self.spec, self.spec.grid, self.spec.train
        for dataset, backbone, freeze, (fraction, shots), seed, swept_lr, swept_wd in itertools.product(
                spec.datasets, spec.backbones, grid.freeze, grid.data_sizes(), grid.seed,
                grid.lr or [None], grid.weight_decay or [None]):
            strategy = _freeze_key(freeze)[0]
            lr = swept_lr if swept_lr is not None else train.lr.for_strategy(strategy)
            assert lr is not None  # guaranteed by SuiteSpec._every_strategy_has_lr
            probe_lr = None
            if strategy == "lp_ft":
                probe_lr = train.lr.linear_probe if train.lr.linear_probe is not None else lr
            yield TrialConfig(
                suite=spec.name, backbone=backbone.name, pretrained=backbone.pretrained,
                weights=backbone.weights, dataset=dataset.name, dataset_root=dataset.root,
                download=dataset.download, freeze=freeze, data_fraction=fraction, shots=shots, seed=seed,
                img_size=train.img_size, epochs=train.epochs, steps=train.steps, batch_size=train.batch_size,
                optimizer=train.optimizer, lr=lr, probe_lr=probe_lr,
                weight_decay=swept_wd if swept_wd is not None else train.weight_decay,
                momentum=train.momentum, warmup_fraction=train.warmup_fraction,
                label_smoothing=train.label_smoothing, augment=train.augment,
                val_fraction=train.val_fraction, eval_every=train.eval_every,
                padded_depthwise_grad=train.padded_depthwise_grad,
                similarity=spec.analysis.similarity, similarity_threshold=spec.analysis.similarity_threshold,
                gpu_share=_gpu_share(spec.tune.resources_per_trial.gpu),
            )


def _gpu_share(gpu: float) -> float:
    """A fractional GPU request is the share of one card a trial may fill; whole cards (or none) mean all of it."""
    return gpu if 0 < gpu < 1 else 1.0


def load_suite(path: str | Path, *, smoke: bool = False) -> Suite:
    """Read, validate and resolve a suite file; with `smoke`, its `smoke:` block is deep-merged over it.

    The smoke block is validated (merged over the suite) whether or not `smoke` is asked for, so a broken
    smoke variant is caught by `bench validate`. Raises UserError, one line, for every problem.
    """
    path = Path(path)
    label = str(path)
    raw = _load_yaml(path)
    base = {key: value for key, value in raw.items() if key != "smoke"}
    spec = _validate(label, base)

    smoke_block = raw.get("smoke")
    if smoke_block is not None:
        if not isinstance(smoke_block, dict):
            raise UserError(f"{label}: smoke: expected a mapping (a partial suite merged over the suite with "
                            f"--smoke), got {_type_name(smoke_block)} {_short(smoke_block)}")
        if "smoke" in smoke_block:
            raise UserError(f"{label}: smoke.smoke: expected no smoke block inside the smoke block, got one")
        smoke_spec = _validate(label, deep_merge(base, smoke_block), smoke_block)
        if smoke:
            spec = smoke_spec
    elif smoke:
        raise UserError(f"{label}: smoke: expected a smoke block for --smoke, got a suite without one")

    resolved = spec.model_dump(mode="json", exclude_none=True)
    if smoke_block is not None and not smoke:
        resolved["smoke"] = smoke_block
    return Suite(path=path, spec=spec, resolved=resolved)
