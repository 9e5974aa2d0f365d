"""The machine's matrix-multiply rate, training FLOPs counted with ``FlopCounterMode``, and the depthwise
training step timed with PyTorch's backward and with the padded weight gradient."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from bench.config import TrialConfig
from bench.perf.trials import Measurement
from bench.training import precision
from bench.utils.tables import markdown_table

# ---------------------------------------------------------------------------------------------------------
# FLOPs


def _matmul_shape(device: torch.device) -> tuple[int, torch.dtype]:
    """The reference product's side and dtype: what the trials compute in (bench.training.precision)."""
    return (8192, torch.bfloat16) if precision.uses_bf16(device) else (2048, torch.float32)


def matmul_gflops(device: torch.device | None = None, *, size: int | None = None, repeats: int = 5) -> float:
    """This machine's matrix-multiply rate in the dtype its trials compute in (best of ``repeats``): fp32 on
    2048 x 2048 matrices with torch's current thread count on the CPU; bf16 on 8192 x 8192 on CUDA, where
    the core trains under bf16 autocast."""
    device = device or torch.device("cpu")
    default_size, dtype = _matmul_shape(device)
    size = size or default_size
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    a @ b  # warm-up: thread pool, allocator, cuBLAS heuristics
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e9


def depthwise_step_times(
    img_size: int = 48, batch: int = 32, steps: int = 5, backbone: str = "efficientnet_lite0"
) -> list[str]:
    """One training step of ``backbone`` (all layers trainable, channels_last, AdamW, this process's threads)
    with PyTorch's own depthwise backward and with ``bench.speedups.depthwise``'s padded weight gradient, alternated
    three times, best of each; and the largest relative difference of the weight gradients after one step from
    the same weights: (table rows)."""
    import copy

    from bench import training
    from bench.models.build import build_backbone
    from bench.speedups import depthwise

    torch.manual_seed(0)
    built = build_backbone(backbone, 10, pretrained=False, img_size=img_size)
    model = nn.Sequential(built.body, built.head).to(memory_format=torch.channels_last).train()
    images = torch.randn(batch, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def gradients(net: nn.Module, kernels: depthwise.padded_weight_grad | None) -> dict[str, torch.Tensor]:
        net.zero_grad()
        training.training_loss(net, images, labels, torch.device("cpu"), kernels=kernels).backward()
        return {name: p.grad.clone() for name, p in net.named_parameters()}

    kernels = depthwise.padded_weight_grad()
    plain, padded = gradients(copy.deepcopy(model), None), gradients(copy.deepcopy(model), kernels)
    worst = max(float((padded[n] - plain[n]).abs().max() / plain[n].abs().max().clamp_min(1e-30)) for n in plain)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step_seconds(mode: depthwise.padded_weight_grad | None) -> float:
        best = math.inf
        for index in range(steps + 1):
            tic = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            training.training_loss(model, images, labels, torch.device("cpu"), kernels=mode).backward()
            optimizer.step()
            if index:  # the first step warms up
                best = min(best, time.perf_counter() - tic)
        return best

    times: dict[str, float] = {"pytorch": math.inf, "padded": math.inf}
    for _ in range(3):
        times["pytorch"] = min(times["pytorch"], step_seconds(None))
        times["padded"] = min(times["padded"], step_seconds(depthwise.padded_weight_grad()))
    return [
        markdown_table(
            ("training step", "pytorch backward_s", "padded weight grad_s", "ratio", "layers padded", "max grad diff"),
            [
                [
                    f"{backbone} {img_size} px, {batch} images, {torch.get_num_threads()} thread(s)",
                    f"{times['pytorch']:.3f}",
                    f"{times['padded']:.3f}",
                    f"{times['pytorch'] / times['padded']:.2f}",
                    str(kernels.used),
                    f"{worst:.1e}",
                ]
            ],
        )
    ]


def matmul_label(device: torch.device) -> str:
    size, dtype = _matmul_shape(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    return f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul rate ({size}x{size}, {where})"


def _conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: Any,
    output_mask: list[bool],
    out_shape: Any,
    **kwargs: Any,
) -> int:
    """Convolution backward: the input gradient and the weight gradient each cost one forward convolution.

    torch's own formula counts the weight gradient of a grouped convolution as if it were ungrouped (about 40x
    too many FLOPs for efficientnet_lite0's depthwise convolutions); this one follows the groups.
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_training_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass of ``model`` on ``inputs`` (grouped convolutions counted right)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        model(inputs).float().logsumexp(1).mean().backward()
    return counter.get_total_flops()


def training_flops_per_image(config: TrialConfig, n_classes: int) -> float:
    """Forward + backward FLOPs of one training batch of the fully trainable model, per image."""
    from bench.models.build import TransferModel, build_backbone

    backbone = build_backbone(config.backbone, n_classes, pretrained=False, img_size=config.img_size)
    model = TransferModel(backbone.body, backbone.head).train()
    images = torch.randn(config.batch_size, 3, config.img_size, config.img_size)
    return count_training_flops(model, images) / config.batch_size


def achieved_gflops(measurement: Measurement, flops_per_image: float) -> float:
    seconds = measurement.row.get("train_seconds") or 0.0
    return flops_per_image * measurement.images_seen / seconds / 1e9 if seconds > 0 else 0.0
