"""The convex linear probe: multinomial logistic regression on cached features, solved to convergence by L-BFGS.

For ``n`` rows ``x_i`` (``d`` features) with labels ``y_i`` in ``0..K-1``, weights ``W`` (``K x d``) and
biases ``b`` (``K``), ``fit_logistic`` minimises

    J(W, b) = (1/n) sum_i [ log sum_k exp(w_k . x_i + b_k) - (w_{y_i} . x_i + b_{y_i}) ] + ||W||_F^2 / (2 C n)

with ``C > 0`` the inverse regularisation strength exactly as scikit-learn's ``LogisticRegression(C=C,
solver="lbfgs")`` means it: sklearn minimises ``C * sum_i loss_i + ||W||_F^2 / 2``, which is ``C n J``, and its
L-BFGS runs on ``J`` itself (``sklearn.linear_model._logistic``, ``_linear_loss.LinearModelLoss``), so the
minimiser is the same and ``tol`` means the same: the fit has converged when ``max |dJ/dtheta| <= tol`` over
every weight and bias (scipy's ``gtol``). In float32, rounding in the logits ends progress at a largest gradient
entry of about 1e-5 to 1e-4 on pooled features (8e-5 measured on efficientnet_lite0 features of cifar10): a
fit asked for less stops where its line search can make no more progress and reports ``converged`` False. The
biases are not penalised; ``J`` does not change when a constant is added to every bias, so a fit started from
zero (or from a fit that was) keeps ``sum_k b_k = 0`` up to rounding, as sklearn's does. Larger ``C``: weaker
regularisation. Features are used as given (no standardisation), as sklearn and
Kornblith et al. (2019) use them. With ``K = 2`` the objective stays the two-column multinomial one, whose
solution is sklearn's binary fit at ``2 C`` (``w = w_1 - w_0``, ``b = b_1 - b_0``).

``select_strength`` fits a grid of ``C`` values from the smallest (strongest regularisation) to the largest,
each fit warm-started from the previous solution, picks the ``C`` with the best validation top-1 and, by
default, refits at that ``C`` on training and validation rows together (Kornblith et al. 2019; CLIP, Radford et
al. 2021). Everything runs in plain PyTorch on the features' device, in float32 unless told otherwise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

SOLVER = "lbfgs"  # what a result row records as the probe's solver
# Half-decade steps from 1e-4 to 1e4. The penalty of J per row is 1/(C n): on a few hundred to a few thousand
# rows, C = 1e-4 is so strong that the probe barely leaves the class prior and C = 1e4 is as good as none, so
# the optimum of a probe on pooled features lies inside; validation top-1 moves little within half a decade.
# Kornblith et al. (2019) and CLIP sweep tens of values over ten or more decades; warm starts make 17 values
# cost a few cold fits, and ``ProbeSelection.edge`` says when the best value lies on the grid's edge. Where
# |W| / (C n) < tol the penalty moves the gradient by less than tol: such C cost no iteration and repeat the
# previous fit (at tol 1e-4 on 2,700 rows of pooled features, C >= 10 or so).
DEFAULT_GRID: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-8, 9))


@dataclass(frozen=True)
class ProbeFit:
    """One solved probe: ``logits = x @ weight.T + bias``.

    ``objective`` is ``J`` at the solution, ``grad_max`` the largest absolute entry of its gradient there,
    ``converged`` whether ``grad_max <= tol``; ``n_iter`` counts L-BFGS iterations (0 when the start already
    met ``tol``), ``n_evals`` objective and gradient evaluations.
    """

    weight: torch.Tensor  # [K, d]
    bias: torch.Tensor  # [K]
    c: float
    objective: float
    grad_max: float
    n_iter: int
    n_evals: int
    converged: bool

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``[n, K]`` for features ``x`` ``[n, d]``, in the fit's dtype and on its device."""
        return x.to(self.weight) @ self.weight.T + self.bias


@dataclass(frozen=True)
class PathPoint:
    """One ``C`` of a selection's path: validation top-1 and mean log-loss of the fit on training rows."""

    c: float
    val_top1: float
    val_loss: float
    n_iter: int
    converged: bool


