"""Scores of bench.similarity.scores on small cases with known answers, their known properties, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.similarity.scores import (
    DEFAULT_SIMILARITY_THRESHOLD,
    BatchNormRecorder,
    bhattacharyya_distance,
    bn_divergence,
    coarsest_layers,
    compute_similarity,
    divergence_corrected,
    energy_score,
    h_score,
    leep,
    logme,
    max_softmax_score,
    nce,
    record_statistics,
    similarity_regime,
    source_similarity,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- LogME


def logme_reference(features: np.ndarray, labels: np.ndarray) -> float:
    """The paper's Algorithm 1 written out per class: explicit A = alpha I + beta F^T F and its solve,
    the MacKay updates until alpha/beta stops moving, then the log evidence per sample."""
    f = features.astype(np.float64)
    n, d = f.shape
    eig = np.linalg.eigvalsh(f.T @ f)
    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(1000):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ y)
            gamma = np.sum(beta * eig / (alpha + beta * eig))
            new_alpha = gamma / (m @ m + 1e-5)
            new_beta = (n - gamma) / (np.sum((f @ m - y) ** 2) + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) <= 1e-12 * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        evidence = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2)
            - alpha / 2 * m @ m
            - 0.5 * np.linalg.slogdet(a)[1]
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n,d,classes", [(30, 5, 3), (12, 20, 2), (40, 40, 4)])
def test_logme_matches_the_papers_algorithm(n: int, d: int, classes: int) -> None:
    rng = np.random.default_rng(n + d)
    features = rng.normal(size=(n, d))
    labels = np.arange(n) % classes
    features[:, 0] += 2.0 * labels
    assert logme(features, labels, tol=1e-12, max_iter=1000) == pytest.approx(
        logme_reference(features, labels), abs=1e-8
    )


def test_logme_matches_the_papers_algorithm_on_rank_deficient_features() -> None:
    features = np.zeros((50, 8))
    features[:, :3] = np.random.default_rng(0).normal(size=(50, 3))  # five dead feature dimensions
    labels = np.arange(50) % 2
    assert logme(features, labels, tol=1e-12, max_iter=1000) == pytest.approx(
        logme_reference(features, labels), abs=1e-10
    )


def _clustered(n: int = 200, d: int = 16, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(scale=3.0, size=(classes, d))
    return centres[labels] + rng.normal(size=(n, d)), labels


def test_logme_invariant_to_renaming_classes() -> None:
    features, labels = _clustered()
    renamed = np.array(["c", "a", "d", "b"])[labels]  # any label values, any order
    assert logme(features, renamed) == pytest.approx(logme(features, labels), abs=1e-12)


def test_logme_invariant_to_feature_scale() -> None:
    # exact at the fixed point (alpha scales by c^-2); the paper's 1e-5 guard on |m|^2 and the residual
    # breaks it slightly only once the weights get tiny (features scaled up ~10x and more)
    features, labels = _clustered()
    for scale in (0.1, 0.5, 2.0):
        assert logme(scale * features, labels) == pytest.approx(logme(features, labels), abs=1e-5)


def test_logme_higher_for_separable_labels_and_falls_with_label_noise() -> None:
    features, labels = _clustered()
    rng = np.random.default_rng(1)
    values = []
    for noise in (0.0, 0.25, 0.5, 1.0):
        noisy = labels.copy()
        flip = rng.random(len(labels)) < noise
        noisy[flip] = rng.integers(0, 4, flip.sum())
        values.append(logme(features, noisy))
    assert values == sorted(values, reverse=True)
    assert values[0] - values[-1] > 0.1


# ---------------------------------------------------------------------------------------------- LEEP


def test_leep_hand_computed_two_by_two() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.array([0, 1])
    # P(y, z) = [[.45, .05], [.10, .40]]; P(z) = [.55, .45]; P(y=0|z) = [9/11, 1/9], P(y=1|z) = [2/11, 8/9]
    first = 0.9 * 9 / 11 + 0.1 * 1 / 9
    second = 0.2 * 2 / 11 + 0.8 * 8 / 9
    assert leep(probs, labels) == pytest.approx((math.log(first) + math.log(second)) / 2, abs=1e-12)


def test_leep_is_zero_for_a_perfectly_predictive_source_and_negative_otherwise() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    source_class = np.array([5, 3, 7, 5, 3, 7])  # each source class maps to one target class
    assert leep(np.eye(10)[source_class], labels) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=50)
    assert leep(probs, rng.integers(0, 3, 50)) < 0


def test_leep_of_an_uninformative_source_is_minus_label_entropy() -> None:
    labels = np.array([0, 0, 0, 1])
    probs = np.tile([0.5, 0.3, 0.2], (4, 1))
    expected = 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
    assert leep(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_leep_refuses_logits() -> None:
    with pytest.raises(ValueError, match="softmax"):
        leep(np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]))


# ----------------------------------------------------------------------------------------- NCE, H-score


def test_nce_hand_computed() -> None:
    z = np.array([0, 0, 1, 1])
    y = np.array([0, 1, 1, 1])  # given z=0: y split 50/50; given z=1: always 1
    assert nce(z, y) == pytest.approx(0.5 * math.log(0.5), abs=1e-12)
    assert nce(np.array([4, 4, 9, 9]), np.array([1, 1, 0, 0])) == pytest.approx(0.0, abs=1e-12)


def test_h_score_hand_computed_without_shrinkage() -> None:
    features = np.array([[0.0], [1.0], [2.0], [3.0]])
    labels = np.array([0, 0, 1, 1])
    # centred [-1.5, -.5, .5, 1.5]: var 1.25; class means -1, +1: var 1 -> H = 1 / 1.25
    assert h_score(features, labels, shrinkage=False) == pytest.approx(0.8, abs=1e-12)


def _regularised_h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Ibrahim et al. (2022), written out: the Ledoit-Wolf target mu*I and weight alpha from their closed form
    (sklearn's ledoit_wolf_shrinkage), then tr(((1 - a) S + a mu I)^-1 (1 - a) cov(E[f | y]))."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    f = features - features.mean(0)
    n, d = f.shape
    sample = f.T @ f / n
    alpha = ledoit_wolf_shrinkage(f, assume_centered=True)
    shrunk = (1 - alpha) * sample + alpha * np.trace(sample) / d * np.eye(d)
    means = np.stack([f[labels == c].mean(0) for c in np.unique(labels)])
    g = means[np.searchsorted(np.unique(labels), labels)]
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - alpha) * g.T @ g / n)))


@pytest.mark.parametrize(
    ("n", "d", "classes", "separation"),
    [(200, 16, 4, 2.0), (60, 64, 5, 1.0), (40, 128, 10, 0.0), (10, 32, 10, 0.5)],
)
def test_h_score_is_the_regularised_h_score_of_ibrahim_et_al(n: int, d: int, classes: int, separation: float) -> None:
    rng = np.random.default_rng(n + d)
    labels = np.arange(n) % classes
    features = rng.normal(size=(n, d)) + separation * rng.normal(size=(classes, d))[labels]
    assert h_score(features, labels) == pytest.approx(_regularised_h_score(features, labels), rel=1e-9)
    # the unregularised between-class term would be larger by 1 / (1 - alpha): the test tells them apart


def test_h_score_higher_for_separable_labels() -> None:
    features, labels = _clustered(d=32)
    shuffled = np.random.default_rng(0).permutation(labels)
    assert h_score(features, labels) > 2 * h_score(features, shuffled)


# ----------------------------------------------------------------------------------- the obvious scores


def test_max_softmax_and_energy_known_values() -> None:
    flat = np.zeros((3, 4))
    assert max_softmax_score(flat) == pytest.approx(0.25)
    assert energy_score(flat) == pytest.approx(math.log(4))
    peaked = np.array([[100.0, 0.0, 0.0, 0.0]])
    assert max_softmax_score(peaked) == pytest.approx(1.0)
    assert energy_score(peaked, T=2.0) == pytest.approx(100.0, abs=1e-6)


# ------------------------------------------------------------------------------------ BatchNorm scores


def test_bhattacharyya_distance_known_values() -> None:
    assert bhattacharyya_distance(1.0, 2.0, 1.0, 2.0, eps=0.0) == pytest.approx(0.0)
    # equal variances v, means d apart: d^2 / (8 v)
    assert bhattacharyya_distance(0.0, 2.0, 3.0, 2.0, eps=0.0) == pytest.approx(9 / 16)
    # equal means, variances 1 and 4: 1/2 log(5 / (2 * 2))
    assert bhattacharyya_distance(0.0, 1.0, 0.0, 4.0, eps=0.0) == pytest.approx(0.5 * math.log(5 / 4))
    assert np.isfinite(bhattacharyya_distance(0.0, 1.0, 0.0, 0.0))  # a dead channel stays finite


def _toy_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _source_images(n: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    """'Source domain': smooth random fields; `shift` moves them away (brighter, less contrast)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(n, 3, 20, 20, generator=g), 5, stride=1)  # 16x16
    return x * (1.0 - 0.4 * min(shift, 2.0) / 2.0) + shift


