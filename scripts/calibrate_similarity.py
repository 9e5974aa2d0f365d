"""Calibrate and check the source-domain similarity score (bench.similarity.scores) on real and constructed images.

    .venv/bin/python scripts/calibrate_similarity.py                 # full: 3 backbones x 4 sizes, ~1 h on 1 CPU
    .venv/bin/python scripts/calibrate_similarity.py --quick         # lite0, 64 and 224 px, fewer images

What it does, for every (backbone, image size, image set):
  - prepares the set at the image size (uint8 NCHW, as a trial would get it),
  - one forward pass at that size: pooled features + ImageNet logits (LogME, LEEP, max-softmax, energy) and,
    through the same pass, the BN divergence *without* resizing (to show why the score resizes),
  - `bench.similarity.scores.source_similarity` (resized to the pretraining size): the score and regime,
and writes docs/figures/similarity_calibration.csv, the figures docs/figures/similarity_*.png, and a markdown
table on stdout (or --markdown FILE).

Image sets. Expected `high`: CIFAR-10 (shared data, train and test splits), `photo_patches` (bundled crops of
the scikit-image / scikit-learn colour photos), whole photos (large crops of the same photos). Expected `low`:
PBC blood-cell microscopy (shared data), `digits`, and far domains built from scikit-image's bundled images:
fundus retina, immunohistochemistry (histology), text/page documents, a CT phantom, fluorescence cells +
microaneurysms, the Hubble deep field, binary blobs/checkerboard, and uniform noise. No expectation (reported
only): grayscale textures, grayscale photographs, 25 px grayscale faces.

Acceptance: with DEFAULT_SIMILARITY_THRESHOLD every `high` set scores >= the threshold and every `low` set
below it, for all three backbones and all sizes; the script also prints the threshold the data suggests
(midpoint, in divergence, between the closest high and low sets) and leave-one-set-out checks.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data import prepare_dataset  # noqa: E402
from bench.models.build import build_backbone  # noqa: E402
from bench.similarity.scores import (  # noqa: E402
    DEFAULT_SIMILARITY_THRESHOLD,
    BatchNormRecorder,
    divergence_from_statistics,
    energy_score,
    leep,
    logme,
    max_softmax_score,
    similarity_regime,
    source_similarity,
)

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SIZES = (64, 96, 160, 224)
FIGURES = ROOT / "docs" / "figures"

ImageSet = tuple[np.ndarray, np.ndarray]  # uint8 [N, 3, S, S], labels [N]


# ------------------------------------------------------------------------------------------- image sets


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 / max(float(img.max()), 1e-12)), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(_to_rgb_uint8(img)))
    return np.asarray(pil.resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)


def _crops(images: list[np.ndarray], n: int, size: int, scale: tuple[float, float], seed: int) -> ImageSet:
    """n random square crops (side `scale` of the shorter side, random flip), cycling through `images`."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        label = i % len(images)
        img = images[label]
        h, w = img.shape[:2]
        side = max(8, int(min(h, w) * rng.uniform(*scale)))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        xs.append(_resize(crop, size))
        ys.append(label)
    return np.stack(xs), np.array(ys)


def _skimage(*names: str) -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, name)() for name in names]


def _prepared(name: str, size: int, n: int, split: str = "train", cache: str | None = None) -> ImageSet:
    data = prepare_dataset(name, size, cache_dir=cache)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    index = np.unique(np.linspace(0, len(x) - 1, num=min(n, len(x))).round().astype(int))
    return np.asarray(x[index]), np.asarray(y[index])