@dataclass(frozen=True)
class ProbeSelection:
    """A strength chosen on validation. ``fit`` is the refit on training and validation rows when ``refit``,
    else the training fit at ``c``. ``edge``: where ``c`` lies on the grid. ``n_iter`` totals the path's and
    the refit's iterations; ``seconds`` is the wall time of the whole selection."""

    c: float
    edge: Literal["lower", "upper", "interior"]
    fit: ProbeFit
    path: tuple[PathPoint, ...]
    refit: bool
    n_iter: int
    seconds: float
    solver: str = SOLVER


def _check(x: torch.Tensor, y: torch.Tensor, n_classes: int, name: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: features must be [n, d] and labels [n] with n > 0, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    if n_classes < 2:
        raise ValueError(f"a probe needs at least 2 classes, got n_classes={n_classes}")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"{name}: labels must lie in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}")


def _objective(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``J`` and its gradients in ``weight`` and ``bias`` (the formula of the module docstring)."""
    n = x.shape[0]
    log_p = torch.log_softmax(x @ weight.T + bias, dim=1)
    rows = torch.arange(n, device=x.device)
    penalty = 1.0 / (c * n)
    # summed in float64: a float32 sum of n per-row losses cannot resolve the small decreases near the optimum
    loss = -log_p[rows, y].double().mean() + 0.5 * penalty * weight.double().square().sum()
    residual = log_p.exp_()
    residual[rows, y] -= 1.0
    residual /= n
    return loss, residual.T @ x + penalty * weight, residual.sum(0)


def objective(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, c: float) -> float:
    """``J`` (module docstring) of ``(weight [K, d], bias [K])`` on features ``x`` ``[n, d]`` and integer labels
    ``y`` ``[n]`` at ``C = c``, evaluated in float64 on ``x``'s device."""
    x = x.double()
    return float(_objective(x, y.to(x.device).long(), weight.to(x), bias.to(x), c)[0])


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    c: float,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    dtype: torch.dtype = torch.float32,
    history_size: int = 10,
) -> ProbeFit:
    """Minimise ``J`` (module docstring) by full-batch L-BFGS with a strong-Wolfe line search.

    Args:
        x: features ``[n, d]``; the fit runs on their device, in ``dtype``.
        y: integer labels ``[n]`` in ``0..n_classes-1`` (a class with no row gets a vanishing probability).
        n_classes: ``K``, the number of columns of the probe.
        c: sklearn's ``C``, the inverse L2 strength (> 0).
        init: ``(weight [K, d], bias [K])`` to start from (a warm start); zeros when None.
        max_iter: most L-BFGS iterations.
        tol: convergence when the largest absolute gradient entry is at most ``tol`` (sklearn's default 1e-4).
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        history_size: L-BFGS memory (sklearn's scipy L-BFGS-B keeps 10).

    Returns:
        The ``ProbeFit``; ``converged`` False when ``max_iter`` ended it first or the line search could make
        no more progress above ``dtype``'s precision.

    Raises:
        ValueError: shapes, labels, ``n_classes``, ``c``, ``max_iter``, ``tol``, ``dtype`` or ``init`` invalid.
    """
    _check(x, y, n_classes, "fit_logistic")
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"C must be a positive finite number, got {c}")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got {max_iter} and {tol}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    x, y = x.to(dtype), y.to(device=x.device, dtype=torch.long)
    shape = (n_classes, x.shape[1])
    if init is None:
        weight, bias = x.new_zeros(shape), x.new_zeros(n_classes)
    elif tuple(init[0].shape) != shape or tuple(init[1].shape) != (n_classes,):
        raise ValueError(
            f"init must be (weight {shape}, bias ({n_classes},)), got {tuple(init[0].shape)} and {tuple(init[1].shape)}"
        )
    else:
        weight, bias = init[0].to(x).clone(), init[1].to(x).clone()
    # torch's LBFGS drops a curvature pair whose y.s is below 1e-10, an absolute threshold that J (a mean,
    # with gradients near tol) falls under long before it converges, and L-BFGS then stalls. It minimises
    # J / tol instead: the same minimiser, gradient tolerance 1, and pairs kept down to y.s = 1e-10 tol.
    scale = 1.0 / tol
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=25 * max_iter,  # the line search's evaluations do not end a fit early: iterations do
        tolerance_grad=1.0,
        tolerance_change=torch.finfo(dtype).eps,  # a step or a loss change below dtype's precision ends it
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        loss, grad_w, grad_b = _objective(x, y, weight, bias, c)
        weight.grad, bias.grad = grad_w.mul_(scale), grad_b.mul_(scale)
        return loss * scale

    with torch.no_grad():
        optimizer.step(closure)
        loss, grad_w, grad_b = _objective(x, y, weight, bias, c)
        grad_max = float(torch.maximum(grad_w.abs().max(), grad_b.abs().max()))
    state = optimizer.state[weight]
    return ProbeFit(
        weight=weight.detach(),
        bias=bias.detach(),
        c=float(c),
        objective=float(loss),
        grad_max=grad_max,
        n_iter=int(state.get("n_iter", 0)),
        n_evals=int(state.get("func_evals", 0)) + 1,
        converged=grad_max <= tol,
    )


