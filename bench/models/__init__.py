"""Backbones: the name registry, building a body and a new head from a name, and freezing its first groups."""

from bench.models.build import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Normalize,
    TransferModel,
    build_backbone,
    file_sha256,
    load_state_dict,
    new_head,
    state_sha256,
)
from bench.models.freeze import FreezePlan, apply_freeze, frozen_modules, parameter_groups, set_train_mode
from bench.models.registry import BUNDLED, BackboneListing, check_backbone_name, list_backbones, split_name

__all__ = [
    "BUNDLED", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "BackboneListing", "FreezePlan", "Normalize",
    "TransferModel", "apply_freeze", "build_backbone", "check_backbone_name", "file_sha256", "frozen_modules",
    "list_backbones", "load_state_dict", "new_head", "parameter_groups", "set_train_mode", "split_name",
    "state_sha256",
]
