"""The transfer core, called as a plain function on real data and real ImageNet weights."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bench import training as core
from bench.config import TrialConfig
from bench.errors import UserError
from bench.models import build as backbones
from bench.models.build import build_backbone, bundled_weights_path, load_state_dict
from bench.models.freeze import apply_freeze, set_train_mode
from bench.results.schema import DEFAULT_THRESHOLDS, TRIAL_COLUMNS
from bench.speedups import features

pytestmark = pytest.mark.slow

BASE = TrialConfig(
    backbone="efficientnet_lite0",
    dataset="digits",
    img_size=64,
    epochs=4,
    batch_size=64,
    lr=1e-2,
    freeze="linear_probe",
    probe_solver="sgd",  # these tests train the loop: the stepped probe (the solved one: test_solved_probe.py)
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(2)
    yield


def _trial(**changes) -> core.TrialResult:
    return core.run_trial(dataclasses.replace(BASE, **changes))


@pytest.fixture(scope="module")
def probe_pretrained() -> core.TrialResult:
    return _trial()


def test_row_has_the_contract_columns_and_sane_values(probe_pretrained):
    row = probe_pretrained.row
    for column in TRIAL_COLUMNS:
        assert column in row, column
    assert row["status"] == "ok"
    assert row["n_classes"] == 10
    assert row["frozen_param_fraction"] == 1.0
    assert row["trainable_params"] == 1280 * 10 + 10  # the head alone
    assert row["feature_cache"] is True
    assert row["precision"] == "fp32"  # bf16 autocast on CUDA only
    assert 0 <= row["metric_top1"] <= 100 and row["metric_nll"] > 0
    assert row["weights"].startswith("bundled:") and len(row["weights_sha256"]) == 64
    assert len(probe_pretrained.epochs) == BASE.epochs  # one evaluation per epoch
    assert probe_pretrained.epochs[-1]["step"] == row["hp_total_steps"]


def test_pretrained_probe_beats_scratch_probe_by_a_wide_margin_on_natural_photos():
    # On photo_patches (natural photographs) ImageNet features are far better than random ones. On digits they
    # are not: see the README ("Measured, not assumed") -- a scratch EfficientNet's random features probe digits
    # as well as ImageNet's do, which is the kind of finding this benchmark exists to surface.
    pretrained = _trial(dataset="photo_patches", epochs=10)
    scratch = _trial(dataset="photo_patches", epochs=10, pretrained=False)
    assert pretrained.row["metric_top1"] > scratch.row["metric_top1"] + 12, (
        pretrained.row["metric_top1"],
        scratch.row["metric_top1"],
    )


def test_finetuning_beats_the_linear_probe_on_digits():
    probe = _trial(epochs=30)
    finetune = _trial(freeze="full", lr=1e-3, epochs=3)
    assert finetune.row["metric_top1"] > probe.row["metric_top1"], (
        finetune.row["metric_top1"],
        probe.row["metric_top1"],
    )


def test_linear_probe_agrees_with_logistic_regression_on_the_same_features(probe_pretrained):
    config = dataclasses.replace(BASE, epochs=30)
    result = core.run_trial(config)
    data = core.load_dataset(config)
    train_idx, _ = core.select_indices(data.y_train, config)
    backbone = build_backbone(config.backbone, data.n_classes)
    normalize = core.phases.Normalize(backbone.mean, backbone.std)
    feats = features.compute_features(backbone.body, data.x_train, normalize, device=torch.device("cpu"))
    test_feats = features.compute_features(backbone.body, data.x_test, normalize, device=torch.device("cpu"))
    reference = LogisticRegression(max_iter=2000, C=1.0).fit(feats[train_idx].numpy(), data.y_train[train_idx])
    reference_top1 = 100 * reference.score(test_feats.numpy(), data.y_test)
    assert abs(result.row["metric_top1"] - reference_top1) <= 2.0, (result.row["metric_top1"], reference_top1)


@pytest.mark.parametrize("freeze", ["linear_probe", 0.5])
def test_the_cached_paths_give_the_plain_paths_numbers_bit_for_bit(freeze):
    """Training losses, validation after every epoch and test metrics: equal, not close. One thread, where
    PyTorch sends 1x1 convolutions of fewer than 16 images to another kernel than oneDNN's: 40 training images
    make a short batch of 8 each epoch, 136 validation images a last chunk of 8, and 1346 images a last cache
    batch of 2 (which, before the rows were batched as the plain path batches them, made up to 3 points of
    difference in `bench perf --suite`). Evaluation unfolded on both sides: folding rounds on its own (below)."""
    torch.set_num_threads(1)
    changes = dict(
        freeze=freeze,
        img_size=32,
        epochs=None,
        steps=12,
        batch_size=32,
        data_fraction=0.03,
        lr=1e-2 if freeze == "linear_probe" else 1e-3,
        fold_batchnorm=False,
        similarity=False,
    )
    cached, plain = _trial(**changes), _trial(feature_cache=False, **changes)
    assert cached.row["frozen_prefix"] == ("features" if freeze == "linear_probe" else "prefix")
    assert plain.row["frozen_prefix"] == "plain (feature_cache off)" and plain.row["feature_cache"] is False
    assert cached.row["n_train"] == 40 and cached.row["n_val"] == 136
    assert cached.row["trainable_params"] == plain.row["trainable_params"]
    # both train the late depthwise layers (kernel larger than their 2x2 or 1x1 map at 32 px) through
    # bench.speedups.depthwise
    assert (
        cached.row["padded_depthwise_grad"]
        == plain.row["padded_depthwise_grad"]
        == (0 if freeze == "linear_probe" else 9)
    )
    for column in ("train_loss", "val_top1", "val_nll"):
        assert [e[column] for e in cached.epochs] == [e[column] for e in plain.epochs], column
    for metric in ("metric_top1", "metric_macro_f1", "metric_nll", "metric_val_top1"):
        assert cached.row[metric] == plain.row[metric], metric


def test_the_cached_paths_fall_back_to_the_plain_path_where_they_must():
    flipped = _trial(freeze=0.5, epochs=1, data_fraction=0.2, lr=1e-3, augment="flip")
    assert flipped.row["frozen_prefix"] == "plain (augmentation)"
    lp_ft = _trial(freeze="lp_ft", epochs=2, data_fraction=0.1, lr=1e-3)
    assert lp_ft.row["frozen_prefix"] == "probe: features, finetune: none"


def test_folding_batchnorm_for_evaluation_changes_no_training_and_no_metric():
    changes = dict(freeze="full", epochs=2, data_fraction=0.2, lr=1e-3, similarity=False)
    folded, unfolded = _trial(**changes), _trial(fold_batchnorm=False, **changes)
    # The same training, step for step (evaluation never touches the trained model) ...
    assert [row["train_loss"] for row in folded.epochs] == [row["train_loss"] for row in unfolded.epochs]
    # ... and the same metrics up to float rounding: a prediction can flip only on a tie to ~1e-6.
    for metric, n in (("metric_top1", "n_test"), ("metric_val_top1", "n_val")):
        one_image = 100.0 / folded.row[n]
        assert folded.row[metric] == pytest.approx(unfolded.row[metric], abs=one_image), metric
    assert folded.row["metric_nll"] == pytest.approx(unfolded.row["metric_nll"], rel=1e-4)
    assert folded.row["trial_id"] == unfolded.row["trial_id"]  # how it is evaluated, not what it computes
    assert folded.row["eval_folded_bn"] == 49 and unfolded.row["eval_folded_bn"] == 0  # every BN of lite0


def test_pytorchs_own_depthwise_backward_is_one_switch_away():
    """Full fine-tuning at 32 px trains 11 depthwise layers whose kernel is larger than their map through
    bench.speedups.depthwise; switched off, none. One step: the same forward pass and loss, weights apart by
    rounding."""
    changes = dict(
        freeze="full", img_size=32, epochs=None, steps=1, batch_size=32, data_fraction=0.05, lr=1e-3, similarity=False
    )
    padded, stock = _trial(**changes), _trial(padded_depthwise_grad=False, **changes)
    assert padded.row["padded_depthwise_grad"] == 11 and stock.row["padded_depthwise_grad"] == 0
    assert padded.row["trial_id"] == stock.row["trial_id"]
    assert padded.epochs[0]["train_loss"] == stock.epochs[0]["train_loss"]
    assert padded.row["metric_nll"] == pytest.approx(stock.row["metric_nll"], rel=1e-4)


def test_scratch_bodies_of_different_seeds_never_share_cached_outputs(tmp_path):
    """Regression: a scratch body's cache key was "random" whatever the seed, so seed 1 trained on seed 0's
    cached features (found by `bench perf --suite`: up to 19 points off the plain run)."""
    scratch = dict(pretrained=False, epochs=2, data_fraction=0.2, cache_dir=str(tmp_path), similarity=False)
    for freeze in ("linear_probe", 0.5):
        _trial(freeze=freeze, seed=0, **scratch)  # fills the cache with seed 0's body
        cached = _trial(freeze=freeze, seed=1, **scratch)
        plain = _trial(freeze=freeze, seed=1, feature_cache=False, **scratch)
        assert cached.row["frozen_prefix"] in ("features", "prefix")
        assert cached.row["metric_top1"] == pytest.approx(plain.row["metric_top1"], abs=0.5), freeze
    keys = set()
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        keys.add(core.trial.build_backbone("efficientnet_lite0", 10, pretrained=False).weights_key)
    assert len(keys) == 2  # one per seed; the same seed gives the same key


def test_same_config_and_seed_give_the_same_metrics_twice():
    config = dataclasses.replace(BASE, freeze=0.75, epochs=1, data_fraction=0.2, lr=1e-3)
    first, second = core.run_trial(config), core.run_trial(config)
    for metric in ("metric_top1", "metric_nll", "metric_val_top1", "n_train"):
        assert first.row[metric] == second.row[metric], metric


def test_frozen_parameters_do_not_change_and_frozen_batchnorm_stays_in_eval():
    backbone = build_backbone("efficientnet_lite0", 10)
    plan = apply_freeze(backbone.body, 0.5)
    frozen = {n: p.detach().clone() for n, p in backbone.body.named_parameters() if not p.requires_grad}
    frozen_bn = {
        n: b.clone()
        for n, b in backbone.body.named_buffers()
        if "running" in n and not backbone.body.get_parameter(n.rsplit(".", 1)[0] + ".weight").requires_grad
    }
    assert plan.n_frozen_groups == round(0.5 * plan.n_groups)
    assert sum(p.numel() for p in frozen.values()) == plan.frozen_params
    model = core.phases.TransferModel(backbone.body, backbone.head)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    set_train_mode(model)
    for _ in range(3):
        loss = model(torch.randn(8, 3, 64, 64)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, before in frozen.items():
        assert torch.equal(before, backbone.body.get_parameter(name)), name
    for name, before in frozen_bn.items():
        assert torch.equal(before, backbone.body.get_buffer(name)), name
    trainable = [p for p in backbone.body.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_freeze_fraction_matches_request_in_rows():
    result = _trial(freeze=0.5, epochs=1, data_fraction=0.1, lr=1e-3)
    plan = apply_freeze(build_backbone("efficientnet_lite0", 10).body, 0.5)
    assert result.row["frozen_param_fraction"] == pytest.approx(plan.frozen_param_fraction)
    assert result.row["freeze_groups"] == f"{plan.n_frozen_groups}/{plan.n_groups}"


def test_lp_ft_runs_a_probe_phase_then_a_finetune_phase():
    result = _trial(freeze="lp_ft", epochs=2, data_fraction=0.1, lr=1e-3, probe_lr=1e-2)
    phases = [row["phase"] for row in result.epochs]
    assert phases[0] == "probe" and phases[-1] == "finetune"
    assert result.row["frozen_param_fraction"] == 0.0 and result.row["status"] == "ok"


def test_steps_budget_and_shots():
    steps, shots = 7, 5
    result = _trial(epochs=None, steps=steps, shots=shots, data_fraction=None, batch_size=16)
    assert result.row["n_train"] == shots * result.row["n_classes"] and result.row["hp_total_steps"] == steps
    assert result.epochs[-1]["step"] == steps


def test_evaluations_every_k_steps_change_no_training_and_join_the_identity_only_when_set():
    plain = dict(freeze=0.5, epochs=None, steps=7, data_fraction=0.3, batch_size=16, lr=1e-3)
    every_epoch = _trial(**plain)
    every_3, seen = _trial(**plain, eval_every_steps=3), []
    assert [row["step"] for row in every_3.epochs] == [3, 6, 7]  # every 3 steps and after the last
    assert every_epoch.epochs[-1]["val_top1"] == every_3.epochs[-1]["val_top1"]  # evaluating trains nothing
    assert every_epoch.row["metric_top1"] == every_3.row["metric_top1"]
    config = dataclasses.replace(BASE, **plain, eval_every_steps=3)
    core.run_trial(config, on_evaluation=lambda log: seen.append(len(log)))
    assert seen == [1, 2, 3]
    assert "eval_every_steps" not in dataclasses.replace(BASE).identity()  # earlier runs keep their trial ids
    assert dataclasses.replace(BASE, eval_every_steps=3).trial_id != BASE.trial_id


def test_divergence_is_a_row_not_an_exception():
    result = _trial(freeze="full", lr=1e30, epochs=1, data_fraction=0.1, optimizer="sgd")
    assert result.row["status"] == "diverged"
    assert "non-finite loss" in result.row["error"]
    assert result.row["metric_top1"] is None


def test_epoch_losses_add_up_as_python_floats_and_catch_a_non_finite_loss():
    losses = core.EpochLosses(torch.device("cpu"))
    values = torch.rand(500, generator=torch.Generator().manual_seed(0)) * 10  # float32, as a loss is
    expected = 0.0
    for value in values:  # what fit did before: loss.item() per step into a Python float
        losses.add(value)
        expected += value.item()
        assert losses.last_finite()
    assert losses.mean() == expected / len(values)  # exactly: the same float64 additions in the same order
    for bad in (float("nan"), float("inf"), -float("inf")):
        losses.add(torch.tensor(bad))
        assert not losses.last_finite()
        losses.add(torch.tensor(1.0))
        assert losses.last_finite()


def test_out_of_memory_halves_the_batch_and_is_recorded(monkeypatch):
    """Fault injection: the real body raises CUDA's OutOfMemoryError on any batch over 16 images, as a card
    would that fits 16; the core must halve 64 -> 32 -> 16, finish, and say so in the row."""
    real_build = core.trial.build_backbone

    def build_with_a_small_card(*args, **kwargs):
        backbone = real_build(*args, **kwargs)

        def limit(module, inputs):
            if inputs[0].shape[0] > 16 and torch.is_grad_enabled():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

        backbone.body.register_forward_pre_hook(limit)
        return backbone

    monkeypatch.setattr(core.trial, "build_backbone", build_with_a_small_card)
    result = _trial(freeze="full", epochs=1, data_fraction=0.2, lr=1e-3, batch_size=64)
    row = result.row
    assert row["status"] == "ok" and row["batch_size_used"] == 16 and row["oom_halvings"] == 2
    assert (
        row["hp_batch_size"] == 64
        and row["trial_id"] == dataclasses.replace(BASE, freeze="full", epochs=1, data_fraction=0.2, lr=1e-3).trial_id
    )
    assert row["hp_total_steps"] == math.ceil(row["n_train"] / 16)  # one epoch at the batch that fits


def test_augmentation_is_seeded_and_falls_back_to_the_plain_path():
    tiny = dict(epochs=1, data_fraction=0.1, img_size=32, similarity=False)  # seconds a trial

    def numbers(result: core.TrialResult) -> list[float]:
        metrics = [result.row[m] for m in ("metric_top1", "metric_nll", "metric_val_top1")]
        return metrics + [epoch["train_loss"] for epoch in result.epochs]

    first, again = _trial(augment="flip", **tiny), _trial(augment="flip", **tiny)
    assert first.row["feature_cache"] is False and first.row["status"] == "ok"
    assert first.epochs and numbers(again) == numbers(first)  # the same seed draws the same flips
    assert numbers(_trial(augment="flip", seed=1, **tiny)) != numbers(first)
    unflipped = _trial(augment="none", feature_cache=False, **tiny)  # the same plain path without the flips
    assert unflipped.row["feature_cache"] is False and numbers(unflipped) != numbers(first)


def test_bad_input_raises_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown backbone"):
        _trial(backbone="efficentnet_lite0")
    corrupt = tmp_path / "weights.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch state dict"):
        _trial(weights=str(corrupt))
    with pytest.raises(UserError, match="does not exist"):
        _trial(dataset=f"imagefolder:{tmp_path / 'missing'}")


def test_a_weights_file_rewritten_in_place_is_read_again(tmp_path):
    """The per-process read cache (many trials, one file) must never hand out a file's old contents."""
    path = tmp_path / "weights.pth"
    shutil.copy(bundled_weights_path("efficientnet_lite0"), path)
    assert len(load_state_dict(path)) > 0
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch state dict"):
        load_state_dict(path)


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_body_built_again_from_its_template_is_the_body_a_fresh_build_gives(pretrained):
    """A worker builds each trial's body from a per-process template: the same tensors and the same RNG stream
    afterwards as a real build, and a template that no trial's training can touch."""
    backbones._TEMPLATES.clear()
    torch.manual_seed(7)
    fresh = build_backbone("efficientnet_lite0", 10, pretrained=pretrained, head_seed=7)  # a real build
    after_fresh = torch.rand(8)
    with torch.no_grad():
        for param in fresh.body.parameters():  # "training" the first trial's body
            param.add_(1.0)
    torch.manual_seed(7)
    again = build_backbone("efficientnet_lite0", 10, pretrained=pretrained, head_seed=7)  # from the template
    after_again = torch.rand(8)
    backbones._TEMPLATES.clear()
    torch.manual_seed(7)
    reference = build_backbone("efficientnet_lite0", 10, pretrained=pretrained, head_seed=7)
    expected, got = reference.body.state_dict(), again.body.state_dict()
    assert list(expected) == list(got) and all(torch.equal(expected[k], got[k]) for k in expected)
    assert torch.equal(after_fresh, after_again)  # dropout masks and the like draw the same numbers
    assert again.weights_key == reference.weights_key and torch.equal(again.head.weight, reference.head.weight)
    torch.manual_seed(8)
    other_seed = build_backbone("efficientnet_lite0", 10, pretrained=pretrained, head_seed=8)
    same = all(torch.equal(a, b) for a, b in zip(other_seed.body.state_dict().values(), expected.values()))
    assert same is pretrained  # a scratch body is its seed's; pretrained bodies are the file's


