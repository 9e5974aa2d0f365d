"""The research report: the measured regime matrix beside the textbook one, and the evidence behind it.

Why: a leaderboard says who won; a researcher also needs to see how the answer moves with data size, what
pretraining buys, how deep to freeze, what it costs, whether cheap transferability estimates predict the
outcome, and enough of the suite and environment to reproduce or distrust the numbers. `write_report` turns
one or more run folders into report/report.html (self-contained, offline), report/report.md and
report/figures/*.png. All statistics come from one `bench.analysis.Analysis`, so the report and
`bench leaderboard` never disagree.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

import bench
from bench.analysis import Analysis
from bench.analysis.cells import CELL, dataset_labels, shown_datasets
from bench.analysis.outcomes import rank_correlations
from bench.analysis.tables import display_leaderboard, display_overall, pct
from bench.errors import UserError
from bench.report import figures as figs
from bench.report.matrix import section_matrix
from bench.report.render import Document, save_figures, to_html, to_markdown
from bench.results import remote
from bench.results.schema import DEFAULT_THRESHOLDS, STATUSES, DataThresholds
from bench.results.store import RunData, load_runs

TITLE = "Transfer-learning benchmark report"


def report_command(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """`bench report RUN_DIR... [--out DIR]`: write the report; return the path of report.html."""
    return write_report(run_dirs, out)


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    thresholds: DataThresholds = DEFAULT_THRESHOLDS,
) -> Path:
    """Load the runs, write `<out_dir>/report.html`, `report.md` and `figures/*.png`; return report.html.

    `out_dir` defaults to `<first run dir>/report`, or `./bench-report` when the first run is a URI (s3://...: the
    report is written locally). Earlier figures in that folder are replaced.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise UserError("bench report: give at least one run folder")
    data = load_runs(run_dirs)
    for problem in data.problems:  # also listed in the report's section 7
        print(f"warning: {problem}", file=sys.stderr)
    if out_dir is not None:
        out = Path(out_dir)
    else:
        out = Path("bench-report") if remote.is_uri(run_dirs[0]) else Path(run_dirs[0]) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    figures_dir = out / "figures"
    if figures_dir.is_dir():
        for old in figures_dir.glob("*.png"):
            old.unlink()
    doc = build_report(data, thresholds)
    paths = save_figures(doc, figures_dir)
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(to_html(doc, paths), encoding="utf-8")
    return html_path


def build_report(data: RunData, thresholds: DataThresholds = DEFAULT_THRESHOLDS) -> Document:
    """The report as a `Document` (its seven sections), ready to render. Datasets appear under their display
    names (`shown_datasets`); section 7 says which data each name stands for."""
    names = _dataset_names_table(data.trials)
    data = dataclasses.replace(data, trials=shown_datasets(data.trials))
    analysis = Analysis.of(data.trials, thresholds)
    doc = Document(TITLE)
    _overview(doc, data, thresholds)
    section_matrix(doc, analysis)
    _section_learning_curves(doc, analysis.leaderboard("dataset"))
    _section_pretraining(doc, analysis.pretraining_gain())
    _section_freeze(doc, analysis.freeze_profile())
    _section_cost(doc, analysis)
    _section_hyperparameters(doc, analysis)
    _seed_variance(doc, analysis.seed_variance())
    _section_transferability(doc, analysis.transferability_points())
    _section_reproduce(doc, data, analysis.excluded, names)
    return doc


