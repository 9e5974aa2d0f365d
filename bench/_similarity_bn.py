"""BatchNorm statistics of target images, recorded with forward hooks: the raw material of the source score.

Every BatchNorm layer of an ImageNet-trained network stores the mean and variance of its input channels over
ImageNet (`running_mean`, `running_var`). Passing target images through the network in eval mode and recording
the same per-channel moments at the same layers gives two sets of Gaussians to compare, with no ImageNet image
needed. Recording is a context manager so the forward pass that extracts frozen features can record the
statistics at the same time (no second pass over the data).
"""

from __future__ import annotations

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
        # One batch's moments in float32 (torch's two-pass var_mean: exact enough for a few thousand values a
        # channel, and ~4x cheaper than a float64 copy of the activations); batches merge in float64.
        rows = x.detach().float().permute(0, 2, 3, 1).reshape(n, x.shape[1])  # a view for channels_last input
        batch_var, batch_mean = torch.var_mean(rows, dim=0, correction=0)
        batch_mean, batch_m2 = batch_mean.double(), batch_var.double() * n
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


class BatchNormRecorder:
    """Records the per-channel input moments of every BatchNorm2d layer during the forward passes it wraps.

    Use: ``with BatchNormRecorder(model) as recorder: model(batch) ...``, then ``recorder.statistics()``.
    It only observes: the model's mode and outputs are untouched. Run the model in eval mode, so the
    activations every layer sees are the ones the pretrained network produces on these images.
    With ``groups=k`` the caller assigns each forward pass to a group (``recorder.group = i``) and can read
    each group's statistics apart (``statistics(group=i)``), e.g. two halves for a jackknife bias estimate.
    """

    def __init__(self, model: nn.Module, groups: int = 1, coarsest_only: bool = False) -> None:
        self._model = model
        self._layers = batchnorm_layers(model)
        self._moments = [[_Moments() for _ in range(groups)] for _ in self._layers]
        self._handles: list[Any] = []
        self.group = 0
        # coarsest_only: after the first forward pass has shown the smallest input map, only layers at that
        # size are recorded (what `layers="coarsest"` reads; the early full-resolution maps cost the most).
        self._coarsest_only = coarsest_only
        self._smallest: int | None = None
        self._smallest_so_far: int | None = None

    @property
    def has_batchnorm(self) -> bool:
        return bool(self._layers)

    def __enter__(self) -> BatchNormRecorder:
        for (_, module), moments in zip(self._layers, self._moments):
            self._handles.append(module.register_forward_hook(self._hook(moments)))
        if self._coarsest_only:
            self._handles.append(self._model.register_forward_hook(self._end_of_pass))
        return self

    def _end_of_pass(self, *args: object) -> None:
        self._smallest = self._smallest_so_far

    def _hook(self, moments: list[_Moments]):  # noqa: ANN202 - torch's hook signature
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            area = inputs[0].shape[2] * inputs[0].shape[3]
            if self._coarsest_only:
                self._smallest_so_far = min(area, self._smallest_so_far or area)
                if self._smallest is not None and area > self._smallest:
                    return
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
            if self._coarsest_only and moments.spatial[0] * moments.spatial[1] > (self._smallest or 0):
                continue  # recorded in the first pass only, before the coarsest size was known
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
