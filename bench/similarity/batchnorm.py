"""BatchNorm statistics of target images, recorded with forward hooks: the raw material of the source score.

Every BatchNorm layer of an ImageNet-trained network stores the mean and variance of its input channels over
ImageNet (`running_mean`, `running_var`). Passing target images through the network in eval mode and recording
the same per-channel moments at the same layers gives two sets of Gaussians to compare, with no ImageNet image
needed. Recording is a context manager so the forward pass that extracts frozen features can record the
statistics at the same time (no second pass over the data).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class LayerStatistics:
    """One BatchNorm layer: ImageNet's stored moments beside the target images' moments of the same input."""

    name: str
    depth: int  # position among the recorded BatchNorm layers, 0 = closest to the pixels
    running_mean: np.ndarray  # [C] float64, ImageNet (what the layer stored in training)
    running_var: np.ndarray  # [C] float64
    mean: np.ndarray  # [C] float64, target images, over (images, height, width)
    var: np.ndarray  # [C] float64, population variance over the same values
    count: int  # values per channel behind mean/var
    spatial: tuple[int, int]  # height, width of the layer's input map


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The model's 2-d BatchNorm layers that hold running statistics, in forward (registration) order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    ]


class _Moments:
    """Per-channel running mean and sum of squared deviations, merged batch by batch (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.spatial: tuple[int, int] = (0, 0)

    def update(self, x: torch.Tensor) -> None:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        if n == 0:
            return
        # One batch's moments in float32, two passes (mean, then squared deviations from it), as plain sums:
        # torch.var_mean's reduction over the rows of a channels-last map is ~15x slower. Batches merge in
        # float64.
        rows = x.detach().float().permute(0, 2, 3, 1).reshape(n, x.shape[1])  # a view for channels_last input
        batch_mean = rows.sum(0) / n
        centred = rows - batch_mean
        batch_mean, batch_m2 = batch_mean.double(), (centred * centred).sum(0).double()
        self.spatial = (int(x.shape[2]), int(x.shape[3]))
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def merged(self, other: _Moments) -> _Moments:
        """The moments of both sets of values together."""
        if other.mean is None or other.m2 is None:
            return self
        if self.mean is None or self.m2 is None:
            return other
        out = _Moments()
        total = self.count + other.count
        delta = other.mean - self.mean
        out.count, out.spatial = total, self.spatial
        out.mean = self.mean + delta * (other.count / total)
        out.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        return out


@torch.no_grad()
def coarsest_layers(model: nn.Module, side: int) -> list[str]:
    """The names of the BatchNorm layers whose input map is the smallest when the model sees ``side`` x
    ``side`` images: its last stage, which ``layers="coarsest"`` reads. One probe image, in eval mode (running
    statistics untouched; the model's mode is restored)."""
    areas: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202 - torch's hook signature
        return lambda module, inputs, output: areas.__setitem__(name, inputs[0].shape[2] * inputs[0].shape[3])

    handles = [module.register_forward_hook(hook(name)) for name, module in batchnorm_layers(model)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, side, side, device=device).contiguous(memory_format=torch.channels_last))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    smallest = min(areas.values(), default=0)
    return [name for name, area in areas.items() if area == smallest]


class BatchNormRecorder:
    """Records the per-channel input moments of every BatchNorm2d layer during the forward passes it wraps.

    Use: ``with BatchNormRecorder(model) as recorder: model(batch) ...``, then ``recorder.statistics()``.
    It only observes: the model's mode and outputs are untouched. Run the model in eval mode, so the
    activations every layer sees are the ones the pretrained network produces on these images.
    With ``groups=k`` the caller assigns each forward pass to a group (``recorder.group = i``) and can read
    each group's statistics apart (``statistics(group=i)``), e.g. two halves for a jackknife bias estimate.
    ``only`` names the layers to record (see ``coarsest_layers``); the others are not hooked.
    """

    def __init__(self, model: nn.Module, groups: int = 1, only: Collection[str] | None = None) -> None:
        self._layers = batchnorm_layers(model)
        self._moments = [[_Moments() for _ in range(groups)] for _ in self._layers]
        self._handles: list[Any] = []
        self.group = 0
        self._only = None if only is None else set(only)  # the names of the layers to record (None: all)

    @property
    def has_batchnorm(self) -> bool:
        return bool(self._layers)

    def __enter__(self) -> BatchNormRecorder:
        for (name, module), moments in zip(self._layers, self._moments):
            if self._only is None or name in self._only:
                self._handles.append(module.register_forward_hook(self._hook(moments)))
        return self

    def _hook(self, moments: list[_Moments]):  # noqa: ANN202 - torch's hook signature
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            moments[self.group].update(inputs[0])

        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def statistics(self, group: int | None = None) -> list[LayerStatistics]:
        """One entry per BatchNorm layer that saw at least one value, in depth order (all groups merged,
        or only `group`)."""
        out = []
        for depth, ((name, module), per_group) in enumerate(zip(self._layers, self._moments)):
            if group is None:
                moments = per_group[0]
                for other in per_group[1:]:
                    moments = moments.merged(other)
            else:
                moments = per_group[group]
            if moments.mean is None or moments.m2 is None or moments.count == 0:
                continue
            out.append(
                LayerStatistics(
                    name=name,
                    depth=depth,
                    running_mean=module.running_mean.detach().to(torch.float64).cpu().numpy(),
                    running_var=module.running_var.detach().to(torch.float64).cpu().numpy(),
                    mean=moments.mean.cpu().numpy(),
                    var=(moments.m2 / moments.count).cpu().numpy(),
                    count=moments.count,
                    spatial=moments.spatial,
                )
            )
        return out
