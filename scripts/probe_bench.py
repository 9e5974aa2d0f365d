"""The convex linear probe against the stepped (AdamW) probe and scikit-learn, on the features of one cell.

    python scripts/probe_bench.py                       # efficientnet_lite0 features of ../shared/data/cifar10
    python scripts/probe_bench.py --synthetic           # Gaussian classes of the same size, no data needed

The cell: efficientnet_lite0 (bundled ImageNet weights) pooled features, 1280 floats per image, at 48 px (as
``suites/regimes_cpu.yaml``); 2,700 training and 300 validation rows from ``train/`` (270 and 30 per class), the
3,000 of ``test/`` for test. Features are computed once and kept in ``--cache``. Rows, all on the CPU:

- convex: ``select_strength`` over ``DEFAULT_GRID`` (17 values of C), float32, refit on train + validation;
- sklearn: ``LogisticRegression`` (float64, tol 1e-4) over the same grid with ``warm_start``, selection by the
  same rule, and refit;
- stepped: a linear head trained by AdamW (lr 1e-2, weight decay 1e-4, cosine decay; batch 32) for 24 steps
  (the ``regimes_cpu`` budget) and for 40 epochs, validation and test top-1 at the end.

Then the convex refit (float32, float64) against sklearn's at the chosen C, all to tol 1e-6: J (module docstring
of ``bench.training.convex_probe``, evaluated in float64) and test predictions. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bench.models.build import build_backbone
from bench.training.convex_probe import DEFAULT_GRID, fit_logistic, objective, select_strength

Split = tuple[torch.Tensor, torch.Tensor]


def _images(folder: Path, img_size: int, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    pixels, labels = [], []
    for k, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            image = Image.open(path).convert("RGB").resize((img_size, img_size), Image.BILINEAR)
            pixels.append(torch.from_numpy(np.asarray(image).copy()))
            labels.append(k)
    x = torch.stack(pixels).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), labels


def _cifar_features(root: Path, img_size: int, cache: Path) -> dict[str, np.ndarray]:
    if cache.exists():
        return dict(np.load(cache))
    backbone = build_backbone("efficientnet_lite0", 10, img_size=img_size)
    body = backbone.body.eval()
    mean, std = torch.tensor(backbone.mean), torch.tensor(backbone.std)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        x, labels = _images(root / split, img_size, mean, std)
        with torch.inference_mode():
            out[f"x_{split}"] = torch.cat([body(b) for b in x.split(256)]).numpy()
        out[f"y_{split}"] = np.asarray(labels)
    np.savez(cache, **out)
    return out


def _synthetic(seed: int = 0) -> dict[str, np.ndarray]:
    """Ten Gaussian classes in 1280 dimensions, non-negative like pooled activations."""
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.5, 1.0, size=(10, 1280))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        return np.maximum(means[y] + rng.normal(0, 1.5, size=(n, 1280)), 0).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = draw(3000), draw(3000)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _splits(data: dict[str, np.ndarray]) -> tuple[Split, Split, Split]:
    """270 training and 30 validation rows per class from the training folder; the test folder for test."""
    y = data["y_train"]
    val = np.zeros(len(y), dtype=bool)
    for k in np.unique(y):
        val[np.flatnonzero(y == k)[-30:]] = True

    def pair(x: np.ndarray, labels: np.ndarray) -> Split:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(labels).long()

    x = data["x_train"]
    return pair(x[~val], y[~val]), pair(x[val], y[val]), pair(data["x_test"], data["y_test"])


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def _stepped(train: Split, val: Split, test: Split, steps: int, seed: int = 0) -> dict:
    """AdamW on a linear head, batch 32, cosine decay from lr 1e-2; top-1 after the last step."""
    torch.manual_seed(seed)
    x, y = train
    head = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    tic = time.perf_counter()
    order = torch.cat([torch.randperm(len(y)) for _ in range(math.ceil(steps * 32 / len(y)))])
    for step in range(steps):
        idx = order[step * 32 : (step + 1) * 32]
        loss = F.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        row = {"val": _top1(head(val[0]), val[1]), "test": _top1(head(test[0]), test[1])}
    return row | {"seconds": time.perf_counter() - tic}


def _sklearn_path(train: Split, val: Split, test: Split, tol: float) -> dict:
    """The same selection with sklearn: warm-started path over DEFAULT_GRID, first best validation top-1."""
    x, y, xv, yv = (t.double().numpy() if t.is_floating_point() else t.numpy() for t in (*train, *val))
    tic = time.perf_counter()
    model = LogisticRegression(tol=tol, max_iter=1000, warm_start=True)
    scores, n_iter = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # its iterations are in the table
        for c in DEFAULT_GRID:
            scores.append(model.set_params(C=c).fit(x, y).score(xv, yv))
            n_iter += int(model.n_iter_[0])
        c = DEFAULT_GRID[int(np.argmax(scores))]
        model.set_params(C=c).fit(np.concatenate([x, xv]), np.concatenate([y, yv]))
    seconds = time.perf_counter() - tic
    test_top1 = model.score(test[0].double().numpy(), test[1].numpy())
    return {"c": c, "val": max(scores), "test": test_top1, "seconds": seconds, "n_iter": n_iter + int(model.n_iter_[0])}


def _row(*cells: object) -> str:
    """A markdown table row, floats to 4 significant digits."""
    return "| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells) + " |"


def _agreement(train: Split, val: Split, test: Split, c: float) -> list[str]:
    """Our refit (float32 and float64) against sklearn's at ``c`` on train + validation, all to tol 1e-6."""
    x, y = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # its iterations are in the table
        ref = LogisticRegression(C=c, tol=1e-6, max_iter=5000).fit(x.double().numpy(), y.numpy())
    j_ref = objective(x, y, torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_), c)
    pred_ref = ref.predict(test[0].double().numpy())
    y_test = test[1].numpy()
    rows = []
    for dtype in (torch.float32, torch.float64):
        ours = fit_logistic(x, y, 10, c, tol=1e-6, max_iter=5000, dtype=dtype)
        j_ours = objective(x, y, ours.weight, ours.bias, c)
        pred = ours.logits(test[0]).argmax(1).numpy()
        state = "converged" if ours.converged else "stalled"
        rows.append(
            _row(
                str(dtype).removeprefix("torch."),
                c,
                f"{ours.n_iter} ({state}, max grad {ours.grad_max:.1e})",
                int(ref.n_iter_[0]),
                f"{j_ours:.8g}",
                f"{j_ref:.8g}",
                f"{(j_ours - j_ref) / j_ref:.1e}",
                float((pred == y_test).mean()),
                float((pred_ref == y_test).mean()),
                int((pred != pred_ref).sum()),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/cifar10"))
    parser.add_argument("--img-size", type=int, default=48)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "probe_bench_features.npz")
    parser.add_argument("--synthetic", action="store_true", help="Gaussian classes instead of cifar10 features")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        data = _synthetic() if args.synthetic else _cifar_features(args.root, args.img_size, args.cache)
        train, val, test = _splits(data)
        print(f"features: train {tuple(train[0].shape)}, val {tuple(val[0].shape)}, test {tuple(test[0].shape)}\n")
        print(_row("probe", "seconds", "C", "edge", "iterations", "val top-1", "test top-1"))
        print(_row(*["---"] * 7))
        chosen = []
        for tol in (1e-4, 1e-6):
            sel = select_strength(*train, *val, 10, tol=tol)
            val_top1 = next(p.val_top1 for p in sel.path if p.c == sel.c)
            test_top1 = _top1(sel.fit.logits(test[0]), test[1])
            print(_row(f"convex, tol {tol:g}", sel.seconds, sel.c, sel.edge, sel.n_iter, val_top1, test_top1))
            chosen.append(sel.c)
        ref = _sklearn_path(train, val, test, 1e-4)
        print(_row("sklearn path, tol 0.0001", ref["seconds"], ref["c"], "", ref["n_iter"], ref["val"], ref["test"]))
        for label, steps in (("24 steps", 24), ("40 epochs", 40 * math.ceil(len(train[1]) / 32))):
            row = _stepped(train, val, test, steps)
            print(_row(f"stepped AdamW, {label}", row["seconds"], "", "", steps, row["val"], row["test"]))
        print()
        print(
            _row(
                "convex dtype",
                "C",
                "convex iterations",
                "sklearn iterations",
                "J convex",
                "J sklearn",
                "relative",
                "test top-1 convex",
                "test top-1 sklearn",
                "test predictions differing",
            )
        )
        print(_row(*["---"] * 10))
        print("\n".join(_agreement(train, val, test, chosen[0])))


if __name__ == "__main__":
    main()