def _trained_toy_net() -> nn.Module:
    """BN running statistics recorded from the source domain (cumulative average over many batches)."""
    model = _toy_net()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for seed in range(40):
            model(_source_images(64, seed=100 + seed))
    return model.eval()


def test_recorder_moments_equal_numpy_over_batches_and_groups() -> None:
    model = _toy_net().eval()
    images = torch.randn(10, 3, 12, 12)
    captured = []
    handle = model[1].register_forward_hook(lambda m, i, o: captured.append(i[0].detach().numpy()))
    with BatchNormRecorder(model, groups=2) as recorder, torch.no_grad():
        recorder.group = 0
        model(images[:3])
        recorder.group = 1
        model(images[3:])
    handle.remove()
    values = np.concatenate(captured).astype(np.float64)
    first = recorder.statistics()[0]
    assert first.count == 10 * 12 * 12
    # A batch's moments are taken in float32, batches merged in float64: float32 rounding, no more.
    np.testing.assert_allclose(first.mean, values.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(first.var, values.var(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(
        recorder.statistics(group=0)[0].mean, values[:3].mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-7
    )
    assert [s.spatial for s in recorder.statistics()] == [(12, 12), (6, 6)]


def test_recording_only_the_coarsest_layers_keeps_exactly_their_moments() -> None:
    model = _toy_net().eval()
    images = torch.randn(10, 3, 12, 12)
    assert coarsest_layers(model, 12) == ["4"]  # the second BatchNorm, after the stride-2 conv
    model.train()
    running = [b.clone() for b in model.buffers()]
    assert coarsest_layers(model, 12) == ["4"] and model.training  # probed in eval mode, mode given back
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers()))  # running statistics untouched
    model.eval()
    recorders = {}
    for only in (None, coarsest_layers(model, 12)):
        with BatchNormRecorder(model, groups=2, only=only) as recorder, torch.no_grad():
            for group, part in enumerate((images[:3], images[3:7], images[7:])):
                recorder.group = group % 2
                model(part)
        recorders[only is None] = recorder
    full, coarse = recorders[True].statistics(), recorders[False].statistics()
    assert [s.spatial for s in coarse] == [(6, 6)] and coarse[0].name == full[1].name == "4"
    assert coarse[0].count == full[1].count == 10 * 6 * 6
    np.testing.assert_array_equal(coarse[0].mean, full[1].mean)
    np.testing.assert_array_equal(coarse[0].var, full[1].var)
    for group in (0, 1):
        np.testing.assert_array_equal(
            recorders[False].statistics(group=group)[0].var, recorders[True].statistics(group=group)[1].var
        )


def test_folding_the_unrecorded_layers_changes_the_recorded_moments_by_rounding_only() -> None:
    from bench.speedups.fold import BatchNormFolded

    model = _trained_toy_net()
    images = _source_images(64, shift=0.5, seed=1)
    coarsest = record_statistics(model, images, resolution=16, coarsest_only=True)
    every = record_statistics(model, images, resolution=16)
    assert BatchNormFolded(model, keep=coarsest_layers(model, 16)).n_folded == 1  # the first BN, folded
    assert [s.name for s in coarsest.layers] == [s.name for s in every.layers][-1:]
    np.testing.assert_allclose(coarsest.layers[0].mean, every.layers[-1].mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(coarsest.layers[0].var, every.layers[-1].var, rtol=1e-5)


def test_bn_divergence_near_zero_on_the_source_and_growing_with_shift() -> None:
    model = _trained_toy_net()
    divergences = [
        bn_divergence(model, _source_images(256, shift=shift, seed=7), resolution=16)
        for shift in (0.0, 0.25, 0.5, 1.0, 2.0)
    ]
    assert divergences[0] < 0.01
    assert divergences == sorted(divergences)
    assert divergences[-1] > 20 * max(divergences[0], 1e-4)
    # the coarsest layer alone and all layers agree on the order
    assert bn_divergence(model, _source_images(256, 0.0), resolution=16, layers="all") < bn_divergence(
        model, _source_images(256, 1.0), resolution=16, layers="all"
    )


def test_bias_correction_brings_few_images_closer_to_many() -> None:
    model = _trained_toy_net()
    target = bn_divergence(model, _source_images(1024, shift=0.5, seed=3), resolution=16)
    raw_errors, corrected_errors = [], []
    for seed in range(6):
        recorded = record_statistics(model, _source_images(12, shift=0.5, seed=seed), resolution=16)
        corrected_errors.append(divergence_corrected(recorded)[0] - target)
        raw_errors.append(
            bn_divergence(model, _source_images(12, shift=0.5, seed=seed), resolution=16, bias_correction=False)
            - target
        )
    assert np.mean(raw_errors) > 0  # few images read too far from the source ...
    assert abs(np.mean(corrected_errors)) < np.mean(raw_errors)  # ... and the jackknife removes most of it


def test_source_similarity_restores_the_mode_and_accepts_uint8_arrays() -> None:
    model = _trained_toy_net().train()
    pixels = (torch.sigmoid(_source_images(64)) * 255).to(torch.uint8).numpy()
    scores = source_similarity(model, pixels, resolution=16, reference=None)
    assert model.training
    assert 0.0 < scores.similarity_score <= 1.0
    assert scores.similarity_score == pytest.approx(math.exp(-scores.bn_divergence))
    assert (scores.method, scores.n_images, scores.n_layers, scores.resolution) == ("bn_statistics", 64, 1, 16)


def test_source_similarity_without_statistics_and_without_reference_is_nan() -> None:
    scores = source_similarity(_toy_net(), np.zeros((4, 3, 16, 16), np.uint8), reference=None)
    assert math.isnan(scores.similarity_score) and scores.method == "unavailable" and scores.note
    with pytest.raises(ValueError, match="no trained BatchNorm"):
        bn_divergence(_toy_net(), np.zeros((4, 3, 16, 16), np.uint8))


def test_empty_image_set_gives_nan_with_a_note() -> None:
    scores = source_similarity(_trained_toy_net(), np.zeros((0, 3, 16, 16), np.uint8), resolution=16)
    assert math.isnan(scores.similarity_score) and scores.note == "no images to measure"


# ------------------------------------------------------------------------------------------- the regime


def test_similarity_regime_threshold() -> None:
    t = DEFAULT_SIMILARITY_THRESHOLD
    assert similarity_regime(t) == "high"
    assert similarity_regime(t - 1e-6) == "low"
    assert similarity_regime(0.5, threshold=0.4) == "high"
    assert similarity_regime(0.5, threshold=0.6) == "low"
    with pytest.raises(ValueError, match="threshold"):
        similarity_regime(0.5, threshold=1.5)
    with pytest.raises(ValueError, match="regime"):
        similarity_regime(float("nan"))


# ------------------------------------------------------------------------------------ compute_similarity


def test_compute_similarity_all_scores_from_arrays() -> None:
    features, labels = _clustered(n=64)
    logits = np.random.default_rng(0).normal(size=(64, 10))
    model = _trained_toy_net()
    pixels = (torch.sigmoid(_source_images(64)) * 255).to(torch.uint8).numpy()
    from bench.similarity.scores import source_similarity as measure

    out = compute_similarity(features, labels, source_logits=logits, source=measure(model, pixels, resolution=16))
    assert out["similarity_regime"] in ("high", "low")
    assert out["transferability"] == out["logme"]
    for key in ("similarity_score", "logme", "leep", "nce", "h_score", "max_softmax", "energy"):
        assert math.isfinite(out[key]), key
    assert out["notes"] == {}


def test_compute_similarity_one_class_gives_nan_with_reasons() -> None:
    features = np.random.default_rng(0).normal(size=(20, 8))
    out = compute_similarity(features, np.zeros(20, int), source_logits=np.zeros((20, 5)))
    for key in ("logme", "h_score", "leep", "nce"):
        assert math.isnan(out[key]) and "class" in out["notes"][key]
    assert out["max_softmax"] == pytest.approx(0.2)  # label-free scores are still computed
    assert out["similarity_regime"] is None and "similarity_score" in out["notes"]


def test_compute_similarity_nan_features_and_logits_give_nan_with_reasons() -> None:
    features, labels = _clustered(n=40)
    features[3, 2] = np.nan
    logits = np.zeros((40, 5))
    logits[0, 0] = np.inf
    out = compute_similarity(features, labels, source_logits=logits)
    assert math.isnan(out["logme"]) and "NaN" in out["notes"]["logme"]
    assert math.isnan(out["leep"]) and "NaN" in out["notes"]["leep"]


def test_a_class_with_one_image_is_scored() -> None:
    features, labels = _clustered(n=41)
    labels[-1] = 9  # a class of its own, one image
    probs = np.random.default_rng(0).dirichlet(np.ones(6), size=41)
    assert math.isfinite(logme(features, labels))
    assert math.isfinite(h_score(features, labels))
    assert leep(probs, labels) <= 0


# ------------------------------------------------------------------------------ real pretrained backbones


def _photos(size: int, n: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.5, 0.9))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(crop).transpose(2, 0, 1))
    return np.stack(out)


