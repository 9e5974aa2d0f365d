"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend switch).

Why no pyplot: the report runs inside `bench report`, inside tests and inside users' notebooks; creating
`Figure` objects directly renders with the Agg canvas and leaves the caller's backend alone. Colours are the
Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) and every series also differs
by marker or line style, so no figure relies on colour alone. Accuracies are percentages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
VERDICT_COLOURS = {  # the paired verdicts of `bench.analysis.verdicts.matrix_of`
    "confirmed": "#009E73",  # green
    "refuted": "#D55E00",  # vermillion
    "inconclusive": "#F0E442",  # yellow
    "not measured": "#DDDDDD",  # grey
}
PANEL_W, PANEL_H = 3.4, 2.7
MAX_COLS = 4


def short_name(dataset: str) -> str:
    """A panel title for a dataset: its display name (``bench.data.names.display_name``), e.g.
    ``imagefolder:/data/pbc_blood_cells?group=specialized`` -> ``pbc_blood_cells``; a display name stays as is."""
    from bench.data.names import display_name

    return display_name(dataset)


def strategy_order(strategies: list[str]) -> list[str]:
    """linear_probe, freeze 0.75, ..., full, lp_ft, others: from most to least frozen."""

    def depth(name: str) -> float:
        if name == "linear_probe":
            return 1.0
        if name.startswith("freeze "):
            return float(name.split()[1])
        return {"full": 0.0, "lp_ft": -0.5}.get(name, -1.0)

    return sorted(set(strategies), key=lambda s: (-depth(s), s))


PEFT_MARKERS = ("*", "P", "X", "h", "8")  # strategies that are not a depth, apart from the data sizes' markers