def test_a_rewritten_weights_file_is_never_served_from_an_old_template(tmp_path):
    path = tmp_path / "weights.pth"
    state = load_state_dict(bundled_weights_path("efficientnet_lite0"))
    torch.save(state, path)
    first = build_backbone("efficientnet_lite0", 10, weights=str(path))
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
    second = build_backbone("efficientnet_lite0", 10, weights=str(path))
    assert first.weights_sha256 != second.weights_sha256
    assert not torch.equal(first.body.conv_stem.weight, second.body.conv_stem.weight)
    assert torch.equal(second.body.conv_stem.weight, first.body.conv_stem.weight + 1)


def test_data_regime_thresholds():
    assert [DEFAULT_THRESHOLDS.regime(n) for n in (1, 9.9, 10, 99, 100)] == [
        "scarce",
        "scarce",
        "limited",
        "limited",
        "sufficient",
    ]


def test_subset_of_training_pool_never_touches_val_or_test():
    config = dataclasses.replace(BASE, data_fraction=0.5)
    data = core.load_dataset(config)
    train_idx, val_idx = core.select_indices(data.y_train, config)
    assert not set(train_idx) & set(val_idx)
    counts = np.bincount(data.y_train[train_idx], minlength=10)
    assert counts.min() >= 1


def test_a_cuda_device_always_carries_its_index(monkeypatch):
    # torch.cuda.set_per_process_memory_fraction (packed trials) refuses a bare "cuda": seen on an H200, where
    # every CUDA trial failed before resolve_device added the index. Ray's CUDA_VISIBLE_DEVICES makes the
    # current device the trial's own card.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert core.resolve_device("auto") == torch.device("cuda", 0)
    assert core.resolve_device("cuda") == torch.device("cuda", 0)
    assert core.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert core.resolve_device("cpu") == torch.device("cpu")
