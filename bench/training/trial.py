"""One trial is one plain function call: ``run_trial(config)`` returns its result row and evaluation rows.

Every trial of every suite runs this code, from a test, a benchmark or a Ray Tune worker alike; it knows
nothing of Ray, Parquet or the command line. A trial prepares its dataset (``bench.data``), carves the
canonical validation split and its seeded, nested training subset, builds the backbone with a new head
(``bench.models``), trains each phase in the one loop (``bench.training.loop``) on the cached path where it
is exact (``bench.training.phases``), and evaluates the final model on the test split. Out of memory starts it
again at half the batch. A non-finite loss ends it with status ``diverged``: a result, not an exception. Bad
input (unknown backbone, missing dataset root, corrupt weights) raises ``bench.errors.UserError``.
"""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from bench.config import TrialConfig
from bench.data import PreparedDataset, prepare_dataset
from bench.errors import UserError
from bench.models import Backbone, Normalize, build_backbone
from bench.models.freeze import FreezePlan
from bench.models.strategies import apply_phase, holds_frozen_features
from bench.plugins import load_plugins
from bench.results.schema import DEFAULT_THRESHOLDS, SCHEMA_VERSION, trial_row, utc_now
from bench.speedups.fold import BatchNormFolded
from bench.training import precision
from bench.training.batch_size import auto_batch_size
from bench.training.compiled import CompileStats, use_disk_cache
from bench.training.compiled import resolve as resolve_compile
from bench.training.device import device_name, out_of_memory, peak_memory_mb, resolve_device
from bench.training.inputs import Split, as_labels, select_indices
from bench.training.loop import evaluate, fit, phase_steps
from bench.training.phases import Phase, phase_setup, plan_phases
from bench.training.similarity import measure_similarity
from bench.utils import memory
from bench.utils.memory import frozen_feature_bytes

log = logging.getLogger(__name__)


@dataclass
class TrialResult:
    row: dict[str, Any]  # one trials.parquet row
    epochs: list[dict[str, Any]] = field(default_factory=list)  # one epochs.parquet row per evaluation


def run_trial(
    config: TrialConfig,
    *,
    run_id: str = "",
    data: PreparedDataset | None = None,
    on_evaluation: Callable[[list[dict[str, Any]]], None] | None = None,
) -> TrialResult:
    """Run one trial and return its result row and evaluation rows.

    ``on_evaluation`` is called after each validation evaluation with the evaluation rows so far (the Ray layer
    reports them to Tune's scheduler, which may end the trial there).

    ``data`` is the prepared dataset when the caller has opened it (the Ray layer opens its shards on the
    trial's node); otherwise it is prepared here, once per process. Out of memory (CUDA, or
    the CPU allocator) starts the trial again at half the batch size, down to 1; the row records
    ``batch_size_used`` and ``oom_halvings``.
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
    """One try at the trial with mini-batches of ``batch_size``."""
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
    _check_memory_share(config, data, backbone.feature_dim, len(val_idx))
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    backbone.body.to(device)
    backbone.head.to(device)
    # channels_last: faster convolutions on CUDA and on CPU alike (depthwise convolutions above all).
    backbone.body.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    images = {  # read batch by batch from the dataset's shards: no split is held whole
        "train": Split(data.x_train.take(train_idx), as_labels(data.y_train[train_idx])),
        "val": Split(data.x_train.take(val_idx), as_labels(data.y_train[val_idx])),
        "test": Split(data.x_test, as_labels(data.y_test)),
    }
    scores = measure_similarity(config, data, backbone=backbone, device=device)
    phases = plan_phases(config, n_train=len(train_idx), batch_size=batch_size)
    epoch_rows: list[dict[str, Any]] = []
    status, error = "ok", None
    train_seconds, images_seen, padded_convs = 0.0, 0, 0
    compile_mode = resolve_compile(config.compile, device)
    use_disk_cache(config.cache_dir)
    phase_stats: list[CompileStats] = []  # each phase's compiling, its evaluations' included
    plan: FreezePlan
    frozen_paths: list[str] = []
    for phase in phases:
        plan = apply_phase(backbone.body, phase.freeze)
        setup = phase_setup(
            backbone, plan, images, (train_idx, val_idx), data, normalize, config, device, phase.batch_size
        )
        frozen_paths.append(setup.frozen_path)
        # One trace per phase. fp32 evaluation only: under bf16 autocast the folded weights round differently
        # from conv-then-BN, so the "same function up to float rounding" promise would not hold. Not with
        # compiled steps: inductor fuses the BatchNorms itself, and each traced twin is a new class to dynamo
        # (a graph per trial).
        fold = config.fold_batchnorm and not precision.uses_bf16(device) and compile_mode == "eager"
        evaluator = BatchNormFolded(setup.model) if fold else None
        steps = phase_steps(config, device, phase.batch_size)
        phase_stats.append(steps.stats)
        outcome = fit(
            setup.model,
            setup.splits["train"],
            setup.splits["val"],
            prepare=setup.prepare,
            phase=phase,
            config=config,
            device=device,
            log=epoch_rows,
            evaluator=evaluator,
            on_evaluation=on_evaluation,
            steps=steps,
        )
        train_seconds += outcome.seconds
        images_seen += outcome.images_seen
        padded_convs = max(padded_convs, outcome.padded_convs)
        if outcome.diverged:
            status, error = "diverged", f"non-finite loss at step {outcome.steps} of phase '{phase.name}'"
            break

    metrics = {}
    if status == "ok":  # `setup` is the last phase's: the model as trained, on the inputs it was trained on
        model = evaluator.current() if evaluator else setup.model
        metrics = evaluate(model, setup.splits["test"], setup.prepare, device, steps)
        # fit() always validates after its last step: the last epoch row is this model on the validation split.
        metrics["val_top1"] = epoch_rows[-1]["val_top1"]
    compiling = CompileStats(compile_mode)
    for stats in phase_stats:
        compiling.add(stats)
    row = _result_row(
        config,
        run_id=run_id,
        status=status,
        error=error,
        backbone=backbone,
        data=data,
        plan=plan,
        n_train=len(train_idx),
        n_val=len(val_idx),
        metrics=metrics,
        epoch_rows=epoch_rows,
        phases=phases,
        train_seconds=train_seconds,
        images_seen=images_seen,
        device=device,
        frozen_paths=[f"{p.name}: {path}" for p, path in zip(phases, frozen_paths, strict=False)]
        if len(phases) > 1
        else frozen_paths,
        started_at=started_at,
        scores=scores,
        eval_folded_bn=evaluator.n_folded if evaluator else 0,  # how the last phase was evaluated
        padded_depthwise_grad=padded_convs,  # convolutions per eager step trained through depthwise
        compiling=compiling,
    )
    for epoch_row in epoch_rows:
        epoch_row.update(schema_version=SCHEMA_VERSION, run_id=run_id, trial_id=config.trial_id)
    return TrialResult(row=row, epochs=epoch_rows)


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


def _data_columns(data: PreparedDataset) -> dict[str, Any]:
    """Where the dataset's shards came from (nothing for a dataset prepared in memory)."""
    shards = data.meta.get("shards")
    if not shards:
        return {}
    return {
        "dataset_shards": sum(len(entries) for entries in shards.values()),
        "dataset_shard_format": data.meta.get("shard_format", "raw"),
        "dataset_decoded_by": data.meta.get("decoded_by_counts"),
    }


