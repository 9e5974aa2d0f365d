"""CPU training of grouped (depthwise) convolutions whose kernel is larger than their input: the weight gradient
from an explicitly padded input.

``padded_weight_grad()`` is a ``TorchFunctionMode``: inside it, every ``conv2d`` call that ``takes_slow_path`` (a
CPU grouped convolution in training, its weight trainable, its kernel larger than its input in a dimension) goes
through ``PaddedWeightGrad``, whose weight gradient is the same sum in another order (equal up to float rounding)
on oneDNN's ordinary path. The forward pass and the input and bias gradients are PyTorch's own calls, bit for bit;
CUDA is never touched. The training step runs its forward pass inside the mode (``bench.training.loop``), the row's
``padded_depthwise_grad`` column counts the convolutions it served, and ``TrialConfig(padded_depthwise_grad=False)``
keeps PyTorch's backward. Why, and the error bound: (docs/design.md, "The padded depthwise weight gradient (CPU)").
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