def _dataset_names_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Display name -> dataset string, for the reproducibility section."""
    labels = dataset_labels(trials)
    return pd.DataFrame({"dataset": list(labels.values()), "data": [f"`{d}`" for d in labels]}).sort_values("dataset")


# --------------------------------------------------------------------------------------------- sections


def _overview(doc: Document, data: RunData, thresholds: DataThresholds) -> None:
    trials = data.trials
    counts = trials["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if s != "stopped" or counts.get(s, 0))
    doc.para(
        f"{len(trials)} trials ({status}) from {len(data.run_dirs)} run folder(s): "
        + ", ".join(f"`{d}`" for d in data.run_dirs)
        + f". Datasets: {', '.join(sorted(map(str, trials['dataset'].dropna().unique())))}. "
        f"Backbones: {', '.join(sorted(map(str, trials['backbone'].dropna().unique())))}. "
        f"Written by bench {bench.__version__}."
    )
    doc.para(
        "How to read the numbers: accuracies are test top-1 in percent, averaged over seeds, with a 95% "
        "Student-t interval of the mean (mean ± t(0.975, n-1)·sd/√n); one seed gives no interval. An entry is "
        "(backbone, pretrained or scratch, strategy); a cell is (dataset, data size). Where a suite swept a "
        "hyperparameter, each cell keeps the setting with the best validation top-1 and reports its test "
        'accuracy; test accuracy never selects anything. Entries whose intervals overlap share a rank ("=1"). '
        f"Data regimes come from training images per class: scarce < {thresholds.limited:g} ≤ limited < "
        f"{thresholds.sufficient:g} ≤ sufficient. Failed and diverged trials are excluded from every statistic "
        "and listed in section 7."
    )
    if data.problems:
        doc.para("**Problems met while reading the runs** (whatever could be read is reported):")
        doc.bullets(data.problems)


def _section_learning_curves(doc: Document, board: pd.DataFrame) -> None:
    doc.heading("2. Learning curves over data size")
    fig = figs.learning_curves_figure(board)
    if fig is None:
        doc.para("No cell records its training-set size (n_train / n_classes), so no learning curve can be drawn.")
        return
    sizes = board.groupby("dataset")["per_class"].nunique()
    if (sizes < 2).all():
        doc.para("Each dataset was run at a single data size, so every curve is a single point.")
    doc.figure(
        "learning_curves",
        fig,
        "Test top-1 (mean over seeds, bars: 95% interval) against training images per class (log scale); "
        "one line per strategy (freeze depth); solid/filled = ImageNet-pretrained, dashed/hollow = scratch.",
    )


def _section_pretraining(doc: Document, gains: pd.DataFrame) -> None:
    doc.heading("3. What pretraining buys")
    if gains.empty:
        doc.para(
            "These runs hold no scratch twin (`pretrained: false`) of a pretrained entry, so the gain of "
            "pretraining cannot be measured."
        )
        return
    doc.figure(
        "pretraining_gain",
        figs.pretraining_gain_figure(gains),
        "ImageNet-pretrained minus from-scratch test top-1 (percentage points), same backbone, strategy, "
        "data subset and seed; mean over seeds with 95% interval, against training images per class.",
    )
    table = gains.sort_values(["dataset", "per_class", "backbone", "strategy"])
    doc.table(
        pd.DataFrame(
            {
                "dataset": table["dataset"],
                "data": table["data"],
                "backbone": table["backbone"],
                "strategy": table["strategy"],
                "gain (pts, 95% CI)": [pct(m, h) for m, h in zip(table["mean"], table["ci95"])],
                "seeds": table["n_seeds"],
            }
        )
    )


def _section_freeze(doc: Document, profile: pd.DataFrame) -> None:
    doc.heading("4. Freeze-depth profile")
    fig = figs.freeze_profile_figure(profile) if not profile.empty else None
    if fig is None:
        doc.para("No pretrained entry with a known freeze depth.")
        return
    doc.figure(
        "freeze_profile",
        fig,
        "Test top-1 against the frozen share of the backbone's parameters (0 = full fine-tuning, 1 = linear "
        "probe), one line per data size (its data regime in brackets) through the freeze depths; strategies "
        "that are not a depth (BitFit, norm-only, LoRA) are lone markers at their own frozen share, in their "
        "data size's colour; pretrained backbones; lp_ft is left out (it ends fully fine-tuned, see the "
        "leaderboards).",
    )


def _section_cost(doc: Document, analysis: Analysis) -> None:
    doc.heading("5. Backbone leaderboard and cost")
    trials, board, overall = analysis.trials, analysis.leaderboard("dataset"), analysis.overall()
    doc.para(
        "Across datasets: mean rank (each dataset weighs the same; within a dataset, ranks averaged over its "
        "data sizes) and mean test top-1 in logit space mapped back to percent (Kornblith et al. 2019)."
    )
    doc.table(display_overall(overall))
    doc.heading("Per dataset and data size", 3)
    doc.table(display_leaderboard(board))
    if "compute_seconds" not in board:
        return
    largest = board[board["per_class"] == board.groupby("dataset")["per_class"].transform("max")].copy()
    if largest.empty:
        return
    largest["pareto"] = False
    for _, group in largest.groupby("dataset"):
        ok = group["compute_seconds"] > 0
        largest.loc[group[ok].index, "pareto"] = figs.pareto_front(
            group.loc[ok, "compute_seconds"], group.loc[ok, "mean"]
        )
    fig = figs.cost_figure(largest)
    if fig is not None:
        doc.figure(
            "cost",
            fig,
            "Accuracy against cost: test top-1 against the compute each entry's result took (training seconds of "
            "every trial behind it: every seed, and every sample of its hyperparameter search, stopped ones "
            "included; log scale) at each dataset's largest data size; the dotted step line is the Pareto front "
            "(no other entry is both cheaper and more accurate).",
        )
        front = largest[largest["pareto"]].sort_values(["dataset", "compute_seconds"])
        doc.table(
            pd.DataFrame(
                {
                    "dataset": front["dataset"],
                    "data": front["data"],
                    "entry (Pareto-optimal)": front["entry"],
                    "top-1 % (95% CI)": [pct(m, h) for m, h in zip(front["mean"], front["ci95"])],
                    "trials": front["trials_run"].astype(int),
                    "compute s": front["compute_seconds"].map("{:.1f}".format),
                    "train s per trial": front["train_seconds_mean"].map("{:.1f}".format),
                }
            )
        )
    seconds = trials["train_seconds"] if "train_seconds" in trials else pd.Series(dtype=float)
    total = pd.to_numeric(seconds, errors="coerce").sum()
    stopped = int((trials["status"] == "stopped").sum())
    doc.para(
        f"Total compute of these runs: {total:.0f} training seconds over {len(trials)} trials"
        + (f", {stopped} of them stopped early by the search's scheduler." if stopped else ".")
    )


def _section_hyperparameters(doc: Document, analysis: Analysis) -> None:
    """Only where some (cell, entry) ran more than one hyperparameter setting (a sweep or a search)."""
    selected = analysis.selected
    if selected.empty or "n_settings" not in selected or not (selected["n_settings"] > 1).any():
        return
    doc.heading("Hyperparameters: selected on validation, and sensitivity", 3)
    doc.para(
        "Each cell's setting is the one with the best validation top-1 averaged over its seeds; test accuracy "
        "never selects. The verdicts above compare strategies at these settings."
    )
    chosen = selected.groupby(CELL + ["entry"], dropna=False).agg(
        selected=("selected", "first"),
        settings=("n_settings", "first"),
        val=("metric_val_top1", "mean"),
        test=("metric_top1", "mean"),
    )
    chosen = chosen.reset_index()
    chosen["val"], chosen["test"] = chosen["val"].round(1), chosen["test"].round(1)
    doc.table(chosen.rename(columns={"val": "val top-1 %", "test": "test top-1 %", "selected": "selected (val)"}))
    points = analysis.sensitivity()
    doc.figure(
        "sensitivity",
        figs.sensitivity_figure(points),
        "Sensitivity to the learning rate: validation (solid) and test (dashed) top-1 against the learning rate, "
        "per dataset and strategy, each point a mean over seeds, data sizes and backbones.",
    )
    _search_edges(doc, analysis)
    doc.figure(
        "tuning_curves",
        figs.tuning_curves_figure(analysis.tuning_curves()),
        'Tuning curves (Dodge et al. 2019, "Show your work"): per regime cell, the expected best validation '
        "top-1 among n hyperparameter samples drawn at random (with replacement) from a cell's search (solid), "
        "and the expected test top-1 of the sample so selected (dashed), against n; one colour per entry. Each "
        "(dataset, data size) cell contributes the samples of the seed that searched the most settings; curves "
        "are averaged over the regime cell's cells, up to the smallest search among them. A curve still rising "
        "at its right end says more samples would likely have found a better setting; an entry run at a single "
        "setting is a lone point at n = 1.",
    )


def _search_edges(doc: Document, analysis: Analysis) -> None:
    """The subsection "Did the search find its optimum?": per strategy, how many selections lie inside or on an
    edge of the values tried (``Analysis.edge_counts``), and which (cell, entry, dimension) sit on an edge."""
    doc.heading("Did the search find its optimum?", 3)
    edges = analysis.edges()
    if edges.empty:
        doc.para("No (cell, entry) searched a dimension with two or more values, so no selection can sit on an edge.")
        return
    doc.para(
        "For each (cell, entry) and searched dimension, where the selected value lies among the values the "
        "search tried (finished, stopped and diverged samples alike): interior, or the lowest (lower edge) or "
        "highest (upper edge) value tried. A selection on an edge was not bracketed by the search: the optimum "
        "may lie beyond what was tried."
    )
    counts = analysis.edge_counts()
    always = ["strategy", "interior", "lower edge", "upper edge", "total"]
    doc.table(counts[[c for c in counts.columns if c in always or counts[c].any()]])
    on_edge = edges[edges["position"].isin(("lower edge", "upper edge"))]
    if on_edge.empty:
        doc.para("Every selection lies inside the values tried.")
        return
    doc.para(
        "Selections on an edge of what was tried: "
        + "; ".join(
            f"{r.dataset} {r.data}, {r.entry}: {r.dimension} = {_value_text(r.value)} ({r.position} of "
            f"{r.tried} values tried)"
            for r in on_edge.itertuples()
        )
        + "."
    )


def _value_text(value: object) -> str:
    """A hyperparameter value as the selection labels write it: 0.01, 64, adamw."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _seed_variance(doc: Document, table: pd.DataFrame) -> None:
    """Only where a suite crossed data seeds with training seeds (`grid.data_seed`)."""
    if table.empty:
        return
    doc.heading("Where a cell's variance comes from: the data drawn, or the training seed", 3)
    doc.para(
        "Cells whose training subsets were drawn by several data seeds, each crossed with several training seeds: "
        "a two-way random-effects ANOVA (one run per pair) splits the variance of test top-1 into the data draw's "
        "share, the training seed's share and the rest (their interaction and noise)."
    )
    shown = table.assign(**{c: table[c].map(lambda v: f"{100 * v:.0f}%" if pd.notna(v) else "") for c in
                            ("share_data", "share_train", "share_residual")})  # fmt: skip
    doc.table(shown.round(2))


