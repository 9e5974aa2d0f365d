"""One trial is one plain function call: ``run_trial(config)`` returns its result row and evaluation rows.

Every trial of every suite runs this code, from a test, a benchmark or a Ray Tune worker alike; it knows
nothing of Ray, Parquet or the command line. A trial prepares its dataset (``bench.data``), carves the
canonical validation split and its seeded, nested training subset, builds the backbone with a new head
(``bench.models``), trains each phase in the one loop (``bench.training.loop``) on the cached path where it
is exact (``bench.training.phases``) or, for a linear probe, solves it (``bench.training.convex_probe``),
ending a phase early on a validation plateau where the config says so, and evaluates the final model (or, with
``keep_best``, the best evaluation's weights) on the test split (``bench.training.convergence``). Out of memory
starts it again at half the batch. A non-finite loss ends it with status ``diverged``: a result, not an
exception. Bad input (unknown backbone, missing dataset root, corrupt weights) raises ``bench.errors.UserError``.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.config import TrialConfig
from bench.data import PreparedDataset, prepare_dataset
from bench.errors import UserError
from bench.models import Backbone, Normalize, build_backbone
from bench.models.freeze import FreezePlan
from bench.models.strategies import apply_phase, holds_frozen_features
from bench.plugins import load_plugins
from bench.results.schema import utc_now
from bench.speedups import features
from bench.speedups.fold import BatchNormFolded
from bench.training import precision
from bench.training.batch_size import auto_batch_size
from bench.training.compiled import CompileStats, PhaseSteps, use_disk_cache
from bench.training.compiled import resolve as resolve_compile
from bench.training.convergence import BestWeights, Plateau
from bench.training.convex_probe import DEFAULT_GRID, select_strength
from bench.training.device import out_of_memory, resolve_device
from bench.training.inputs import EVAL_BATCH_SIZE, Split, as_labels, select_indices
from bench.training.loop import FitOutcome, Validation, evaluate, fit, phase_steps
from bench.training.phases import Phase, PhaseSetup, phase_setup, plan_phases
from bench.training.record import TrialRecord
from bench.training.similarity import measure_similarity
from bench.utils import memory
from bench.utils.memory import frozen_feature_bytes

log = logging.getLogger(__name__)


@dataclass
class TrialResult:
    """What ``run_trial`` returns: the trial's row and its evaluation rows."""

    row: dict[str, Any]  # one trials.parquet row
    epochs: list[dict[str, Any]] = field(default_factory=list)  # one epochs.parquet row per evaluation


def run_trial(
    config: TrialConfig,
    *,
    run_id: str = "",
    data: PreparedDataset | None = None,
    on_evaluation: Callable[[list[dict[str, Any]]], None] | None = None,
) -> TrialResult:
    """Run one trial of ``config`` and return its result row and evaluation rows.

    ``run_id``: the run the rows belong to. ``data``: the prepared dataset when the caller has opened it (the
    Ray layer opens its shards on the trial's node); otherwise it is prepared here, once per process.
    ``on_evaluation``: called after each validation evaluation with the evaluation rows so far (the Ray layer
    reports them to Tune's scheduler, which may end the trial there).

    Out of memory (CUDA, or the CPU allocator) starts the trial again at half the batch size, down to 1; the
    row records ``batch_size_used`` and ``oom_halvings``. A non-finite loss is a row with status ``diverged``.
    Raises ``bench.errors.UserError`` for bad input (an unknown backbone or dataset, a missing dataset root,
    unreadable weights, frozen features beyond ``config.memory_share_mb``), out-of-memory errors at batch size
    1, and whatever ``on_evaluation`` raises.
    """
    started_at = utc_now()
    load_plugins(config.plugins)  # in a Ray worker: installed plug-ins and the suite's, before any name is used
    device = resolve_device(config.device)
    memory.reset_peak_rss()
    data = data if data is not None else load_dataset(config)
    if device.type == "cuda":  # packed trials (gpu: 0.25): each held to its share of the card
        torch.cuda.set_per_process_memory_fraction(config.gpu_share, device)
    search = auto_batch_size(config, data, device) if config.fixed_batch_size is None else None
    batch_size, halvings = (search.batch_size if search else int(config.batch_size)), 0
    while True:
        try:
            result = _attempt(
                config,
                data,
                device,
                batch_size=batch_size,
                run_id=run_id,
                started_at=started_at,
                on_evaluation=on_evaluation,
            )
        except Exception as error:
            if not out_of_memory(error) or batch_size == 1:
                raise
            log.warning(
                "trial %s: out of memory at batch size %d; retrying at %d", config.trial_id, batch_size, batch_size // 2
            )
        else:
            result.row.update(
                batch_size_used=batch_size,
                oom_halvings=halvings,
                batch_size_search=search.describe() if search else None,
            )
            return result
        # Out of memory: with the traceback gone, the failed attempt's tensors can be freed; start again at half
        # the batch. hp_batch_size and trial_id stay the suite's; the row records what was used.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        batch_size, halvings = batch_size // 2, halvings + 1