def select_strength(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    n_classes: int,
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    refit: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    dtype: torch.dtype = torch.float32,
) -> ProbeSelection:
    """Choose ``C`` on validation along a warm-started path, then (by default) refit on train + validation.

    The grid is sorted ascending (strongest regularisation first); each fit starts from the previous one's
    solution. The chosen ``C`` has the most correct validation predictions; of equal counts the smallest
    ``C`` (the most regularised) wins. The refit starts from the chosen training fit.

    Args:
        x_train, y_train: training features ``[n, d]`` and labels ``[n]``.
        x_val, y_val: validation features ``[m, d]`` and labels ``[m]`` (moved to the training rows' device).
        n_classes: number of classes ``K``.
        grid: at least two distinct positive ``C`` values, any order (default ``DEFAULT_GRID``).
        refit: refit at the chosen ``C`` on training and validation rows together.
        max_iter, tol, dtype: as in ``fit_logistic``, for every fit.

    Returns:
        The ``ProbeSelection``.

    Raises:
        ValueError: an invalid grid, or invalid features or labels (as ``fit_logistic``).
    """
    cs = sorted({float(c) for c in grid})
    if len(cs) < 2 or not all(math.isfinite(c) and c > 0 for c in cs):
        raise ValueError(f"the grid needs at least two distinct positive finite C values, got {list(grid)}")
    _check(x_val, y_val, n_classes, "select_strength (validation)")
    if x_val.shape[1] != x_train.shape[1]:
        raise ValueError(f"training and validation features differ in width: {x_train.shape[1]} and {x_val.shape[1]}")
    start = time.perf_counter()
    x_val, y_val = x_val.to(x_train.device), y_val.to(device=x_train.device, dtype=torch.long)
    path: list[PathPoint] = []
    fits: list[ProbeFit] = []
    correct: list[int] = []
    init: tuple[torch.Tensor, torch.Tensor] | None = None
    for c in cs:
        fit = fit_logistic(x_train, y_train, n_classes, c, init=init, max_iter=max_iter, tol=tol, dtype=dtype)
        with torch.no_grad():
            logits = fit.logits(x_val)
            correct.append(int((logits.argmax(1) == y_val).sum()))
            val_loss = float(torch.nn.functional.cross_entropy(logits, y_val))
        path.append(PathPoint(c, correct[-1] / len(y_val), val_loss, fit.n_iter, fit.converged))
        fits.append(fit)
        init = (fit.weight, fit.bias)
    best = correct.index(max(correct))  # the first maximum: the smallest C of a tie
    chosen = fits[best]
    if refit:
        x_all = torch.cat([x_train, x_val.to(x_train.dtype)])
        y_all = torch.cat([y_train.to(device=x_train.device, dtype=torch.long), y_val])
        chosen = fit_logistic(
            x_all,
            y_all,
            n_classes,
            cs[best],
            init=(chosen.weight, chosen.bias),
            max_iter=max_iter,
            tol=tol,
            dtype=dtype,
        )
    edge: Literal["lower", "upper", "interior"] = (
        "lower" if best == 0 else "upper" if best == len(cs) - 1 else "interior"
    )
    return ProbeSelection(
        c=cs[best],
        edge=edge,
        fit=chosen,
        path=tuple(path),
        refit=refit,
        n_iter=sum(p.n_iter for p in path) + (chosen.n_iter if refit else 0),
        seconds=time.perf_counter() - start,
    )
