"""Label-aware transferability estimates from frozen features or source-head outputs (pure numpy).

They answer "how well will these pretrained features serve *these labels*?" without training anything: ``logme``
(You et al., ICML 2021), ``leep`` (Nguyen et al., ICML 2020), ``nce`` (Tran et al., ICCV 2019) and ``h_score``
(Bao et al., ICIP 2019; with a Ledoit-Wolf shrinkage covariance, as Ibrahim et al. 2022, so it stays stable when D
is near or above N). Each function's docstring gives its formula. Input checks are strict (a ``ValueError`` that
says what is wrong); ``bench.similarity.scores.compute_similarity`` turns such errors into NaN with a reason, so
one odd dataset never crashes a sweep. How the report uses them: (docs/similarity.md, "Label-aware
transferability").
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-5  # the LogME reference implementation's guard against a zero residual or zero weight norm


def encode_labels(labels: np.ndarray, n: int, *, min_classes: int = 2) -> tuple[np.ndarray, int]:
    """Labels as 0..C-1 integer codes (any hashable values in, sorted order), checked against `n` samples."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries but there are {n} samples")
    if n == 0:
        raise ValueError("no samples: need at least one image per class and at least two classes")
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < min_classes:
        raise ValueError(
            f"labels hold {len(classes)} class(es); a transferability score compares classes, so it needs "
            f"at least {min_classes}"
        )
    return codes.astype(np.int64), len(classes)


def check_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    """A finite float64 [N, D] matrix, or a ValueError that says how many entries are NaN or infinite."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [N, D], got shape {x.shape}")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{name} hold {bad} NaN or infinite value(s) (in {x.shape[0]} rows)")
    return x


def logme(features: np.ndarray, labels: np.ndarray, *, tol: float = 1e-6, max_iter: int = 100) -> float:
    """LogME (You et al. 2021): mean over classes of the maximised log evidence per image. Higher is better.

    Model for class c: y_c = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta), y_c the one-hot column.
    alpha and beta are found by the paper's fixed-point (MacKay) updates, run for all classes at once on
    the spectrum of F computed once (see `_spectrum`). The evidence counts all D prior dimensions, including
    those where F has no variance. Invariant to renaming the classes and (at the fixed point, up to the
    paper's 1e-5 guards) to scaling the features; raw features, as in the paper. Typical values: -2 to 2.
    """
    f = check_features(features)
    codes, n_classes = encode_labels(labels, f.shape[0])
    n, d = f.shape
    y = np.zeros((n, n_classes))
    y[np.arange(n), codes] = 1.0

    sigma, x2 = _spectrum(f, y)  # sigma [k, 1]: nonzero eigenvalues of F^T F; x2 [k, C]: (U^T y)^2
    res_x2 = (y**2).sum(0) - x2.sum(0)  # [C]: part of y outside F's column space, fixed residual

    alpha = np.ones(n_classes)
    beta = np.ones(n_classes)
    for _ in range(max_iter):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)  # effective number of well-determined weights
        m2 = (sigma * x2 / (sigma + t) ** 2).sum(0)  # |m|^2, m the posterior mean weights
        res2 = (x2 / (1.0 + sigma / t) ** 2).sum(0) + res_x2  # |F m - y|^2
        alpha = gamma / (m2 + _EPS)
        beta = (n - gamma) / (res2 + _EPS)
        if np.all(np.abs(alpha / beta - t) <= tol * t):
            break
    t = alpha / beta
    m2 = (sigma * x2 / (sigma + t) ** 2).sum(0)
    res2 = (x2 / (1.0 + sigma / t) ** 2).sum(0) + res_x2
    logdet = np.log(alpha + beta * sigma).sum(0) + (d - len(sigma)) * np.log(alpha)  # log|alpha I + beta F^T F|
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * logdet
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * np.log(2 * np.pi)
    )
    return float(np.mean(evidence / n))


def _spectrum(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero eigenvalues of F^T F and the squared projections of y on F's left singular vectors.

    N <= D: a thin SVD of F. N > D (the usual case: many images, a 1280-d feature): the eigendecomposition of
    the D x D Gram matrix, a BLAS-3 product and a small eigh, several times faster than an SVD of F; then
    U^T y = S^-1 V^T F^T y. Directions with a negligible eigenvalue are dropped in both (rank deficiency).
    """
    n, d = f.shape
    if n <= d:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        keep = s**2 > (s[0] ** 2 if len(s) else 0.0) * 1e-12
        return (s[keep] ** 2)[:, None], (u[:, keep].T @ y) ** 2
    eigenvalues, v = np.linalg.eigh(f.T @ f)
    keep = eigenvalues > max(float(eigenvalues[-1]), 0.0) * 1e-12
    sigma = eigenvalues[keep][:, None]
    return sigma, (v[:, keep].T @ (f.T @ y)) ** 2 / sigma


def _check_probs(source_probs: np.ndarray) -> np.ndarray:
    p = check_features(source_probs, "source_probs")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("source_probs must be probabilities (non-negative rows summing to 1): apply softmax")
    return p / p.sum(1, keepdims=True)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al. 2020) from the source head's probabilities [N, Z] and the target labels. <= 0.

    P(y, z) = mean_i theta_z(x_i) [y_i = y];  LEEP = mean_i log sum_z P(y_i | z) theta_z(x_i).
    0 means the source prediction determines the target label; log(1/C) or lower means it tells nothing.
    """
    p = _check_probs(source_probs)
    codes, n_classes = encode_labels(labels, p.shape[0])
    y = np.zeros((p.shape[0], n_classes))
    y[np.arange(p.shape[0]), codes] = 1.0
    joint = y.T @ p / p.shape[0]  # [C, Z]
    marginal = joint.sum(0)  # [Z]
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    likelihood = (p * conditional[codes]).sum(1)
    return float(np.mean(np.log(np.maximum(likelihood, np.finfo(np.float64).tiny))))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE (Tran et al. 2019): -H(Y | Z) from hard source predictions Z and target labels Y. <= 0."""
    z = np.asarray(source_labels)
    codes, _ = encode_labels(labels, len(z))
    if z.ndim != 1:
        raise ValueError(f"source_labels must be one-dimensional, got shape {z.shape}")
    _, z_codes = np.unique(z, return_inverse=True)
    joint = np.zeros((codes.max() + 1, z_codes.max() + 1))
    np.add.at(joint, (codes, z_codes), 1.0)
    joint /= joint.sum()
    conditional = np.divide(joint, joint.sum(0), out=np.zeros_like(joint), where=joint > 0)
    return float(np.sum(joint[joint > 0] * np.log(conditional[joint > 0])))