def _section_transferability(doc: Document, points: pd.DataFrame) -> None:
    doc.heading("6. Transferability estimates against outcomes")
    if points.empty:
        doc.para(
            "Similarity and transferability were not measured in these runs (the `similarity_score` and "
            "`transferability` columns are empty), so there is nothing to compare with the outcomes."
        )
        return
    doc.para(
        "Each point is one (dataset, backbone) pair at the dataset's largest data size: the estimate computed "
        "before training against the measured test top-1 (best pretrained strategy, and linear probe) and "
        "the gain of pretraining. The rank correlation (Kendall tau-b, Spearman rho beside it) asks whether an "
        "estimate orders the backbones as training does; per dataset it needs at least three backbones, and "
        "the pooled one also mixes datasets of different difficulty. `transferability` is LogME."
    )
    correlations = rank_correlations(points)
    doc.table(correlations if not correlations.empty else pd.DataFrame({"note": ["fewer than 3 points to correlate"]}))
    if "transferability" in points:
        doc.figure(
            "transferability",
            figs.transferability_figure(
                points,
                "transferability",
                "best_top1",
                "transferability estimate (LogME, higher = better)",
                "best pretrained test top-1 (%)",
                "Transferability estimate against measured accuracy",
            ),
            "Transferability of the frozen features against the best measured test top-1, per (dataset, backbone).",
        )
    if "similarity_score" in points and "pretraining_gain" in points:
        doc.figure(
            "similarity_gain",
            figs.transferability_figure(
                points,
                "similarity_score",
                "pretraining_gain",
                "source-domain similarity score",
                "pretrained − scratch top-1 (points)",
                "Similarity to ImageNet against what pretraining buys",
            ),
            "Measured similarity to the pretraining data against the gain of pretraining, per (dataset, backbone).",
        )
    doc.table(points.round(3))


