"""Compiled steps (``train.compile``): a trial's forward passes through ``torch.compile``, or eager.

What is compiled: the training step's forward pass and loss (its backward follows through AOTAutograd) and the
evaluation forward pass, at the phase's batch size only. A batch of any other size (an epoch's short last
batch, the last evaluation batch) runs eager: the same function, and no graph per data size. The optimizer
step stays eager: the schedule changes the learning rate at every step, a Python float that a compiled step
would be specialised on, and on CUDA timm's AdamW already runs multi-tensor (``foreach``) kernels.

Modes (the row's ``compiled``): ``eager``; ``inductor`` (``torch.compile``'s default); ``cudagraphs``
(inductor with CUDA graphs, ``mode="reduce-overhead"``: one graph launch per step). ``resolve`` maps the
suite's ``off | on | auto`` to one: ``on`` is cudagraphs on CUDA and inductor elsewhere, ``auto`` what
measured to pay on the device (``AUTO``; docs/performance.md, "Compiled steps").

Reuse: shapes are static (``dynamic=False``), and dynamo keeps one graph per (model structure, what is frozen,
input shape, train or eval mode) for the process's life; a new model of the same structure passes the guards
(its parameters are inputs of the graph), so the trials of one shape in a worker (Tune reuses actors) run the
graph the first of them compiled. Inductor's FX graph and AOTAutograd caches go to ``<cache_dir>/inductor``,
so another process of the suite loads the generated code instead of generating it again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from bench.config import COMPILE_SETTINGS as SETTINGS

# What ``auto`` runs, per device type. CPU: measured not to pay (docs/performance.md, "Compiled steps");
# CUDA: eager until scripts/gpu_check.py's compiled rows are measured on a card.
AUTO: dict[str, str] = {"cpu": "eager", "cuda": "eager"}
# Graphs dynamo keeps per compiled function: one per (structure, frozen set, shape, mode) a worker meets.
RECOMPILE_LIMIT = 64


def resolve(setting: str, device: torch.device) -> str:
    """The mode a trial runs for the suite's ``train.compile`` on ``device``."""
    if setting not in SETTINGS:
        raise ValueError(f"compile setting {setting!r} is not one of {SETTINGS}")
    if setting == "off":
        return "eager"
    if setting == "auto":
        return AUTO.get(device.type, "eager")
    return "cudagraphs" if device.type == "cuda" else "inductor"


_ours: dict[str, str] = {}  # the folder use_disk_cache last chose


def use_disk_cache(cache_dir: str | None) -> None:
    """Keep inductor's generated code in ``<cache_dir>/inductor`` (unless the user set TORCHINDUCTOR_CACHE_DIR)."""
    # torch writes its default into the environment on first use; anything else is the user's.
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir and current in (None, os.path.abspath(default_cache_dir()), _ours.get("dir")):
        _ours["dir"] = os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(Path(cache_dir) / "inductor")


@dataclass
class CompileStats:
    """What a phase's compiled steps cost and did."""

    mode: str = "eager"
    seconds: float = 0.0  # wall time of the calls that compiled a graph (their own run included)
    compiled_steps: int = 0  # training steps run through a compiled graph (the others ran eager)

    def add(self, other: CompileStats) -> None:
        self.seconds += other.seconds
        self.compiled_steps += other.compiled_steps


_COMPILED: dict[tuple[str, Callable], Callable] = {}  # (mode, function) -> its compiled twin, for the process


def _compiled(mode: str, function: Callable) -> Callable:
    key = (mode, function)
    if key not in _COMPILED:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        options: dict[str, Any] = {"dynamic": False}
        if mode == "cudagraphs":
            options["mode"] = "reduce-overhead"
        _COMPILED[key] = torch.compile(function, **options)
    return _COMPILED[key]


class Stepper:
    """Runs ``function(model, inputs, ...)`` compiled when ``inputs`` has the phase's batch size, else eager."""

    def __init__(self, function: Callable[..., torch.Tensor], mode: str, batch_size: int) -> None:
        self.function, self.mode, self.batch_size = function, mode, batch_size
        self._step = _compiled(mode, function) if mode != "eager" else function

    def compiles(self, inputs: torch.Tensor) -> bool:
        """Whether a batch of ``inputs`` runs through the compiled graph."""
        return self.mode != "eager" and len(inputs) == self.batch_size

    def __call__(self, model: torch.nn.Module, inputs: torch.Tensor, *args: Any) -> tuple[torch.Tensor, bool]:
        """The function's output, and whether this call compiled a graph (the caller times such calls apart:
        a training step's backward graph compiles in its ``backward()``)."""
        if not self.compiles(inputs):
            return self.function(model, inputs, *args), False
        if self.mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer read
        graphs = counters["stats"]["unique_graphs"]
        output = self._step(model, inputs, *args)
        return output, counters["stats"]["unique_graphs"] != graphs


@dataclass
class PhaseSteps:
    """A phase's two forward passes, each a ``Stepper`` of one ``mode``: ``loss`` (training, at the phase's
    batch size) and ``logits`` (evaluation); ``stats`` collects what compiling them cost."""

    loss: Stepper
    logits: Stepper
    stats: CompileStats

    @classmethod
    def build(cls, mode: str, *, loss: Callable, logits: Callable, batch_size: int, eval_batch_size: int) -> PhaseSteps:
        return cls(Stepper(loss, mode, batch_size), Stepper(logits, mode, eval_batch_size), CompileStats(mode))