@dataclass
class _Built:
    """A try's model and inputs: the backbone on its device, the training and validation indices, the image
    splits (read batch by batch from the dataset's shards: no split is held whole) and the phases to train."""

    backbone: Backbone
    normalize: Normalize
    train_idx: np.ndarray
    val_idx: np.ndarray
    images: dict[str, Split]
    phases: list[Phase]


@dataclass
class _LastPhase:
    """The last trained phase: its model and inputs, its folded evaluator and its forward passes; the trial's
    copy of its best evaluation's weights (``keep_best``)."""

    setup: PhaseSetup
    evaluator: BatchNormFolded | None
    steps: PhaseSteps
    best: BestWeights | None = None


def _attempt(
    config: TrialConfig,
    data: PreparedDataset,
    device: torch.device,
    *,
    batch_size: int,
    run_id: str,
    started_at: str,
    on_evaluation: Callable[[list[dict[str, Any]]], None] | None,
) -> TrialResult:
    """One try at the trial with mini-batches of ``batch_size``: build, check, measure similarity, train each
    phase, evaluate on the test split, and record."""
    built = _build(config, data, device, batch_size)
    _check_memory_share(config, data, built.backbone.feature_dim, len(built.val_idx))
    record = TrialRecord(
        config,
        run_id=run_id,
        started_at=started_at,
        device=device,
        data=data,
        backbone=built.backbone,
        n_train=len(built.train_idx),
        n_val=len(built.val_idx),
        phases=built.phases,
        compile_mode=resolve_compile(config.compile, device),
    )
    record.scores = measure_similarity(config, data, backbone=built.backbone, device=device)  # before training
    last = _train(config, data, device, built, record, on_evaluation)
    if record.status == "ok":
        record.metrics = _test(last, record.epochs, device)
    return TrialResult(row=record.row(), epochs=record.epoch_rows())


def _build(config: TrialConfig, data: PreparedDataset, device: torch.device, batch_size: int) -> _Built:
    """The trial's splits, its backbone with a new head (seeded by ``config.seed``) on ``device``, and its
    phases at ``batch_size``. Raises UserError for an unknown backbone or unreadable weights."""
    train_idx, val_idx = select_indices(data.y_train, config)
    torch.manual_seed(config.seed)  # the scratch baseline's random init, and anything else drawing from it
    backbone = build_backbone(
        config.backbone,
        data.n_classes,
        pretrained=config.pretrained,
        weights=config.weights,
        head_seed=config.seed,
        img_size=config.img_size,
    )
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    backbone.body.to(device)
    backbone.head.to(device)
    # channels_last: faster convolutions on CUDA and on CPU alike (depthwise convolutions above all).
    backbone.body.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = {
        "train": Split(data.x_train.take(train_idx), as_labels(data.y_train[train_idx])),
        "val": Split(data.x_train.take(val_idx), as_labels(data.y_train[val_idx])),
        "test": Split(data.x_test, as_labels(data.y_test)),
    }
    phases = plan_phases(config, n_train=len(train_idx), batch_size=batch_size)
    return _Built(backbone, normalize, train_idx, val_idx, images, phases)


