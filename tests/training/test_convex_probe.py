"""The convex probe against scikit-learn's LogisticRegression (lbfgs) on the same features and the same C.

Data: scikit-learn's bundled digits (real 8x8 images, pixels scaled to [0, 1]) and Gaussian blobs from a
fixed seed. Reference fits use tol=1e-8 and a large max_iter on both sides, in float64. Tolerances: the
objective J within 1e-6 relative, coefficients within 1e-3 of the largest coefficient, probabilities within
1e-4, and at most one prediction of the test rows different.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bench.training.convex_probe import DEFAULT_GRID, fit_logistic, select_strength

TOL = 1e-8
F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Both solvers on one thread: on a shared CPU, OpenMP and BLAS pools oversubscribed run ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits split into 900 training, 400 validation and 497 test rows (fixed permutation)."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order] / 16.0, y[order]
    return x[:900], y[:900], x[900:1300], y[900:1300], x[1300:], y[1300:]


def _blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five overlapping classes in 20 dimensions (about 80% separable), scaled to about unit size: 600
    training rows and 400 test rows."""
    x, y = make_blobs(n_samples=1000, n_features=20, centers=5, cluster_std=12.0, random_state=0)
    x = x / 10.0
    return x[:600], y[:600], x[600:], y[600:]


def _objective(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, c: float) -> float:
    """J of the module docstring, written independently in numpy."""
    logits = x @ weight.T + bias
    data = np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])
    return float(data + (weight**2).sum() / (2 * c * len(y)))


def _sklearn(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, tol=TOL, max_iter=20_000).fit(x, y)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _val_correct(x: np.ndarray, y: np.ndarray, predict: np.ndarray) -> int:
    return int((predict == y).sum())


@pytest.mark.parametrize("data", ["digits", "blobs"])
@pytest.mark.parametrize("c", [1e-2, 1.0, 100.0])
def test_fit_equals_sklearn(data: str, c: float) -> None:
    if data == "digits":
        x, y, _, _, x_test, y_test = _digits()
    else:
        x, y, x_test, y_test = _blobs()
    k = int(y.max()) + 1
    ref = _sklearn(x, y, c)
    fit = fit_logistic(_t(x), _t(y), k, c, dtype=F64, tol=TOL, max_iter=20_000)
    weight, bias = fit.weight.numpy(), fit.bias.numpy()
    assert fit.converged and fit.grad_max <= TOL
    j_ref = _objective(x, y, ref.coef_, ref.intercept_, c)
    assert _objective(x, y, weight, bias, c) == pytest.approx(fit.objective, rel=1e-12)
    assert fit.objective == pytest.approx(j_ref, rel=1e-6)
    assert np.abs(weight - ref.coef_).max() <= 1e-3 * np.abs(ref.coef_).max()
    # the biases are defined up to a common constant; both solvers keep their sum at zero
    assert (
        np.abs((bias - bias.mean()) - (ref.intercept_ - ref.intercept_.mean())).max()
        <= 1e-3 * np.abs(ref.intercept_).max()
    )
    proba = torch.softmax(fit.logits(_t(x_test)), dim=1).numpy()
    assert np.abs(proba - ref.predict_proba(x_test)).max() <= 1e-4
    assert (proba.argmax(1) != ref.predict(x_test)).sum() <= 1
    ours, theirs = _val_correct(x_test, y_test, proba.argmax(1)), _val_correct(x_test, y_test, ref.predict(x_test))
    assert abs(ours - theirs) <= 1


def test_float32_default_is_close_to_the_float64_optimum() -> None:
    """float32 and the default tol (sklearn's 1e-4): J within 1e-3 of the optimum, predictions as sklearn's."""
    x, y, _, _, x_test, _ = _digits()
    ref = _sklearn(x, y, 1.0)
    fit = fit_logistic(_t(x), _t(y), 10, 1.0)
    assert fit.weight.dtype == torch.float32 and fit.converged
    assert fit.objective == pytest.approx(_objective(x, y, ref.coef_, ref.intercept_, 1.0), rel=1e-3)
    predict = fit.logits(_t(x_test)).argmax(1).numpy()
    assert (predict != ref.predict(x_test)).sum() <= 1


def test_two_classes_equal_sklearns_binary_fit_at_twice_c() -> None:
    x, y = make_blobs(n_samples=300, n_features=10, centers=2, cluster_std=5.0, random_state=1)
    fit = fit_logistic(_t(x), _t(y), 2, 0.5, dtype=F64, tol=TOL, max_iter=20_000)
    ref = _sklearn(x, y, 1.0)  # binary sklearn, one weight vector, at C = 2 * 0.5
    w = fit.weight.numpy()
    assert np.abs((w[1] - w[0]) - ref.coef_[0]).max() <= 1e-4 * np.abs(ref.coef_).max()
    assert float(fit.bias[1] - fit.bias[0]) == pytest.approx(float(ref.intercept_[0]), rel=1e-4, abs=1e-6)


def test_max_iter_stops_early_and_says_so() -> None:
    x, y, *_ = _digits()
    fit = fit_logistic(_t(x), _t(y), 10, 1.0, dtype=F64, tol=TOL, max_iter=2)
    assert fit.n_iter == 2 and not fit.converged and fit.grad_max > TOL


