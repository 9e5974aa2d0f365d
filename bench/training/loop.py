"""The training loop and evaluation: one readable loop that every trial of every strategy runs.

``fit`` trains a model for a phase's optimiser steps: timm's AdamW or SGD with no weight decay on biases and
norm weights, linear warm-up then cosine decay per step, shuffled mini-batches whose order is a function of
the seed alone, validation after every ``eval_every`` epochs (or ``eval_every_steps`` steps) and the last.
A validation plateau (``Validation.plateau``) ends the phase early; a non-finite loss ends it too (the trial is
``diverged``). ``evaluate`` gives top-1, macro-F1 and NLL in
fp32 (bf16 autocast on CUDA). The forward passes run eager or compiled (``phase_steps``, ``bench.training.compiled``);
the time spent compiling is kept out of the phase's training seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from bench.config import TrialConfig
from bench.data.shards import ImageRows
from bench.models.freeze import frozen_modules, set_train_mode
from bench.speedups import depthwise
from bench.speedups.fold import BatchNormFolded
from bench.training import compiled, precision
from bench.training.convergence import BestWeights, Plateau
from bench.training.inputs import EVAL_BATCH_SIZE, Split, batch_of
from bench.training.phases import Phase

GPU_RESIDENT_BYTES = 2 * 2**30  # a training split up to this size lives on the card for the whole trial


def _stage(split: Split, device: torch.device) -> Split:
    """On CUDA, the training split goes to the card once when it is small (uint8 images or cached features:
    indexing there beats a host-to-device copy per batch); larger cached features go into pinned host memory,
    larger image splits stay on their shards."""
    if device.type != "cuda":
        return split
    if split.inputs.numel() * split.inputs.element_size() <= GPU_RESIDENT_BYTES:
        return dataclasses.replace(split, inputs=split.inputs.to(device), labels=split.labels.to(device))
    if isinstance(split.inputs, ImageRows):  # images beyond the card's share: read batch by batch
        return split
    return dataclasses.replace(split, inputs=split.inputs.pin_memory(), labels=split.labels.pin_memory())


def training_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    label_smoothing: float = 0.0,
    kernels: depthwise.padded_weight_grad | None = None,
) -> torch.Tensor:
    """The forward pass of a training step (bf16 autocast on CUDA; on a CPU, through ``kernels``, the padded
    weight gradient of ``bench.speedups.depthwise``) and its cross-entropy, in fp32."""
    with precision.autocast(device), kernels or contextlib.nullcontext():
        logits = model(inputs)
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def forward_logits(model: nn.Module, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The evaluation forward pass: logits in fp32 (bf16 autocast on CUDA)."""
    with precision.autocast(device):
        return model(inputs).float()


def phase_steps(config: TrialConfig, device: torch.device, batch_size: int) -> compiled.PhaseSteps:
    """The forward passes of a phase trained at ``batch_size``, compiled as ``config.compile`` says on ``device``."""
    return compiled.PhaseSteps.build(
        compiled.resolve(config.compile, device),
        loss=training_loss,
        logits=forward_logits,
        batch_size=batch_size,
        eval_batch_size=EVAL_BATCH_SIZE,
    )