def h_score(features: np.ndarray, labels: np.ndarray, *, shrinkage: bool = True) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E[f | y])). Higher is better; >= 0.

    With `shrinkage` (default) the regularised H-score of Ibrahim et al. (2022):
    tr(cov_alpha(f)^-1 (1 - alpha) cov(E[f | y])), where cov_alpha is the Ledoit-Wolf estimate shrunk by
    alpha, which keeps the inverse well conditioned for D close to or above N; the between-class covariance is
    shrunk by the same (1 - alpha), so features whose covariance is mostly noise (alpha near 1) score near 0.
    With `shrinkage=False` the plain sample covariance and a pseudo-inverse give Bao et al.'s formula.
    """
    f = check_features(features)
    codes, n_classes = encode_labels(labels, f.shape[0])
    f = f - f.mean(0)
    if shrinkage:
        from sklearn.covariance import LedoitWolf  # deferred: sklearn is slow to import

        # store_precision=False: the precision matrix (a pseudo-inverse by eigendecomposition, costly at large D)
        # is never read; the covariance is the same either way.
        estimate = LedoitWolf(assume_centered=True, store_precision=False).fit(f)
        cov, kept = estimate.covariance_, 1.0 - estimate.shrinkage_
    else:
        cov, kept = f.T @ f / f.shape[0], 1.0
    class_means = np.zeros((n_classes, f.shape[1]))
    np.add.at(class_means, codes, f)
    class_means /= np.bincount(codes, minlength=n_classes)[:, None]
    g = class_means[codes]  # every sample replaced by its class mean
    cov_g = kept * (g.T @ g) / f.shape[0]
    solved = np.linalg.solve(cov, cov_g) if shrinkage else np.linalg.pinv(cov) @ cov_g
    return float(np.trace(solved))
