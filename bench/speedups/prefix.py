"""Frozen prefix, computed once: a partially frozen body cut where its frozen groups end.

``split_frozen_prefix`` cuts the body into ``prefix`` (exactly the frozen groups, plus parameterless modules that
behave the same in train and eval mode) and ``suffix`` (the rest), sharing the body's modules, with
``suffix(prefix(x)) == body(x)``. ``cached_prefix_outputs`` computes the prefix's output per image once per
dataset, kept as ``bench.speedups.features`` keeps pooled features (same memory, disk cache and batching), and a
trial trains ``head(suffix(.))`` on them. The cut is known for timm's ``EfficientNet``, ``ResNet`` and
``VisionTransformer`` classes whose forward is timm's own (a ViT: embedding, then its blocks), and for a plain
``nn.Sequential`` body; anything else, or a cut that would change train-mode
behaviour, gives ``None`` (the plain path). With every group frozen the prefix is the whole body and its outputs
are the pooled features. Why the outputs are exact: (docs/design.md, "The cached paths, and why they are exact").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench.models.freeze import parameter_groups
from bench.speedups import features
from bench.training import precision

log = logging.getLogger(__name__)

PREFIX_VERSION = 2  # bump when the split or the way prefix outputs are computed changes (cache keys carry it)
DEFAULT_MAX_BYTES = 1 << 30  # prefix outputs of one dataset larger than this are not cached (early boundaries
# at full resolution: e.g. 32 x 112 x 112 floats per image at 224 px)

Stage = tuple[str, nn.Module]  # (dotted name in the body, module)


class FrozenPrefix(nn.Sequential):
    """The frozen stages of a body, in order. ``stage_names`` are their dotted names in the body."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        super().__init__(OrderedDict((name.replace(".", "_"), module) for name, module in stages))
        self.stage_names: tuple[str, ...] = tuple(name for name, _ in stages)


class Suffix(nn.Sequential):
    """The trainable rest of a body, in order; shares its modules (and parameters) with the body."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        super().__init__(OrderedDict((name.replace(".", "_"), module) for name, module in stages))
        self.stage_names: tuple[str, ...] = tuple(name for name, _ in stages)


class PooledHead(nn.Module):
    """timm's ``forward_head`` (pool -> dropout -> classifier) as a module of its own, so that its dropout
    follows the suffix's train/eval mode as it follows the body's in the plain path."""

    def __init__(self, global_pool: nn.Module, drop_rate: float, classifier: nn.Module) -> None:
        super().__init__()
        self.global_pool = global_pool
        self.drop_rate = float(drop_rate or 0.0)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


class ViTEmbed(nn.Module):
    """A timm ``VisionTransformer``'s input side as one stage: patch embedding, class/register tokens and position
    embedding (the ViT's own ``_pos_embed``), patch dropout and pre-norm. It holds exactly the ViT's first
    parameter group (``patch_embed``, ``cls_token``, ``pos_embed``), shared with the ViT."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        for name in ("cls_token", "reg_token", "pos_embed"):
            value = getattr(vit, name, None)
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
        self.pos_drop, self.patch_drop, self.norm_pre = vit.pos_drop, vit.patch_drop, vit.norm_pre
        object.__setattr__(self, "_vit", vit)  # for its _pos_embed; not a child (its other modules are not here)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.patch_drop(self._vit._pos_embed(self.patch_embed(images))))


class ViTHead(nn.Module):
    """A timm ``VisionTransformer``'s ``forward_head`` (token pooling, fc_norm, dropout, classifier) as a module."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.attn_pool, self.fc_norm, self.head_drop, self.head = vit.attn_pool, vit.fc_norm, vit.head_drop, vit.head
        object.__setattr__(self, "_vit", vit)  # for its pool(), which reads attn_pool and the pooling settings

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(self._vit.pool(tokens))))


def _vit_input_is_mode_free(vit: VisionTransformer) -> bool:
    """Whether the embedding computes the same in train and eval mode (no token dropout, no pre-norm)."""
    drop = vit.pos_drop
    no_drop = isinstance(drop, nn.Identity) or (isinstance(drop, nn.Dropout) and drop.p == 0.0)
    return no_drop and isinstance(vit.patch_drop, nn.Identity) and isinstance(vit.norm_pre, nn.Identity)


# ---------------------------------------------------------------------------------------------------------
# the body as a chain of stages


def _children(module: nn.Module, prefix: str) -> list[Stage]:
    return [(f"{prefix}.{name}" if prefix else name, child) for name, child in module.named_children()]


def _uses_timm_forward(body: nn.Module, cls: type) -> bool:
    kind = type(body)
    return isinstance(body, cls) and all(
        getattr(kind, attr) is getattr(cls, attr) for attr in ("forward", "forward_features", "forward_head")
    )


def body_chain(body: nn.Module) -> tuple[list[Stage], nn.Module | None] | None:
    """The body's forward as (stages applied in order, tail), or None when it is not known.

    Stages that are ``nn.Sequential`` may be split further at a group boundary; the tail (pooling, dropout,
    classifier) always runs last and is never split.
    """
    if _uses_timm_forward(body, EfficientNet):
        stages = [
            ("conv_stem", body.conv_stem),
            ("bn1", body.bn1),
            ("blocks", body.blocks),
            ("conv_head", body.conv_head),
            ("bn2", body.bn2),
        ]
        return stages, PooledHead(body.global_pool, body.drop_rate, body.classifier)
    if _uses_timm_forward(body, ResNet):
        stages = [
            (name, getattr(body, name))
            for name in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
        ]
        return stages, PooledHead(body.global_pool, body.drop_rate, body.fc)
    if _uses_timm_forward(body, VisionTransformer) and not body.grad_checkpointing and _vit_input_is_mode_free(body):
        return [("embed", ViTEmbed(body)), ("blocks", body.blocks), ("norm", body.norm)], ViTHead(body)
    if type(body) is nn.Sequential:
        return _children(body, ""), None
    return None


def _param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def _same_in_both_modes(module: nn.Module) -> bool:
    """A parameterless module whose output does not depend on train/eval mode (conservatively)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) or "Drop" in type(sub).__name__:
            return False
        if any(True for _ in sub.buffers(recurse=False)):  # running statistics and the like
            return False
    return True


