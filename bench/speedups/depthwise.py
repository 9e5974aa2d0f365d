"""CPU training of depthwise convolutions whose kernel is larger than their input: the weight gradient from an
explicitly padded input.

Late in an EfficientNet at small image sizes a 5x5 depthwise convolution sees a 2x2 or 3x3 map (48 px input:
``conv_dw`` of blocks 4-6). On a CPU, PyTorch's oneDNN backward computes that layer's *weight* gradient on a
path 20-100x slower than the layer's forward (about 25 ms for 32 images of 1152 channels at 2x2, against
0.2 ms forward, on an AVX2 EPYC): those few layers took over half of efficientnet_lite0's training step at
48 px. The same gradient of the same convolution, written with the zero padding materialised (``F.pad``) and
``padding=0``, over only the kernel taps that ever touch the input, takes oneDNN's ordinary path, 4-18x faster
(1.7 ms for that 2x2 layer). Mathematically it is the same sum; in float it is summed in another order, so it
differs from the slow path by float rounding (2-6e-7 relative to a float64 reference, where the slow path is
1-3e-7).

What changes and what does not:

- Only the weight gradient of a grouped convolution (depthwise included) on a CPU tensor, only where the
  kernel is larger than the input in a dimension (the shapes that take the slow path), only in training
  (gradients enabled and the weight trainable). The forward pass, the input gradient and the bias gradient
  are PyTorch's own calls, bit for bit; CUDA is never touched.
- It is one of the core's kernel choices, like channels_last: the plain and the cached paths of ``bench perf``
  both train through it, so they stay equal bit for bit. The row's ``padded_depthwise_grad`` column counts the
  convolutions that trained through it; ``TrialConfig(padded_depthwise_grad=False)`` (a suite's
  ``train.padded_depthwise_grad: false``) keeps PyTorch's own backward.

``padded_weight_grad()`` is a ``TorchFunctionMode``: inside it every such ``conv2d`` call goes through
``PaddedWeightGrad``; the training step runs its forward pass inside it (``bench.training.trial.training_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV2D = (torch.conv2d, F.conv2d)


def _pair(value: int | Sequence[int]) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def takes_slow_path(x: torch.Tensor, weight: torch.Tensor, groups: int, padding: Any) -> bool:
    """A CPU grouped convolution with a trainable weight whose kernel is larger than its (unpadded) input."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and groups > 1
        and not isinstance(padding, str)
        and torch.is_grad_enabled()
        and weight.requires_grad
        and (weight.shape[2] > x.shape[2] or weight.shape[3] > x.shape[3])
    )


class PaddedWeightGrad(torch.autograd.Function):
    """``F.conv2d`` whose backward computes the weight gradient on the explicitly padded input."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x or (need_b and ctx.has_bias):  # what autograd would compute, with the same call
            grad_x, _, grad_b = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                [weight.shape[0]] if ctx.has_bias else None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
                [need_x, False, need_b and ctx.has_bias],
            )
        if need_w:
            grad_w = weight_grad(grad, x, weight, stride, padding, dilation, groups)
        return grad_x, grad_w, grad_b, None, None, None, None


def _live_taps(kernel: int, size: int, out: int, stride: int, pad: int, dilation: int) -> tuple[int, int]:
    """[first, last) kernel taps that ever touch the input in one dimension; the others see only padding."""
    if dilation != 1:
        return 0, kernel
    return max(0, pad - stride * (out - 1)), min(kernel, pad + size)


def weight_grad(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """The convolution's weight gradient from the zero-padded input with ``padding=0``, over the kernel taps
    that touch the input (a 5x5 kernel on a 2x2 map: the central 3x3); the taps that see only padding get 0."""
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    (h0, h1), (w0, w1) = (
        _live_taps(weight.shape[2 + d], x.shape[2 + d], grad.shape[2 + d], stride[d], padding[d], dilation[d])
        for d in (0, 1)
    )
    rows = stride[0] * (grad.shape[2] - 1) + dilation[0] * (h1 - h0 - 1) + 1
    cols = stride[1] * (grad.shape[3] - 1) + dilation[1] * (w1 - w0 - 1) + 1
    region = padded[:, :, h0 : h0 + rows, w0 : w0 + cols]
    live = weight[:, :, h0:h1, w0:w1]
    if x.is_contiguous(memory_format=torch.channels_last):
        region, live = (t.contiguous(memory_format=torch.channels_last) for t in (region, live))
    part = torch.ops.aten.convolution_backward(
        grad, region, live, None, stride, [0, 0], dilation, False, [0, 0], groups, [False, True, False]
    )[1]
    if part.shape == weight.shape:
        return part
    full = torch.zeros_like(weight)
    full[:, :, h0:h1, w0:w1] = part
    return full


class padded_weight_grad(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Inside: the slow-path convolutions (``takes_slow_path``) train through ``PaddedWeightGrad``; ``used``
    counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.used = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _CONV2D and not kwargs:
            x, weight, bias, stride, padding, dilation, groups = (*args, *(None, 1, 0, 1, 1)[len(args) - 2 :])
            if takes_slow_path(x, weight, groups, padding):
                self.used += 1
                return PaddedWeightGrad.apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)
        return func(*args, **kwargs)