def test_warm_start_from_the_solution_takes_no_iteration() -> None:
    x, y, *_ = _digits()
    fit = fit_logistic(_t(x), _t(y), 10, 1.0, dtype=F64, tol=1e-6)
    again = fit_logistic(_t(x), _t(y), 10, 1.0, dtype=F64, tol=1e-6, init=(fit.weight, fit.bias))
    assert again.n_iter == 0 and again.converged and again.objective == pytest.approx(fit.objective, rel=1e-12)


def test_warm_started_path_costs_fewer_iterations_than_cold_fits() -> None:
    x, y, x_val, y_val, *_ = _digits()
    grid = [10.0**e for e in np.linspace(-2, 2, 9)]
    sel = select_strength(_t(x), _t(y), _t(x_val), _t(y_val), 10, grid, refit=False, dtype=F64, tol=1e-5)
    cold = [fit_logistic(_t(x), _t(y), 10, c, dtype=F64, tol=1e-5).n_iter for c in grid]
    assert [p.n_iter for p in sel.path] != cold
    assert sel.n_iter == sum(p.n_iter for p in sel.path) < sum(cold)
    assert all(p.converged for p in sel.path)


def test_selection_matches_a_brute_force_sklearn_search_and_refits_on_train_and_val() -> None:
    x, y, x_val, y_val, *_ = _digits()
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    refs = [_sklearn(x, y, c) for c in grid]
    ref_correct = [_val_correct(x_val, y_val, r.predict(x_val)) for r in refs]
    sel = select_strength(_t(x), _t(y), _t(x_val), _t(y_val), 10, grid[::-1], dtype=F64, tol=TOL, max_iter=20_000)
    assert [p.c for p in sel.path] == grid  # sorted ascending whatever the given order
    ours = [round(p.val_top1 * len(y_val)) for p in sel.path]
    assert all(abs(a - b) <= 1 for a, b in zip(ours, ref_correct, strict=True))
    assert sel.c == grid[ref_correct.index(max(ref_correct))]
    assert sel.edge == "interior" and sel.refit
    x_all, y_all = np.concatenate([x, x_val]), np.concatenate([y, y_val])
    j_refit = _objective(x_all, y_all, *(a.numpy() for a in (sel.fit.weight, sel.fit.bias)), sel.c)
    ref_all = _sklearn(x_all, y_all, sel.c)
    assert j_refit == pytest.approx(_objective(x_all, y_all, ref_all.coef_, ref_all.intercept_, sel.c), rel=1e-6)
    assert sel.n_iter == sum(p.n_iter for p in sel.path) + sel.fit.n_iter


def test_without_refit_the_fit_is_the_training_fit_at_the_chosen_c() -> None:
    x, y, x_val, y_val, *_ = _digits()
    sel = select_strength(_t(x), _t(y), _t(x_val), _t(y_val), 10, [0.1, 1.0, 10.0], refit=False, dtype=F64, tol=TOL)
    assert not sel.refit
    ref = _sklearn(x, y, sel.c)
    j = _objective(x, y, sel.fit.weight.numpy(), sel.fit.bias.numpy(), sel.c)
    assert j == pytest.approx(_objective(x, y, ref.coef_, ref.intercept_, sel.c), rel=1e-6)


def test_edge_flags_a_grid_that_is_too_narrow() -> None:
    x, y, x_val, y_val, *_ = _digits()
    args = (_t(x), _t(y), _t(x_val), _t(y_val), 10)
    too_strong = select_strength(*args, [1e-5, 10**-4.5, 1e-4], dtype=F64)
    assert too_strong.edge == "upper" and too_strong.c == 1e-4
    assert [p.val_top1 for p in too_strong.path] == sorted(p.val_top1 for p in too_strong.path)
    default = select_strength(*args, DEFAULT_GRID, dtype=F64)
    assert default.edge == "interior"


def test_ties_go_to_the_smallest_c() -> None:
    x, y = make_blobs(n_samples=390, n_features=5, centers=3, cluster_std=0.5, random_state=2)
    x, y, x_val, y_val = x[:300], y[:300], x[300:], y[300:]
    sel = select_strength(_t(x), _t(y), _t(x_val), _t(y_val), 3, [0.1, 1.0, 10.0], dtype=F64)
    assert [p.val_top1 for p in sel.path] == [1.0, 1.0, 1.0]
    assert sel.c == 0.1 and sel.edge == "lower"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: fit_logistic(x, y, 10, 0.0), "C must be"),
        (lambda x, y: fit_logistic(x, y, 5, 1.0), "labels must lie"),
        (lambda x, y: fit_logistic(x, y.double(), 10, 1.0), "integers"),
        (lambda x, y: fit_logistic(x, y[:-1], 10, 1.0), "features must be"),
        (lambda x, y: fit_logistic(x, y, 10, 1.0, init=(x[:5], y[:5])), "init must be"),
        (lambda x, y: select_strength(x, y, x, y, 10, [1.0, 1.0]), "two distinct"),
    ],
)
def test_invalid_input_is_refused(call, message: str) -> None:  # noqa: ANN001
    x, y, *_ = _digits()
    with pytest.raises(ValueError, match=message):
        call(_t(x), _t(y))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_equals_cpu() -> None:
    x, y, *_ = _digits()
    cpu = fit_logistic(_t(x), _t(y), 10, 1.0, dtype=F64, tol=TOL, max_iter=20_000)
    gpu = fit_logistic(_t(x).cuda(), _t(y).cuda(), 10, 1.0, dtype=F64, tol=TOL, max_iter=20_000)
    assert gpu.weight.is_cuda and gpu.converged
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-9)
