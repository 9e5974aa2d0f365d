"""Backbones: the name registry, building a body and a new head from a name, and freezing its first groups.

The registry's names import no torch (a suite validates without it); the rest is loaded on first use.
"""

from bench.models.registry import BUNDLED, BackboneListing, check_backbone_name, list_backbones, split_name
from bench.utils.lazy import lazy_exports

_BUILD = (
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "Normalize",
    "TransferModel",
    "build_backbone",
    "file_sha256",
    "load_state_dict",
    "new_head",
    "state_sha256",
)
_FREEZE = ("FreezePlan", "apply_freeze", "freeze_plan", "frozen_modules", "parameter_groups", "set_train_mode")

__all__ = ["BUNDLED", "BackboneListing", "check_backbone_name", "list_backbones", "split_name", *_BUILD, *_FREEZE]
__getattr__ = lazy_exports(
    __name__, {**dict.fromkeys(_BUILD, "bench.models.build"), **dict.fromkeys(_FREEZE, "bench.models.freeze")}
)
