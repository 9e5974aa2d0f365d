"""bench.speedups.depthwise: the weight gradient of a CPU depthwise convolution whose kernel is larger than its input,
from the explicitly padded input. Checked against a float64 reference and against PyTorch's own backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.speedups.depthwise import padded_weight_grad, takes_slow_path, weight_grad


def _reference(
    x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: int, padding: tuple[int, int], groups: int
) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad.double(),
        x.double(),
        weight.double(),
        None,
        [stride] * 2,
        list(padding),
        [1, 1],
        False,
        [0, 0],
        groups,
        [False, True, False],
    )[1]


# (batch, channels, input h, input w, kernel h, kernel w, stride, groups): the late 5x5 and 3x3 depthwise layers
# of an EfficientNet at 48 px (2x2 and 3x3 maps, stride 1 and 2), a non-square kernel and map, a grouped
# (not depthwise) convolution, and a kernel that fits its input (where PyTorch's path is already fast).
SHAPES = [
    (32, 1152, 2, 2, 5, 5, 1, 1152),
    (32, 672, 3, 3, 5, 5, 1, 672),
    (32, 672, 3, 3, 5, 5, 2, 672),
    (32, 1152, 2, 2, 3, 3, 1, 1152),
    (8, 64, 2, 3, 5, 3, 1, 64),
    (4, 32, 1, 1, 3, 3, 1, 32),
    (8, 48, 3, 3, 5, 5, 1, 12),
    (16, 96, 12, 12, 3, 3, 2, 96),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_padded_weight_gradient_is_the_convolutions_weight_gradient(shape, channels_last):
    n, c, h, w, kh, kw, stride, groups = shape
    padding = (kh // 2, kw // 2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=generator)
    weight = torch.randn(c, c // groups, kh, kw, generator=generator)
    grad = torch.randn_like(F.conv2d(x, weight, None, stride, padding, 1, groups))
    if channels_last:
        x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad))
    reference = _reference(x, grad, weight, stride, padding, groups)
    ours = weight_grad(grad, x, weight, [stride] * 2, list(padding), [1, 1], groups)
    pytorchs = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, list(padding), [1, 1], False, [0, 0], groups, [False, True, False]
    )[1]
    scale = reference.abs().max()
    assert ours.shape == weight.shape and ours.dtype == torch.float32
    # float32 rounding of a sum of n*h*w products: as close to the float64 value as PyTorch's own path is
    assert (ours.double() - reference).abs().max() <= 1e-5 * scale
    assert (ours - pytorchs).abs().max() <= 1e-5 * pytorchs.abs().max()
    if kh <= h and kw <= w:  # no tap is cropped and PyTorch's path is the ordinary one: the same call, same bits
        assert torch.equal(ours, pytorchs)


class _Late(nn.Module):
    """A late EfficientNet block's depthwise 5x5 on a 2x2 map, between two trainable 1x1 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(16, 64, 1, bias=False)
        self.dw = nn.Conv2d(64, 64, 5, padding=2, groups=64, bias=True)
        self.project = nn.Conv2d(64, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.relu6(self.dw(self.expand(x))))


def _grads(model: nn.Module, x: torch.Tensor, mode: padded_weight_grad | None) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    if mode is None:
        out = model(x)
    else:
        with mode:
            out = model(x)
    out.square().sum().backward()
    return out.detach(), {"x": x.grad, **{name: p.grad for name, p in model.named_parameters()}}


def test_in_a_model_only_the_depthwise_weight_gradient_changes_and_only_by_rounding():
    torch.manual_seed(0)
    model = _Late().to(memory_format=torch.channels_last)
    x = torch.randn(8, 16, 2, 2).contiguous(memory_format=torch.channels_last)
    mode = padded_weight_grad()
    plain_out, plain = _grads(model, x, None)
    ours_out, ours = _grads(model, x, mode)
    assert mode.used == 1  # the depthwise 5x5 on 2x2; the 1x1 convolutions are not grouped
    assert torch.equal(ours_out, plain_out)  # the forward pass is PyTorch's call
    for name in ("x", "expand.weight", "dw.bias", "project.weight", "project.bias"):
        assert torch.equal(ours[name], plain[name]), name  # everything upstream of dw.weight's gradient
    assert torch.allclose(ours["dw.weight"], plain["dw.weight"], rtol=1e-5, atol=1e-6 * plain["dw.weight"].abs().max())


def test_it_stays_out_of_evaluation_frozen_layers_and_kernels_that_fit():
    torch.manual_seed(0)
    model = _Late()
    x = torch.randn(2, 16, 2, 2)
    mode = padded_weight_grad()
    with torch.no_grad(), mode:
        model(x)
    model.dw.requires_grad_(False)
    with mode:
        model(x)
    assert mode.used == 0
    fits = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert not takes_slow_path(torch.randn(1, 8, 3, 3), fits.weight, 8, 1)  # 3x3 kernel on a 3x3 map
    assert takes_slow_path(torch.randn(1, 8, 2, 3), fits.weight, 8, 1)
    assert not takes_slow_path(torch.randn(1, 8, 2, 2), fits.weight, 8, "same")
