"""``train.batch_size: auto``: the largest power-of-two batch that fits the trial's share of the card.

On CUDA the probe runs one bf16 forward and backward pass of a model of its own (the plain path, every
trainable layer) at 16, 32, 64, ... images, until the peak memory plus the optimiser's state would pass
``HEADROOM`` of the trial's budget (the card's memory times the trial's GPU share), the card runs out of
memory, or ``AUTO_CAP`` or the training set is reached. The trial's weights and random streams are untouched.
On a CPU ``auto`` means ``CPU_BATCH`` images (capped by the training set). The row records ``batch_size_used``
and ``batch_size_search`` and leaves ``hp_batch_size`` empty, so an ``auto`` trial is never mistaken for a
fixed-batch one.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.config import TrialConfig
from bench.data import PreparedDataset
from bench.models import Normalize, TransferModel, build_backbone
from bench.models.freeze import set_train_mode
from bench.models.strategies import apply_phase
from bench.training.device import out_of_memory
from bench.training.inputs import as_labels, channels_last, select_indices
from bench.training.loop import GPU_RESIDENT_BYTES, training_loss
from bench.training.phases import plan_phases

AUTO_START = 16
AUTO_CAP = 1024
CPU_BATCH = 64
HEADROOM = 0.85  # the share of the trial's memory budget the probe may fill (fragmentation, eval buffers)


@dataclass(frozen=True)
class BatchSearch:
    """The chosen batch and how it was chosen: every size tried and whether it fitted."""

    batch_size: int
    tried: tuple[tuple[int, bool], ...]
    stopped_by: str  # "memory", "cap", "training set" or "cpu"

    def describe(self) -> str:
        """The row's ``batch_size_search``: ``auto 256 (memory; tried 16 32 64 128 256 512x)``."""
        tried = " ".join(f"{size}{'' if fitted else 'x'}" for size, fitted in self.tried)
        return f"auto {self.batch_size} ({self.stopped_by}" + (f"; tried {tried})" if tried else ")")


def largest_power_of_two(limit: int) -> int:
    return 1 << (max(1, limit).bit_length() - 1)


def search(
    fits: Callable[[int], bool], *, start: int = AUTO_START, cap: int = AUTO_CAP, cap_name: str = "cap"
) -> BatchSearch:
    """Double from ``start`` while ``fits(size)`` and the next size is within ``cap`` (rounded down to a power
    of two; ``cap_name`` says what it is); if ``start`` itself does not fit, halve down to 1. Returns the largest
    size that fitted; ``fits`` is called once per size."""
    cap = largest_power_of_two(cap)
    size = min(largest_power_of_two(start), cap)
    tried: list[tuple[int, bool]] = []
    while not _record(tried, size, fits(size)):
        if size == 1:
            raise MemoryError("a batch of one image does not fit in this trial's memory")
        size //= 2
    if len(tried) > 1:  # the start did not fit: the first size that did is the answer
        return BatchSearch(size, tuple(tried), "memory")
    while size * 2 <= cap:
        if not _record(tried, size * 2, fits(size * 2)):
            return BatchSearch(size, tuple(tried), "memory")
        size *= 2
    return BatchSearch(size, tuple(tried), cap_name)


def _record(tried: list[tuple[int, bool]], size: int, fitted: bool) -> bool:
    tried.append((size, fitted))
    return fitted


def auto_batch_size(config: TrialConfig, data: PreparedDataset, device: torch.device) -> BatchSearch:
    """``batch_size: auto``: probe the trial's model (the plain path, the last phase's freeze: the most memory
    any phase needs) with one forward and backward pass per power of two. The probe model is built for this
    alone and the RNG draws it makes do not reach the trial: each attempt seeds itself."""
    n_train = len(select_indices(data.y_train, config)[0])
    cap, cap_name = min(AUTO_CAP, n_train), "cap" if n_train >= AUTO_CAP else "training set"
    if device.type != "cuda":
        return BatchSearch(min(CPU_BATCH, largest_power_of_two(cap)), (), "cpu")
    found = _probe_on_card(config, data, device, n_train=n_train, cap=cap, cap_name=cap_name)
    gc.collect()  # the probe model went with _probe_on_card's frame; give its memory back to the trial
    torch.cuda.empty_cache()
    return found


def _probe_on_card(
    config: TrialConfig, data: PreparedDataset, device: torch.device, *, n_train: int, cap: int, cap_name: str
) -> BatchSearch:
    """The CUDA search: one bf16 forward and backward pass of a model of its own per batch size, kept within
    ``HEADROOM`` of the trial's share of the card with the optimiser state and the resident split added."""
    backbone = build_backbone(
        config.backbone, data.n_classes, pretrained=False, head_seed=config.seed, img_size=config.img_size
    )
    apply_phase(backbone.body, plan_phases(config, n_train=n_train)[-1].freeze)  # the last phase trains most
    model = TransferModel(backbone.body, backbone.head).to(device).to(memory_format=torch.channels_last)
    set_train_mode(model)
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    state_per_param = 2 if config.optimizer == "adamw" else 1  # AdamW's two moments; SGD's momentum
    fixed = state_per_param * sum(p.numel() * p.element_size() for p in trainable)
    image_bytes = int(np.prod(data.x_train.shape[1:]))
    resident = n_train * image_bytes if n_train * image_bytes <= GPU_RESIDENT_BYTES else 0  # see loop._stage
    budget = HEADROOM * config.gpu_share * torch.cuda.get_device_properties(device).total_memory

    def fits(size: int) -> bool:
        torch.cuda.reset_peak_memory_stats(device)
        try:
            inputs = channels_last(normalize(torch.from_numpy(np.asarray(data.x_train[:size])).to(device)))
            labels = as_labels(data.y_train[:size]).to(device)
            training_loss(model, inputs, labels, device, config.label_smoothing).backward()
        except Exception as error:
            if not out_of_memory(error):
                raise
            return False
        finally:
            model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated(device) + fixed + resident <= budget

    return search(fits, cap=cap, cap_name=cap_name)