def _train(
    config: TrialConfig,
    data: PreparedDataset,
    device: torch.device,
    built: _Built,
    record: TrialRecord,
    on_evaluation: Callable[[list[dict[str, Any]]], None] | None,
) -> _LastPhase:
    """Train each phase in the one loop, on the cached path where it is exact, into ``record``; stop at a
    diverged phase. Each phase may end on its own validation plateau (``early_stop_patience``); with
    ``keep_best`` the weights each phase trains are watched for the best evaluation. Returns the last phase
    trained."""
    use_disk_cache(config.cache_dir)
    if config.strategy == "linear_probe" and config.probe_solver == "lbfgs":
        return _solve_probe(config, data, device, built, record, on_evaluation)
    best = BestWeights() if config.keep_best else None
    for phase in built.phases:
        plan, setup = _phase(config, data, device, built, phase)
        # One trace per phase. fp32 evaluation only: under bf16 autocast the folded weights round differently
        # from conv-then-BN, so the "same function up to float rounding" promise would not hold. Not with
        # compiled steps: inductor fuses the BatchNorms itself, and each traced twin is a new class to dynamo
        # (a graph per trial).
        fold = config.fold_batchnorm and not precision.uses_bf16(device) and record.compile_mode == "eager"
        evaluator = BatchNormFolded(setup.model) if fold else None
        steps = phase_steps(config, device, phase.batch_size)
        if best is not None:
            best.watch(setup.model)
        patience, min_delta = config.early_stop_patience, config.early_stop_min_delta
        validation = Validation(
            setup.splits["val"],
            record.epochs,
            every_epochs=config.eval_every,
            every_steps=config.eval_every_steps,
            evaluator=evaluator,
            on_evaluation=on_evaluation,
            plateau=Plateau(patience, min_delta) if patience is not None else None,
            best=best,
        )
        outcome = fit(
            setup.model,
            setup.splits["train"],
            validation,
            prepare=setup.prepare,
            phase=phase,
            config=config,
            device=device,
            steps=steps,
        )
        record.add_phase(phase, plan, setup.frozen_path, outcome, steps.stats, evaluator.n_folded if evaluator else 0)
        if outcome.diverged:
            break
    return _LastPhase(setup, evaluator, steps, best)


def _phase(
    config: TrialConfig, data: PreparedDataset, device: torch.device, built: _Built, phase: Phase
) -> tuple[FreezePlan, PhaseSetup]:
    """``phase``'s freeze plan applied to the body, and its model and inputs (the cached path where exact)."""
    plan = apply_phase(built.backbone.body, phase.freeze)
    indices = (built.train_idx, built.val_idx)
    setup = phase_setup(
        built.backbone, plan, built.images, indices, data, built.normalize, config, device, phase.batch_size
    )
    return plan, setup


def _solve_probe(
    config: TrialConfig,
    data: PreparedDataset,
    device: torch.device,
    built: _Built,
    record: TrialRecord,
    on_evaluation: Callable[[list[dict[str, Any]]], None] | None,
) -> _LastPhase:
    """The linear probe solved, not stepped: multinomial logistic regression on the frozen pooled features, its
    inverse L2 strength C chosen on the validation split along a warm-started path, then (``probe_refit``)
    refit on training and validation rows (``bench.training.convex_probe``), as Kornblith et al. (2019) and CLIP
    fit theirs. The head takes the solution; one evaluation row records the chosen C's validation top-1 (of the
    fit on training rows). Without the feature cache the same features are computed here, once. Raises UserError
    under augmentation (the features would not be fixed)."""
    (phase,) = built.phases
    plan, setup = _phase(config, data, device, built, phase)
    if config.augment != "none":
        raise UserError(
            f"train.probe.solver lbfgs solves the linear probe on fixed frozen features, which augmentation "
            f"({config.augment}) would change at every step: set train.augment: none, or train.probe.solver: sgd"
        )
    if setup.frozen_path != "features":  # not cached (feature_cache off): the same features, computed here
        body, images = built.backbone.body, built.images
        rows = {
            name: features.compute_features(
                body, images[name].inputs, built.normalize, device=device, batch_size=EVAL_BATCH_SIZE
            )
            for name in ("train", "val", "test")
        }
        splits = {name: Split(rows[name], images[name].labels) for name in rows}
        setup = PhaseSetup(built.backbone.head, splits, lambda batch, train: batch, setup.frozen_path)
    train, val = setup.splits["train"], setup.splits["val"]
    started = time.perf_counter()
    selection = select_strength(
        train.inputs.to(device),
        train.labels.to(device),
        val.inputs.to(device),
        val.labels.to(device),
        data.n_classes,
        config.probe_c_grid or DEFAULT_GRID,
        refit=config.probe_refit,
    )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        built.backbone.head.weight.copy_(selection.fit.weight.to(built.backbone.head.weight))
        built.backbone.head.bias.copy_(selection.fit.bias.to(built.backbone.head.bias))
    chosen = next(point for point in selection.path if point.c == selection.c)
    evaluation = {
        "epoch": 1,
        "step": selection.n_iter,
        "phase": phase.name,
        "train_loss": selection.fit.objective,
        "val_top1": 100.0 * chosen.val_top1,
        "val_nll": chosen.val_loss,
        "lr": None,
        "elapsed_seconds": seconds,
    }
    record.epochs.append(evaluation)
    if on_evaluation is not None:
        on_evaluation(record.epochs)
    outcome = FitOutcome(steps=selection.n_iter, seconds=seconds, images_seen=len(train), diverged=False)
    record.add_phase(phase, plan, setup.frozen_path, outcome, CompileStats(record.compile_mode), 0)
    record.probe = selection
    return _LastPhase(setup, None, phase_steps(config, device, phase.batch_size))