def image_sets(data_root: Path, cache: str | None) -> dict[str, tuple[str, Callable[[int, int], ImageSet]]]:
    """name -> (expected regime 'high' | 'low' | '-', build(size, n))."""
    import sklearn.datasets

    cifar, pbc = f"imagefolder:{data_root / 'cifar10'}", f"imagefolder:{data_root / 'pbc_blood_cells'}"
    colour_photos = _skimage("astronaut", "chelsea", "coffee", "rocket") + list(
        sklearn.datasets.load_sample_images().images
    )

    def noise(size: int, n: int) -> ImageSet:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8), np.arange(n) % 2

    def faces(size: int, n: int) -> ImageSet:
        lfw = _skimage("lfw_subset")[0][:n]
        return np.stack([_resize(face, size) for face in lfw]), (np.arange(len(lfw)) >= 100).astype(int)

    return {
        "cifar10": ("high", lambda s, n: _prepared(cifar, s, n, "train", cache)),
        "cifar10 (test)": ("high", lambda s, n: _prepared(cifar, s, n, "test", cache)),
        "photo_patches": ("high", lambda s, n: _prepared("photo_patches", s, n, "train", cache)),
        "whole photos": ("high", lambda s, n: _crops(colour_photos, n, s, (0.85, 1.0), 1)),
        "pbc_blood_cells": ("low", lambda s, n: _prepared(pbc, s, n, "train", cache)),
        "digits": ("low", lambda s, n: _prepared("digits", s, n, "train", cache)),
        "retina (fundus)": ("low", lambda s, n: _crops(_skimage("retina"), n, s, (0.2, 0.6), 2)),
        "immunohistochemistry": ("low", lambda s, n: _crops(_skimage("immunohistochemistry"), n, s, (0.3, 0.7), 3)),
        "documents": ("low", lambda s, n: _crops(_skimage("text", "page"), n, s, (0.5, 1.0), 4)),
        "CT phantom": ("low", lambda s, n: _crops(_skimage("shepp_logan_phantom"), n, s, (0.3, 0.7), 5)),
        "cells (fluorescence)": ("low", lambda s, n: _crops(_skimage("cell", "microaneurysms"), n, s, (0.3, 0.7), 6)),
        "hubble deep field": ("low", lambda s, n: _crops(_skimage("hubble_deep_field"), n, s, (0.15, 0.4), 7)),
        "synthetic shapes": ("low", lambda s, n: _crops(_skimage("binary_blobs", "checkerboard"), n, s, (0.3, 0.7), 8)),
        "uniform noise": ("low", noise),
        "gray textures": ("-", lambda s, n: _crops(_skimage("brick", "grass", "gravel"), n, s, (0.3, 0.7), 9)),
        "gray photos": ("-", lambda s, n: _crops(_skimage("camera", "coins", "moon", "clock"), n, s, (0.3, 0.7), 10)),
        "gray faces 25px": ("-", faces),
    }


REAL_SETS = {"cifar10", "cifar10 (test)", "photo_patches", "pbc_blood_cells", "digits"}


# ------------------------------------------------------------------------------------------ measurement


@functools.lru_cache(maxsize=1)
def _backbone(name: str):  # noqa: ANN202
    return build_backbone(name, num_classes=2)