_DATASETS: dict[tuple, PreparedDataset] = {}


def load_dataset(config: TrialConfig) -> PreparedDataset:
    """The prepared dataset, decoded once per process (and once per cache folder across processes)."""
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


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _result_row(
    config: TrialConfig,
    *,
    run_id: str,
    status: str,
    error: str | None,
    backbone: Backbone,
    data: PreparedDataset,
    plan: FreezePlan,
    n_train: int,
    n_val: int,
    metrics: dict[str, Any],
    epoch_rows: list[dict[str, Any]],
    phases: list[Phase],
    train_seconds: float,
    images_seen: int,
    device: torch.device,
    frozen_paths: list[str],
    started_at: str,
    scores: dict[str, Any],
    eval_folded_bn: int,
    padded_depthwise_grad: int,
    compiling: CompileStats,
) -> dict[str, Any]:
    head_params = sum(p.numel() for p in backbone.head.parameters())
    val_scores = [r["val_top1"] for r in epoch_rows if r["val_top1"] is not None]
    return trial_row(
        config,
        run_id=run_id,
        status=status,
        error=error,
        started_at=started_at,
        weights=backbone.weights,
        weights_sha256=backbone.weights_sha256,
        dataset_group=data.group,
        dataset_fingerprint=data.fingerprint,
        n_classes=data.n_classes,
        frozen_param_fraction=plan.frozen_param_fraction,
        freeze_groups=f"{plan.n_frozen_groups}/{plan.n_groups}",
        trainable_params=plan.backbone_params - plan.frozen_params + head_params,
        total_params=plan.backbone_params + head_params,
        n_train=n_train,
        n_val=n_val,
        n_test=len(data.y_test),
        images_per_class=n_train / data.n_classes,
        data_regime=DEFAULT_THRESHOLDS.regime(n_train / data.n_classes),
        hp_total_steps=sum(p.steps for p in phases),
        metric_top1=metrics.get("top1"),
        metric_macro_f1=metrics.get("macro_f1"),
        metric_nll=metrics.get("nll"),
        metric_val_top1=metrics.get("val_top1"),
        metric_best_val_top1=max(val_scores) if val_scores else None,
        feature_cache=any(path.endswith(("features", "prefix")) for path in frozen_paths),
        frozen_prefix=", ".join(frozen_paths),
        train_seconds=train_seconds,
        images_per_second=images_seen / train_seconds if train_seconds > 0 else None,
        peak_memory_mb=peak_memory_mb(device),
        device=device_name(device),
        precision=precision.name(device),
        node=socket.gethostname(),
        torch_version=torch.__version__,
        timm_version=_version("timm"),
        ray_version=_version("ray"),
        **scores,
        eval_folded_bn=eval_folded_bn,
        padded_depthwise_grad=padded_depthwise_grad,
        compiled=compiling.mode,
        compile_seconds=compiling.seconds,
        compiled_steps=compiling.compiled_steps,
        **_data_columns(data),
    )