def _test(last: _LastPhase, epochs: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """The test metrics of the kept weights, on the inputs the last phase trained on, their validation top-1 and
    ``kept_evaluation`` (1-based). The kept weights are the model as trained, whose validation top-1 is the last
    evaluation row's (fit always validates after its last step), unless ``best`` kept an earlier evaluation's:
    those are put back and their validation top-1 is measured again on them."""
    kept = len(epochs)
    restored = last.best is not None and last.best.evaluation not in (None, kept)
    if restored:
        last.best.restore()
        kept = last.best.evaluation
    model = last.evaluator.current() if last.evaluator else last.setup.model
    setup = last.setup
    metrics: dict[str, Any] = evaluate(model, setup.splits["test"], setup.prepare, device, last.steps)
    if restored:
        metrics["val_top1"] = evaluate(model, setup.splits["val"], setup.prepare, device, last.steps)["top1"]
    else:
        metrics["val_top1"] = epochs[-1]["val_top1"]
    metrics["kept_evaluation"] = kept
    return metrics


def _check_memory_share(config: TrialConfig, data: PreparedDataset, feature_dim: int, n_val: int) -> None:
    """Before anything is computed: one line when the part of the trial that grows with its dataset, the frozen
    features a probe holds in memory (every training, validation and test image's row), exceeds the trial's
    share of its node's memory (``config.memory_share_mb``; images themselves are read shard by shard)."""
    holds = holds_frozen_features(config.strategy, feature_cache=config.feature_cache, augment=config.augment)
    if config.memory_share_mb is None or not holds:
        return
    rows = len(data.y_train) + n_val + len(data.y_test)
    need, share = frozen_feature_bytes(rows, feature_dim), config.memory_share_mb * 2**20
    if need > share:
        raise UserError(
            f"the frozen features of {rows:,} images ({feature_dim} floats each) need {need / 2**30:.1f} GiB, "
            f"more than this trial's share of its node's memory ({share / 2**30:.1f} GiB): run fewer trials per "
            "node (a larger tune.resources_per_trial.cpu) or set train.feature_cache: false"
        )


_DATASETS: dict[tuple, PreparedDataset] = {}


def load_dataset(config: TrialConfig) -> PreparedDataset:
    """The prepared dataset of ``config`` (its dataset, image size, root, cache folder and shard format), decoded
    once per process (and once per cache folder across processes). Raises UserError for an unknown dataset or a
    missing root (``bench.data.prepare_dataset``)."""
    key = (config.dataset, config.img_size, config.dataset_root, config.cache_dir, config.shard_format)
    if key not in _DATASETS:
        _DATASETS[key] = prepare_dataset(
            config.dataset,
            config.img_size,
            root=config.dataset_root,
            download=config.download,
            cache_dir=config.cache_dir,
            shard_format=config.shard_format,
        )
    return _DATASETS[key]