def _split_stages(stages: list[Stage], frozen: set[int]) -> tuple[list[Stage], list[Stage]] | None:
    """Prefix = the leading stages whose parameters are all frozen (parameterless ones only if mode-free),
    cut inside a ``nn.Sequential`` stage when the boundary falls there. None if the cut is impossible."""
    prefix: list[Stage] = []
    remaining = set(frozen)  # frozen parameters not yet in the prefix
    for index, (name, module) in enumerate(stages):
        ids = _param_ids(module)
        if not remaining:
            # Past the last frozen parameter: take along mode-free parameterless stages (ReLU, max-pool),
            # which shrink what is stored and cost nothing to keep frozen.
            if ids or not _same_in_both_modes(module):
                return prefix, stages[index:]
            prefix.append((name, module))
        elif ids and ids <= remaining:
            prefix.append((name, module))  # wholly frozen: in eval mode in the plain path too
            remaining -= ids
        elif not ids and _same_in_both_modes(module):
            prefix.append((name, module))
        elif ids & remaining and type(module) is nn.Sequential:
            inner = _split_stages(_children(module, name), remaining & ids)
            if inner is None or not remaining <= ids:
                return None  # frozen parameters also after this stage: not a clean cut
            return prefix + inner[0], inner[1] + stages[index + 1 :]
        else:
            return None  # the boundary falls inside a module that is not a chain, or a mode-dependent one
    return prefix, []