def style_map(keys: list[str]) -> dict[str, tuple[str, str]]:
    return {k: (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, k in enumerate(keys)}


def _grid(n_panels: int, n_rows_hint: int = 1) -> tuple[Figure, list]:
    cols = min(MAX_COLS, max(1, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(PANEL_W * cols + 1.6, PANEL_H * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def regime_matrix_figure(matrix: pd.DataFrame) -> Figure:
    """The measured 2x3 matrix (`bench.analysis.verdicts.matrix_of`): one box per regime cell, coloured by its
    paired verdict (``VERDICT_COLOURS``, legend below) and showing the best entry with its top-1, the compared
    pair with the effect (points, 95% interval), Holm p and paired seeds, the textbook advice and the verdict."""
    from matplotlib.patches import Patch

    fig = Figure(figsize=(11, 5.8), layout="constrained")
    ax = fig.subplots()
    sims, datas = ["high", "low"], ["scarce", "limited", "sufficient"]
    for _, row in matrix.iterrows():
        x, y = datas.index(row["data_regime"]), 1 - sims.index(row["similarity_regime"])
        verdict = row["verdict"]
        ax.add_patch(_rect(x, y, VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["not measured"])))
        if verdict == "not measured":
            lines = ["not measured", f"textbook: {row['advice']}"]
        else:
            ci = "" if not np.isfinite(row["ci95"]) else f" ± {row['ci95']:.1f}"
            lines = [str(row["best_entry"]), f"top-1 {row['mean']:.1f}{ci} %"]
            comparison = row.get("comparison")
            if isinstance(comparison, str):
                lines.append(comparison)
            effect, low, high = (row.get(c, np.nan) for c in ("effect", "effect_ci_low", "effect_ci_high"))
            if pd.notna(effect):
                interval = f" [{low:+.1f}, {high:+.1f}]" if pd.notna(low) else ""
                p = row.get("p_holm", np.nan)
                lines.append(f"effect {effect:+.1f}{interval} pts" + (f", Holm p {p:.2g}" if pd.notna(p) else ""))
                lines.append(f"{int(row['n_pairs'])} paired seeds")
            lines += [f"textbook: {row['advice']}", f"verdict: {verdict}"]
        ax.text(
            x + 0.5,
            y + 0.5,
            "\n".join(line for line in lines if line),
            ha="center",
            va="center",
            fontsize=8.5,
            wrap=True,
        )
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 2)
    ax.set_xticks(
        [0.5, 1.5, 2.5],
        ["scarce\n(< 10 images/class)", "limited\n(10-99 images/class)", "sufficient\n(>= 100 images/class)"],
    )
    ax.set_yticks([1.5, 0.5], ["high similarity", "low similarity"])
    ax.set_xlabel("data regime (training images per class)")
    ax.set_title("Measured regime matrix: paired verdict on the textbook advice per cell", fontsize=10)
    ax.tick_params(length=0)
    handles = [
        Patch(facecolor=colour, alpha=0.55, edgecolor="#444444", label=verdict)
        for verdict, colour in VERDICT_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, title="verdict")
    return fig


def _rect(x: float, y: float, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x + 0.02, y + 0.02), 0.96, 0.96, facecolor=colour, alpha=0.55, edgecolor="#444444")


def learning_curves_figure(board: pd.DataFrame) -> Figure | None:
    """Test top-1 against training images per class (log x): panel per (backbone, dataset), line per strategy."""
    data = board[board["per_class"].notna() & (board["per_class"] > 0)]
    if data.empty:
        return None
    panels = sorted(set(zip(data["backbone"], data["dataset"])))
    styles = style_map(strategy_order(list(data["strategy"])))
    fig, axes = _grid(len(panels))
    for ax, (backbone, dataset) in zip(axes, panels):
        panel = data[(data["backbone"] == backbone) & (data["dataset"] == dataset)]
        for strategy, pretrained in [(s, p) for s in styles for p in (True, False)]:
            line = panel[(panel["strategy"] == strategy) & (panel["pretrained"].astype(bool) == pretrained)]
            if line.empty:
                continue
            line = line.sort_values("per_class")
            colour, marker = styles[strategy]
            _means(
                ax,
                line,
                "per_class",
                color=colour,
                marker=marker,
                linestyle="-" if pretrained else "--",
                markerfacecolor=colour if pretrained else "white",
                label=f"{strategy}{'' if pretrained else ' (scratch)'}",
            )
        _log_x(ax)
        ax.set_title(f"{short_name(dataset)} · {backbone}", fontsize=9)
        ax.set_xlabel("training images per class (log scale)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def pretraining_gain_figure(gains: pd.DataFrame) -> Figure | None:
    """Pretrained minus scratch top-1 (points) against training images per class, per (backbone, dataset)."""
    if gains.empty:
        return None
    panels = sorted(set(zip(gains["backbone"], gains["dataset"])))
    styles = style_map(strategy_order(list(gains["strategy"])))
    fig, axes = _grid(len(panels))
    for ax, (backbone, dataset) in zip(axes, panels):
        panel = gains[(gains["backbone"] == backbone) & (gains["dataset"] == dataset)]
        for strategy in styles:
            line = panel[panel["strategy"] == strategy].sort_values("per_class")
            if line.empty:
                continue
            colour, marker = styles[strategy]
            _means(ax, line, "per_class", color=colour, marker=marker, label=strategy)
        ax.axhline(0, color="#444444", linewidth=0.8)
        _log_x(ax)
        ax.set_title(f"{short_name(dataset)} · {backbone}", fontsize=9)
        ax.set_xlabel("training images per class (log scale)")
        ax.set_ylabel("pretrained − scratch top-1 (points)")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def _means(ax: Any, rows: pd.DataFrame, x: str, **style: Any) -> None:
    """``rows``' mean top-1 against column ``x``, with their 95% intervals as error bars (none where unknown)."""
    ax.errorbar(rows[x], rows["mean"], yerr=rows["ci95"].fillna(0), capsize=2, **style)


def _is_depth(strategy: str) -> bool:
    from bench.models.strategies import strategy_depth

    return strategy == "partial" or strategy.startswith("freeze ") or strategy_depth(strategy) is not None


def freeze_profile_figure(profile: pd.DataFrame) -> Figure | None:
    """Top-1 against frozen share of the backbone, one line per data size through the freeze depths, panel per
    (backbone, dataset); strategies that are not a depth (BitFit, norm-only, LoRA, plug-ins') as lone markers at
    their own frozen share, in their size's colour."""
    if profile.empty:
        return None
    panels = sorted(set(zip(profile["backbone"], profile["dataset"])))
    sizes = profile.sort_values("per_class")["size_label"].drop_duplicates().tolist()
    styles = style_map(sizes)
    depth = profile["strategy"].map(_is_depth)
    others = sorted(set(profile.loc[~depth, "strategy"]))
    markers = {name: PEFT_MARKERS[i % len(PEFT_MARKERS)] for i, name in enumerate(others)}
    fig, axes = _grid(len(panels))
    for ax, (backbone, dataset) in zip(axes, panels):
        in_panel = (profile["backbone"] == backbone) & (profile["dataset"] == dataset)
        for size in styles:
            colour, marker = styles[size]
            line = profile[in_panel & depth & (profile["size_label"] == size)].sort_values("frozen")
            if not line.empty:
                _means(ax, line, "frozen", color=colour, marker=marker, label=size)
            for name in others:
                point = profile[in_panel & (profile["strategy"] == name) & (profile["size_label"] == size)]
                if not point.empty:
                    _means(ax, point, "frozen", color=colour, marker=markers[name], markersize=8, linestyle="none")
        for name, marker in markers.items():  # one legend entry per strategy, in black
            ax.plot([], [], color="black", marker=marker, linestyle="none", label=name)
        ax.set_xlim(-0.05, 1.05)
        ax.set_title(f"{short_name(dataset)} · {backbone}", fontsize=9)
        ax.set_xlabel("frozen share of backbone (0 = full FT, 1 = probe)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def pareto_front(seconds: pd.Series, accuracy: pd.Series) -> pd.Series:
    """True where no other point is at least as fast and strictly more accurate (or as accurate and faster)."""
    order = np.lexsort((-accuracy.to_numpy(), seconds.to_numpy()))
    on_front = np.zeros(len(seconds), dtype=bool)
    best = -np.inf
    for i in order:
        if accuracy.iloc[i] > best:
            on_front[i] = True
            best = accuracy.iloc[i]
    return pd.Series(on_front, index=seconds.index)


def cost_figure(cost: pd.DataFrame) -> Figure | None:
    """Top-1 against the compute behind each entry (seconds, search included, log x) per dataset at its largest
    data size; Pareto front marked."""
    cost = cost[cost["compute_seconds"].notna() & (cost["compute_seconds"] > 0)]
    if cost.empty:
        return None
    datasets = sorted(cost["dataset"].unique())
    styles = style_map(strategy_order(list(cost["strategy"])))
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        panel = cost[cost["dataset"] == dataset]
        for _, point in panel.iterrows():
            colour, marker = styles[point["strategy"]]
            ax.errorbar(
                point["compute_seconds"],
                point["mean"],
                yerr=0 if pd.isna(point["ci95"]) else point["ci95"],
                color=colour,
                marker=marker,
                markerfacecolor=colour if point["pretrained"] else "white",
                linestyle="none",
                capsize=2,
                label=f"{point['strategy']}{'' if point['pretrained'] else ' (scratch)'}",
            )
        front = panel[panel["pareto"]].sort_values("compute_seconds")
        ax.step(
            front["compute_seconds"],
            front["mean"],
            where="post",
            color="#444444",
            linewidth=1,
            linestyle=":",
            label="Pareto front",
        )
        for _, point in front.iterrows():
            ax.annotate(
                point["backbone"],
                (point["compute_seconds"], point["mean"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        _log_x(ax)
        ax.set_title(f"{short_name(dataset)} ({panel['data'].iloc[0]} of the data)", fontsize=9)
        ax.set_xlabel("compute, search included (s, log)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def transferability_figure(points: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str) -> Figure | None:
    points = points[points[x].notna() & points[y].notna()]
    if points.empty:
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    styles = style_map(sorted(points["dataset"].unique()))
    for dataset, group in points.groupby("dataset"):
        colour, marker = styles[dataset]
        ax.scatter(group[x], group[y], color=colour, marker=marker, label=dataset)
        for _, p in group.iterrows():
            ax.annotate(p["backbone"], (p[x], p[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _log_x(ax) -> None:
    """Log x axis labelled in plain numbers at 1-2-5 steps (no overlapping minor labels)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _legend(fig: Figure, axes: list, title: str | None = None) -> None:
    """One legend for every panel's labelled lines, right of the panels; `title` by default says what solid and
    dashed mean where some line is a scratch entry's."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside right upper",
            fontsize=7,
            title=title
            or ("solid = pretrained, dashed/hollow = scratch" if any("scratch" in lb for lb in labels) else None),
            title_fontsize=7,
        )


def sensitivity_figure(points: pd.DataFrame) -> Figure | None:
    """Validation (filled, solid) and test (hollow, dashed) top-1 against the learning rate (log x): a panel per
    dataset, a line per strategy; each point is a mean over seeds, data sizes and backbones."""
    if points.empty or points["hp_lr"].nunique() < 2:
        return None
    datasets = sorted(points["dataset"].unique())
    styles = style_map(strategy_order(list(points["strategy"])))
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        panel = points[points["dataset"] == dataset]
        for strategy, (colour, marker) in styles.items():
            line = panel[panel["strategy"] == strategy].sort_values("hp_lr")
            if line.empty:
                continue
            _val_test(ax, line, "hp_lr", ("val_top1", "test_top1"), colour, marker, (strategy, "test"))
        ax.set_xscale("log")
        ax.set_title(short_name(dataset), fontsize=9)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("top-1 (%)")
    _legend(fig, axes)
    return fig


def _val_test(
    ax: Any, line: pd.DataFrame, x: str, y: tuple[str, str], colour: str, marker: str, names: tuple[str, str]
) -> None:
    """Two lines of `line` against column `x`: ``y[0]`` solid and filled, labelled "<names[0]> (validation)", and
    ``y[1]`` dashed and hollow, labelled "<names[0]> (<names[1]>)"."""
    ax.plot(line[x], line[y[0]], color=colour, marker=marker, label=f"{names[0]} (validation)")
    ax.plot(
        line[x],
        line[y[1]],
        color=colour,
        marker=marker,
        linestyle="--",
        markerfacecolor="white",
        label=f"{names[0]} ({names[1]})",
    )


def tuning_curves_figure(curves: pd.DataFrame) -> Figure | None:
    """Tuning curves (Dodge et al. 2019) from ``bench.analysis.Analysis.tuning_curves``: a panel per regime cell
    (similarity x data regime), a colour per entry; the expected best validation top-1 among n samples (solid,
    filled markers) and the expected test top-1 of that selection (dashed, hollow markers) against n. None when
    no (regime cell, entry) reaches n = 2 (nothing was searched)."""
    if curves.empty or curves["n"].max() < 2:
        return None
    order = {r: i for i, r in enumerate(("high", "low", "scarce", "limited", "sufficient"))}
    panels = sorted(
        set(zip(curves["similarity_regime"], curves["data_regime"])), key=lambda k: (order.get(k[0]), order.get(k[1]))
    )
    styles = style_map(sorted(curves["entry"].unique()))
    fig, axes = _grid(len(panels))
    for ax, (sim, data) in zip(axes, panels):
        panel = curves[(curves["similarity_regime"] == sim) & (curves["data_regime"] == data)]
        for entry, (colour, marker) in styles.items():
            line = panel[panel["entry"] == entry].sort_values("n")
            if line.empty:
                continue
            _val_test(
                ax, line, "n", ("expected_val", "expected_test"), colour, marker, (entry, "test of the selection")
            )
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_title(f"{sim} similarity, {data} data", fontsize=9)
        ax.set_xlabel("samples searched (n)")
        ax.set_ylabel("expected top-1 (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes, title="solid = best validation, dashed = its test")
    return fig
