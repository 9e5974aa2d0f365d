"""Evaluation with each BatchNorm folded into the convolution before it: the same function, less memory traffic.

``BatchNormFolded(model)`` traces ``model`` once with ``torch.fx`` (timm's leaf modules and functions, so
``BatchNormAct2d`` stays one node) into an eval-only twin that shares every unfolded module with the live model;
``current()`` recomputes the folded weights from the live layers, so one trace serves every validation and test
pass of a training phase. Folded: a ``Conv2d`` whose output goes only to a ``BatchNorm2d`` (or timm's
``BatchNormAct2d``, whose dropout and activation stay as they were) with running statistics. A model that cannot
be traced, or has nothing to fold, is evaluated as it is. Outputs equal the unfolded model's up to float rounding
(about 1e-6 relative); training never sees the twin. Why, and where it is used: (docs/design.md, "BatchNorm
folding for evaluation").
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection

import torch
from timm.layers import BatchNormAct2d
from timm.layers._fx import get_notrace_functions, is_notrace_module
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with timm's leaf modules (and every BatchNorm) kept as single nodes."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            or is_notrace_module(type(module))
            or super().is_leaf_module(module, qualified_name)
        )


class BatchNormFolded:
    """An eval-only twin of ``model`` with BatchNorm folded into the convolutions before it."""

    def __init__(self, model: nn.Module, keep: Collection[str] = ()) -> None:
        """``keep``: names of BatchNorm layers to leave unfolded (so that hooks on them still see their input)."""
        self._pairs: list[tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]] = []  # (folded, live conv, live BN)
        self._twin: nn.Module = model
        try:
            graph = _Tracer().trace(model)
        except Exception as error:  # noqa: BLE001 - any model torch.fx cannot trace is evaluated unfolded
            log.debug("BatchNorm folding off for %s: %s", type(model).__name__, error)
            return
        twin = fx.GraphModule(model, graph)  # shares every submodule the graph calls with `model`
        modules = dict(twin.named_modules())
        for node in list(graph.nodes):
            bn = modules.get(node.target) if node.op == "call_module" else None
            if (
                type(bn) not in (nn.BatchNorm2d, BatchNormAct2d)
                or bn.running_mean is None
                or not node.args
                or node.target in keep
            ):
                continue
            source = node.args[0]
            conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
            if type(conv) is not nn.Conv2d or len(source.users) != 1 or conv.out_channels != bn.num_features:
                continue
            index = len(self._pairs)
            folded = copy.deepcopy(conv).requires_grad_(False)
            folded.bias = nn.Parameter(torch.zeros_like(bn.running_mean), requires_grad=False)
            twin.add_submodule(f"folded_conv_{index}", folded)
            source.target = f"folded_conv_{index}"
            if type(bn) is BatchNormAct2d:  # what is left of it: dropout (a no-op in eval) and the activation
                twin.add_submodule(f"folded_post_{index}", nn.Sequential(bn.drop, bn.act))
                node.target = f"folded_post_{index}"
            else:
                node.replace_all_uses_with(source)
                graph.erase_node(node)
            self._pairs.append((folded, conv, bn))
        if self._pairs:
            graph.lint()
            twin.recompile()
            self._twin = twin

    @property
    def n_folded(self) -> int:
        return len(self._pairs)

    @torch.no_grad()
    def current(self) -> nn.Module:
        """The twin with the live model's current weights and statistics folded in, ready for evaluation."""
        for folded, conv, bn in self._pairs:
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            folded.weight.copy_(weight)
            folded.bias.copy_(bias)
        return self._twin