def _section_reproduce(doc: Document, data: RunData, excluded: pd.DataFrame, names: pd.DataFrame) -> None:
    doc.heading("7. Suite, environment and failed trials")
    if not names.empty:
        doc.para("The datasets above, by the name shown, and the data each name stands for:")
        doc.table(names)
    for run_dir in data.run_dirs:
        key = str(run_dir)
        doc.heading(f"Run `{run_dir}`", 3)
        env = data.envs.get(key) or {}
        if env:
            packages = env.get("packages") or {}
            facts = {
                k: env.get(k)
                for k in (
                    "started_at",
                    "bench_version",
                    "git_sha",
                    "python",
                    "platform",
                    "host",
                    "cpu_count",
                    "memory_gb",
                    "cuda",
                    "gpus",
                )
                if env.get(k) not in (None, "", [])
            }
            facts.update({f"package {k}": v for k, v in packages.items() if v})
            sessions = env.get("sessions")
            if isinstance(sessions, list) and len(sessions) > 1:
                facts["sessions (resumes)"] = len(sessions)
            doc.table(
                pd.DataFrame(
                    {
                        "environment": list(facts),
                        "value": [json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in facts.values()],
                    }
                )
            )
        else:
            doc.para("No env.json in this run folder.")
        suite = data.suites.get(key) or {}
        if suite:
            doc.para("Resolved suite (rerun it with `bench run` to reproduce):")
            doc.pre(yaml.safe_dump(suite, sort_keys=False).strip())
        else:
            doc.para("No suite.yaml in this run folder.")
    doc.heading("Failed and diverged trials", 3)
    if excluded.empty:
        doc.para("None: every trial finished with a test accuracy.")
    else:
        doc.para(f"{len(excluded)} trial(s) left out of every statistic above:")
        doc.table(excluded)
    if data.problems:
        doc.heading("Unreadable or incomplete files", 3)
        doc.bullets(data.problems)