class EpochLosses:
    """An epoch's training losses, kept on the device: summed in float64 (the same additions, in the same
    order, as Python floats would make) and checked for finiteness through a host copy that waits for the
    step's forward pass only. A ``loss.item()`` per step would make the CPU wait for the whole step on CUDA,
    leaving the card idle while the next step's kernels are launched."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        cuda = device.type == "cuda"
        self._finite = torch.ones((), dtype=torch.bool, pin_memory=cuda)
        self._copied = torch.cuda.Event() if cuda else None

    def add(self, loss: torch.Tensor) -> None:
        """Call right after the forward pass: what it queues on the device comes before the backward pass."""
        loss = loss.detach()
        self.total += loss.double()
        self.count += 1
        self._finite.copy_(torch.isfinite(loss), non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def last_finite(self) -> bool:
        if self._copied is not None:
            self._copied.synchronize()
        return bool(self._finite)

    def mean(self) -> float:
        return self.total.item() / max(1, self.count)


@dataclass
class FitOutcome:
    """What ``fit`` did in a phase: optimiser steps taken, training seconds (compiling and validation left out),
    training images seen, and whether a non-finite loss or a validation plateau ended it."""

    steps: int
    seconds: float
    images_seen: int
    diverged: bool
    # Convolutions per eager step trained through bench.speedups.depthwise's padded weight gradient.
    padded_convs: int = 0
    plateau: bool = False  # ended early on a validation plateau (Validation.plateau)


@dataclass
class Validation:
    """A phase's validation: on which split, how often, on what model, and where each evaluation's row goes.

    ``every_epochs``: evaluate after every that many epochs and the last; ``every_steps`` (when set, instead):
    after every that many optimiser steps and the last. ``evaluator``: the model's folded twin
    (``bench.speedups.fold``), evaluated in its place. Each row is appended to ``log``, and ``log`` is handed to
    ``on_evaluation`` (a scheduler may end the trial there). ``plateau``: early stopping for this phase.
    ``best``: the trial's copy of its best evaluation's weights, offered each evaluation (``log`` spans the
    trial's phases, so its length numbers the evaluation)."""

    split: Split
    log: list[dict[str, Any]]
    every_epochs: int = 1
    every_steps: int | None = None
    evaluator: BatchNormFolded | None = None
    on_evaluation: Callable[[list[dict[str, Any]]], None] | None = None
    plateau: Plateau | None = None
    best: BestWeights | None = None

    def after_step(self, step: int, last_step: int) -> bool:
        """Whether to validate once ``step`` of a phase of ``last_step`` steps is done."""
        return bool(self.every_steps) and (step % self.every_steps == 0 or step >= last_step)

    def after_epoch(self, epoch: int, last_epoch: int) -> bool:
        """Whether to validate at the end of ``epoch`` of ``last_epoch``."""
        return not self.every_steps and (epoch % self.every_epochs == 0 or epoch == last_epoch)

    def scores(
        self, model: nn.Module, prepare: Callable, device: torch.device, steps: compiled.PhaseSteps
    ) -> tuple[float | None, float | None]:
        """Top-1 (%) and NLL of ``model`` (or its folded twin) on the split; None for an empty split."""
        if not len(self.split):
            return None, None
        metrics = evaluate(self.evaluator.current() if self.evaluator else model, self.split, prepare, device, steps)
        return metrics["top1"], metrics["nll"]

    def record(self, row: dict[str, Any]) -> bool:
        """Append an evaluation's ``row`` to ``log``, offer the weights to ``best``, hand ``log`` to
        ``on_evaluation``; whether the phase ends here on a plateau."""
        self.log.append(row)
        if self.best is not None:
            self.best.offer(row["val_top1"], len(self.log))
        if self.on_evaluation is not None:
            self.on_evaluation(self.log)
        return self.plateau is not None and self.plateau.reached(row["val_top1"])


class _Stopwatch:
    """A phase's training seconds: wall time while running, less what ``skip`` takes out (compiling)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = time.perf_counter()

    def resume(self) -> None:
        self._since = time.perf_counter()

    def skip(self, seconds: float) -> None:
        self._since += seconds

    def total(self) -> float:
        return self.seconds + time.perf_counter() - self._since

    def stop(self) -> float:
        self.seconds = self.total()
        return self.seconds


def _optimizer(model: nn.Module, phase: Phase, config: TrialConfig) -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """timm's optimizer factory (no weight decay on biases and norm weights, frozen parameters left out) and a
    per-step schedule: linear warm-up from lr/100 (a stable start for freshly initialised heads), then cosine
    decay to zero over the remaining steps."""
    optimizer = create_optimizer_v2(
        model, opt=config.optimizer, lr=phase.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
    warmup = int(config.warmup_fraction * phase.steps)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, phase.steps - warmup),
        warmup_t=warmup,
        warmup_lr_init=phase.lr * 0.01,
        warmup_prefix=True,
        lr_min=0.0,
        t_in_epochs=False,
    )
    return optimizer, scheduler


def fit(
    model: nn.Module,
    train: Split,
    validation: Validation,
    *,
    prepare: Callable[[torch.Tensor, bool], torch.Tensor],
    phase: Phase,
    config: TrialConfig,
    device: torch.device,
    steps: compiled.PhaseSteps | None = None,
) -> FitOutcome:
    """Train ``model`` for ``phase.steps`` optimiser steps over shuffled mini-batches of ``train`` (turned into
    model inputs by ``prepare``), with ``config``'s optimiser, schedule, seed and label smoothing, validating as
    ``validation`` says. ``steps``: the phase's forward passes (default: eager); the seconds of the steps that
    compiled a graph go to ``steps.stats``, not to the outcome's ``seconds``. Returns the outcome; a validation
    plateau ends the phase with ``plateau`` set, a non-finite loss with ``diverged`` set (no exception)."""
    steps = steps or phase_steps(config, device, phase.batch_size)
    optimizer, scheduler = _optimizer(model, phase, config)
    train = _stage(train, device)
    order = torch.Generator().manual_seed(config.seed)  # data order: a function of the seed alone
    n_epochs = math.ceil(phase.steps / max(1, math.ceil(len(train) / phase.batch_size)))
    frozen = list(frozen_modules(model))  # what is frozen does not change within a phase
    # CPU only: on CUDA the mode would route nothing, and it costs a Python call per op of each forward pass.
    kernels = depthwise.padded_weight_grad() if config.padded_depthwise_grad and device.type == "cpu" else None
    step, seen, clock, plateau = 0, 0, _Stopwatch(), False

    def validate(epoch: int, losses: EpochLosses, elapsed: float) -> bool:
        top1, nll = validation.scores(model, prepare, device, steps)
        set_train_mode(model, frozen)  # evaluation may end mid-epoch (every_steps)
        return validation.record(
            {
                "epoch": epoch,
                "step": step,
                "phase": phase.name,
                "train_loss": losses.mean(),
                "val_top1": top1,
                "val_nll": nll,
                "lr": optimizer.param_groups[0]["lr"],
                "elapsed_seconds": elapsed,
            }
        )

    def padded_per_eager_step(steps_run: int) -> int:
        return kernels.used // max(1, steps_run - steps.stats.compiled_steps) if kernels else 0

    for epoch in range(1, n_epochs + 1):
        set_train_mode(model, frozen)
        clock.resume()
        losses = EpochLosses(device)
        for batch_idx in torch.randperm(len(train), generator=order).split(phase.batch_size):
            short = train.short_batch is not None and len(batch_idx) < phase.batch_size
            rows = train.short_batch(batch_idx) if short else batch_of(train.inputs[batch_idx])
            inputs = prepare(rows.to(device, non_blocking=True), True)
            labels = train.labels[batch_idx].to(device, non_blocking=True)
            step_tic = time.perf_counter()
            graph = steps.loss.compiles(inputs)  # a compiled step gets inductor's backward, not the eager kernels
            loss, compiling = steps.loss(
                model, inputs, labels, device, config.label_smoothing, None if graph else kernels
            )
            losses.add(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps.stats.compiled_steps += graph
            if compiling:  # its forward and backward graphs compiled in this step: compile time, not training time
                spent = time.perf_counter() - step_tic
                steps.stats.seconds += spent
                clock.skip(spent)
            # Checked once the step is queued, so the device has its backward pass to work on meanwhile. A
            # non-finite loss ends the phase at this step; the update made from it is never evaluated (a
            # diverged trial has no metrics).
            if not losses.last_finite():
                return FitOutcome(
                    step, clock.total(), seen, diverged=True, padded_convs=padded_per_eager_step(step + 1)
                )
            step += 1
            scheduler.step_update(step)
            seen += len(batch_idx)
            if validation.after_step(step, phase.steps):
                plateau = validate(epoch, losses, clock.stop())
                clock.resume()  # validation time is not training time
            if step >= phase.steps or plateau:
                break
        clock.stop()
        if validation.after_epoch(epoch, n_epochs):
            plateau = validate(epoch, losses, clock.seconds)
        if plateau:
            break
    padded = padded_per_eager_step(step)
    return FitOutcome(step, clock.seconds, seen, diverged=False, padded_convs=padded, plateau=plateau)


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    prepare: Callable,
    device: torch.device,
    steps: compiled.PhaseSteps | None = None,
) -> torch.Tensor:
    """``model``'s fp32 logits on ``split``, in batches of ``EVAL_BATCH_SIZE`` through ``steps.logits`` (default:
    eager); the seconds of a batch that compiled a graph go to ``steps.stats``."""
    model.eval()
    outputs = []
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        inputs = prepare(batch_of(split.inputs[start : start + EVAL_BATCH_SIZE]).to(device), False)
        tic = time.perf_counter()
        logits, compiling = (
            steps.logits(model, inputs, device) if steps else (forward_logits(model, inputs, device), False)
        )
        outputs.append(logits.cpu())
        if compiling:
            steps.stats.seconds += time.perf_counter() - tic
    return torch.cat(outputs)


def evaluate(
    model: nn.Module, split: Split, prepare: Callable, device: torch.device, steps: compiled.PhaseSteps | None = None
) -> dict[str, float]:
    """Top-1 accuracy (%), macro-F1 (%) and mean negative log-likelihood of ``model`` on ``split``."""
    logits = predict(model, split, prepare, device, steps)
    predicted = logits.argmax(1)
    labels = split.labels
    return {
        "top1": 100.0 * (predicted == labels).float().mean().item(),
        "macro_f1": 100.0 * f1_score(labels.numpy(), predicted.numpy(), average="macro", zero_division=0),
        "nll": F.cross_entropy(logits, labels).item(),
    }