def split_frozen_prefix(body: nn.Module, n_frozen_groups: int) -> tuple[FrozenPrefix, nn.Module] | None:
    """(prefix, suffix) with ``suffix(prefix(x)) == body(x)``, the prefix holding exactly the parameters of
    the first ``n_frozen_groups`` groups of ``bench.models.freeze.parameter_groups(body)``; None when the body's
    forward is not a known chain or the group boundary does not fall between chained modules.

    Both share the body's modules (no copies): training the suffix trains the body.
    """
    chain = body_chain(body)
    if chain is None:
        return None
    stages, tail = chain
    groups = parameter_groups(body)
    if not 0 <= n_frozen_groups <= len(groups):
        raise ValueError(f"n_frozen_groups must be in [0, {len(groups)}], got {n_frozen_groups}")
    tail_stage: list[Stage] = [("head", tail)] if tail is not None else []
    if n_frozen_groups == len(groups):
        # All frozen: the plain path runs the whole body in eval mode, tail included.
        prefix_stages, suffix_stages = stages + tail_stage, []
    else:
        params = dict(body.named_parameters())
        frozen = {id(params[name]) for group in groups[:n_frozen_groups] for name in group}
        if tail is not None and _param_ids(tail) & frozen:
            return None
        split = _split_stages(stages, frozen) if frozen else ([], stages)
        if split is None:
            return None
        prefix_stages, suffix_stages = split[0], split[1] + tail_stage
        if {i for _, m in prefix_stages for i in _param_ids(m)} != frozen:
            return None
    prefix, suffix = FrozenPrefix(prefix_stages), Suffix(suffix_stages)
    if _param_ids(prefix) | _param_ids(suffix) != _param_ids(body):
        return None  # a parameter outside the known chain: the forward is not what we think
    return prefix, suffix


# ---------------------------------------------------------------------------------------------------------
# the cache


def prefix_cache_key(
    *,
    arch: str,
    weights_key: str,
    dataset_fingerprint: str,
    mean: tuple,
    std: tuple,
    img_size: int,
    n_frozen_groups: int,
    stage_names: Sequence[str],
    device_type: str = "cpu",
) -> str:
    """Everything a pooled-feature key holds (``bench.speedups.features.feature_key``), plus the freeze boundary (group
    count and the exact stages computed) and the precision (bf16 autocast on CUDA, fp32 elsewhere)."""
    base = features.feature_key(
        arch=arch,
        weights_key=weights_key,
        dataset_fingerprint=dataset_fingerprint,
        mean=mean,
        std=std,
        img_size=img_size,
        device_type=device_type,
    )
    arithmetic = "bf16" if precision.uses_bf16(torch.device(device_type)) else "fp32"  # the key's own fixed spelling
    blob = json.dumps(
        {
            "kind": "frozen_prefix",
            "features_key": base,
            "n_frozen_groups": n_frozen_groups,
            "stages": list(stage_names),
            "precision": arithmetic,
            "version": PREFIX_VERSION,
        },
        sort_keys=True,
    )
    return "prefix-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


@torch.no_grad()
def prefix_output_bytes(
    prefix: nn.Module, img_size: int, n_images: int, normalize: nn.Module, *, device: torch.device
) -> int:
    """Size of the float32 prefix outputs of ``n_images`` images, from one probe image."""
    probe = np.zeros((1, 3, img_size, img_size), dtype=np.uint8)
    one = features.compute_features(prefix, probe, normalize, device=device)
    return int(one[0].numel()) * 4 * n_images


def cached_prefix_outputs(
    key: str,
    prefix: nn.Module,
    x_train: features.Images,
    x_test: features.Images,
    val_idx: np.ndarray,
    normalize: nn.Module,
    *,
    device: torch.device,
    train_batch: int,
    eval_batch: int,
    cache_dir: str | None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> features.FrozenRows | None:
    """``prefix(normalize(x))`` for every image a trial trains or evaluates on, from memory, disk or computed
    once, batched as the plain path batches them (``bench.speedups.features.frozen_rows``); None when they would exceed
    ``max_bytes`` (then train the plain way)."""
    if max_bytes is not None:
        size = prefix_output_bytes(
            prefix, int(x_train.shape[-1]), len(x_train) + len(val_idx) + len(x_test), normalize, device=device
        )
        if size > max_bytes:
            log.info(
                "frozen prefix %s: outputs would take %.0f MB > %.0f MB; not cached",
                key,
                size / 2**20,
                max_bytes / 2**20,
            )
            return None
    return features.frozen_rows(
        key,
        prefix,
        x_train,
        x_test,
        val_idx,
        normalize,
        device=device,
        train_batch=train_batch,
        eval_batch=eval_batch,
        cache_dir=cache_dir,
    )