def _digits(size: int, n: int) -> np.ndarray:
    import sklearn.datasets
    from PIL import Image

    images = sklearn.datasets.load_digits().images[:n]
    return np.stack(
        [
            np.asarray(
                Image.fromarray((im * 16).clip(0, 255).astype(np.uint8))
                .convert("RGB")
                .resize((size, size), Image.BICUBIC)
            ).transpose(2, 0, 1)
            for im in images
        ]
    )


@pytest.mark.slow
def test_efficientnet_lite0_ranks_photos_high_and_digits_low() -> None:
    from bench.models.build import build_backbone

    backbone = build_backbone("efficientnet_lite0", num_classes=2)
    photos = source_similarity(backbone.body, _photos(64, 24), mean=backbone.mean, std=backbone.std)
    digits = source_similarity(backbone.body, _digits(64, 24), mean=backbone.mean, std=backbone.std)
    assert (photos.similarity_regime, digits.similarity_regime) == ("high", "low")
    assert photos.resolution == 224 and photos.method == "bn_statistics"


@pytest.mark.slow
def test_a_model_without_batchnorm_is_measured_through_the_reference_network() -> None:
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 30, 30]))
    scores = source_similarity(no_bn, _digits(32, 16))
    assert scores.method == "bn_reference:efficientnet_lite0"
    assert scores.similarity_regime == "low"