def measure(backbone_name: str, size: int, name: str, expected: str, x: np.ndarray, y: np.ndarray) -> dict:
    backbone = _backbone(backbone_name)
    body, head = backbone.body.eval(), backbone.source_head
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    started = time.perf_counter()
    features, logits = [], []
    with BatchNormRecorder(body) as recorder, torch.no_grad():  # the trial-size pass, as a probe would run it
        for start in range(0, len(x), 32):
            batch = (torch.from_numpy(x[start : start + 32]).float() / 255 - mean) / std
            pooled = body(batch)
            features.append(pooled.numpy())
            logits.append(head(pooled).numpy())
    feats, logit = np.concatenate(features), np.concatenate(logits)
    unresized, _ = divergence_from_statistics(recorder.statistics())
    all_layers, _ = divergence_from_statistics(recorder.statistics(), layers="all")
    scores = source_similarity(body, x, mean=backbone.mean, std=backbone.std, max_images=len(x))

    def safe(fn: Callable[[], float]) -> float:
        try:
            return float(fn())
        except ValueError:
            return float("nan")  # e.g. LogME on a one-class set: documented NaN

    from scipy.special import softmax

    return {
        "backbone": backbone_name,
        "img_size": size,
        "dataset": name,
        "expected": expected,
        "n_images": len(x),
        "similarity_score": scores.similarity_score,
        "bn_divergence": scores.bn_divergence,
        "regime": scores.similarity_regime,
        "n_layers": scores.n_layers,
        "resolution": scores.resolution,
        "score_not_resized": math.exp(-unresized),
        "score_not_resized_all_layers": math.exp(-all_layers),
        "max_softmax": max_softmax_score(logit),
        "energy": energy_score(logit),
        "logme": safe(lambda: logme(feats, y)),
        "leep": safe(lambda: leep(softmax(logit.astype(np.float64), 1), y)),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ------------------------------------------------------------------------------------------ reporting


def suggested_threshold(rows: list[dict], exclude: str | None = None) -> tuple[float, float, float]:
    """(threshold score, lowest high score, highest low score): the divergence midpoint (geometric mean)."""
    high = [r["bn_divergence"] for r in rows if r["expected"] == "high" and r["dataset"] != exclude]
    low = [r["bn_divergence"] for r in rows if r["expected"] == "low" and r["dataset"] != exclude]
    d_high, d_low = max(high), min(low)
    return math.exp(-math.sqrt(d_high * d_low)), math.exp(-d_high), math.exp(-d_low)


def markdown_table(rows: list[dict], sizes: list[int], backbones: list[str]) -> str:
    lines = []
    for backbone in backbones:
        lines.append(f"\n**{backbone}** (score; regime; max-softmax / energy at the trial size)\n")
        lines.append("| dataset | expected | " + " | ".join(f"{s} px" for s in sizes) + " |")
        lines.append("|---|---|" + "---|" * len(sizes))
        names = list(dict.fromkeys(r["dataset"] for r in rows))
        for name in names:
            cells = []
            for size in sizes:
                match = [r for r in rows if (r["backbone"], r["img_size"], r["dataset"]) == (backbone, size, name)]
                if not match:
                    cells.append("-")
                    continue
                r = match[0]
                cells.append(
                    f"**{r['similarity_score']:.3f}** {r['regime']}; {r['max_softmax']:.2f} / {r['energy']:.1f}"
                )
            expected = next(r["expected"] for r in rows if r["dataset"] == name)
            lines.append(f"| {name} | {expected} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transfer_table(rows: list[dict], sizes: list[int], backbones: list[str]) -> str:
    lines = [
        "| backbone | dataset | " + " | ".join(f"LogME / LEEP {s} px" for s in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for backbone in backbones:
        for name in [n for n in dict.fromkeys(r["dataset"] for r in rows) if n in REAL_SETS]:
            cells = []
            for size in sizes:
                match = [r for r in rows if (r["backbone"], r["img_size"], r["dataset"]) == (backbone, size, name)]
                cells.append(f"{match[0]['logme']:.3f} / {match[0]['leep']:.3f}" if match else "-")
            lines.append(f"| {backbone} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(rows: list[dict], sizes: list[int], backbones: list[str], threshold: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    colours = {"high": "tab:green", "low": "tab:red", "-": "tab:gray"}
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    written = []
    panels = [
        ("similarity_score", "similarity score (BN, resized to the pretraining size)", True),
        ("score_not_resized", "BN score fed at the trial size (not resized)", True),
        ("max_softmax", "mean max-softmax of the ImageNet head", False),
        ("energy", "energy score (logsumexp of the logits)", False),
    ]
    for file_name, keys in (("similarity_scores.png", panels[:2]), ("similarity_obvious.png", panels[2:])):
        fig, axes = plt.subplots(
            len(keys), len(backbones), figsize=(4.2 * len(backbones), 3.6 * len(keys)), squeeze=False, sharex=True
        )
        for row_axes, (key, title, with_threshold) in zip(axes, keys):
            for ax, backbone in zip(row_axes, backbones):
                for name in names:
                    points = sorted(
                        (r["img_size"], r[key]) for r in rows if r["backbone"] == backbone and r["dataset"] == name
                    )
                    if not points:
                        continue
                    expected = next(r["expected"] for r in rows if r["dataset"] == name)
                    ax.plot(
                        *zip(*points),
                        marker="o",
                        ms=3,
                        lw=1,
                        color=colours[expected],
                        alpha=0.9 if expected != "-" else 0.5,
                        linestyle="-" if expected != "-" else ":",
                    )
                if with_threshold:
                    ax.axhline(threshold, color="black", lw=1, ls="--")
                ax.set_title(f"{backbone}\n{title}", fontsize=8)
                ax.set_xticks(sizes)
                ax.set_xlabel("image size (px)", fontsize=8)
                ax.tick_params(labelsize=7)
        handles = [
            plt.Line2D([], [], color=c, label=f"expected {k}" if k != "-" else "no expectation")
            for k, c in colours.items()
        ]
        if panels[0] in keys:
            handles.append(plt.Line2D([], [], color="black", ls="--", label=f"threshold {threshold:.3f}"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path = FIGURES / file_name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="efficientnet_lite0 at 64 and 224 px, 32 images")
    parser.add_argument("--images", type=int, default=128, help="images per real dataset (constructed: half)")
    parser.add_argument("--data", default=os.environ.get("BENCH_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache", default=None, help="prepared-dataset cache folder (faster reruns)")
    parser.add_argument("--csv", default=str(FIGURES / "similarity_calibration.csv"))
    parser.add_argument("--markdown", default=None, help="write the markdown tables here (default: stdout)")
    parser.add_argument(
        "--from-csv",
        default=None,
        help="re-render tables and figures from an earlier CSV, with "
        "the current DEFAULT_SIMILARITY_THRESHOLD (no model is run)",
    )
    args = parser.parse_args(argv)
    if args.from_csv:
        return report(read_rows(args.from_csv), args)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))

    backbones = list(BACKBONES[:1] if args.quick else BACKBONES)
    sizes = [64, 224] if args.quick else list(SIZES)
    n_real = 32 if args.quick else args.images
    cache = args.cache or tempfile.mkdtemp(prefix="bench_similarity_")
    sets = image_sets(Path(args.data), cache)
    rows: list[dict] = []
    for backbone in backbones:
        for size in sizes:
            for name, (expected, build) in sets.items():
                x, y = build(size, n_real if name in REAL_SETS else max(16, n_real // 2))
                row = measure(backbone, size, name, expected, x, y)
                rows.append(row)
                print(
                    f"{backbone} {size:3d}px {name:22s} {expected:4s} score={row['similarity_score']:.3f} "
                    f"({row['regime']}) msp={row['max_softmax']:.2f} {row['seconds']}s",
                    file=sys.stderr,
                    flush=True,
                )

    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return report(rows, args)


def read_rows(path: str) -> list[dict]:
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict = {}
            for key, value in raw.items():
                try:
                    row[key] = int(value) if key in ("img_size", "n_images", "n_layers", "resolution") else float(value)
                except ValueError:
                    row[key] = value
            rows.append(row)
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> int:
    for row in rows:  # the regime under the threshold in force now
        row["regime"] = similarity_regime(row["similarity_score"])
    sizes = sorted({r["img_size"] for r in rows})
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    sets = {r["dataset"]: (r["expected"], None) for r in rows}
    threshold = DEFAULT_SIMILARITY_THRESHOLD
    suggested, lowest_high, highest_low = suggested_threshold(rows)
    wrong = [r for r in rows if r["expected"] in ("high", "low") and r["regime"] != r["expected"]]
    out = [
        f"Default threshold {threshold}; the data suggest {suggested:.3f} "
        f"(lowest high-set score {lowest_high:.3f}, highest low-set score {highest_low:.3f}).",
        f"Misclassified (backbone, size, set) under the default: {len(wrong)} of "
        f"{sum(r['expected'] != '-' for r in rows)}"
        + "".join(
            f"\n  - {r['backbone']} {r['img_size']}px {r['dataset']}: {r['similarity_score']:.3f}" for r in wrong
        ),
    ]
    out.append("\nLeave-one-set-out: threshold suggested without each set, and whether that set then lands right:")
    for name in [n for n, (e, _) in sets.items() if e != "-"]:
        t, _, _ = suggested_threshold(rows, exclude=name)
        mine = [r for r in rows if r["dataset"] == name]
        right = sum(("high" if r["similarity_score"] >= t else "low") == r["expected"] for r in mine)
        out.append(f"  - {name}: threshold {t:.3f}, {right}/{len(mine)} right")
    out.append(markdown_table(rows, sizes, backbones))
    out.append("\nLabel-aware transferability of the frozen features (trial-size features, same images):\n")
    out.append(transfer_table(rows, sizes, backbones))
    paths = figures(rows, sizes, backbones, threshold)
    out.append(
        "\nFigures: " + ", ".join(str(p.relative_to(ROOT)) for p in paths) + f"\nCSV: {args.from_csv or args.csv}"
    )
    text = "\n".join(out)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(text)
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
