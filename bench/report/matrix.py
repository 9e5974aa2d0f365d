"""Section 1 of the report: the regime matrix, measured, with its paired verdicts and what they rest on (seeds,
the earlier unpaired rule, convergence)."""

from __future__ import annotations

import pandas as pd

from bench.analysis import Analysis
from bench.analysis.tables import display_leaderboard
from bench.analysis.verdicts import ALPHA, EQUIVALENCE_POINTS, MIN_SEEDS, display_matrix
from bench.report import figures as figs
from bench.report.render import Document


def section_matrix(doc: Document, analysis: Analysis) -> None:
    """Section 1: the textbook matrix, the measured one (figure and table), the verdict rule and its evidence."""
    doc.heading("1. The regime matrix, measured")
    matrix = analysis.matrix()
    prepared = analysis.prepared
    # The rows the matrix was measured on: the tuned runs' where fixed runs sit beside them (`Analysis.matrix`).
    measured = analysis.of_runs(analysis.tuned_runs) if "fixed_verdict" in matrix else analysis
    regime_board = measured.leaderboard("regime")
    doc.para("The textbook advice (the project's starting notes):")
    doc.table(
        pd.DataFrame(
            {
                "": ["high similarity to ImageNet", "low similarity"],
                "plenty of labels": [
                    "freeze the backbone, train the head (feature extraction)",
                    "fine-tune (train everything)",
                ],
                "few labels": ["freeze the backbone, train the head only", "hard: risk of overfitting; no safe recipe"],
            }
        )
    )
    doc.figure(
        "regime_matrix",
        figs.regime_matrix_figure(matrix),
        "Measured regime matrix. Each box: the best entry and its test top-1 with 95% interval, the two entries "
        "the verdict compares with the paired effect (points, 95% interval), Holm-adjusted p and paired seeds, "
        "the textbook advice, and the verdict (colour: green confirmed, vermillion refuted, yellow "
        "inconclusive, grey not measured).",
        alt="Regime matrix: similarity (high, low) by data regime (scarce, limited, sufficient)",
    )
    shown = display_matrix(matrix, regime_board)
    doc.table(shown)
    doc.para(
        "Verdict rule (paired). Each regime cell makes one comparison between two entries, a and b, on the seeds "
        "they share (a seed fixes the data subset and the head's initialisation, so the two differ only by "
        "strategy): per seed, each entry's test top-1 is averaged over the (dataset, data size) cells common to "
        "the regime cell's entries, and the effect is the mean difference a − b over seeds (points) with its "
        "95% Student-t interval. The paired t-test's p values are adjusted together with Holm's method over "
        f"the matrix's comparisons, so that the family-wise error rate is {ALPHA:g}. Where the textbook advises "
        "a strategy (high similarity: linear probe; low similarity with sufficient data: full fine-tuning or "
        "lp_ft), a is the best entry that follows the advice and b the best one that does not: **confirmed** "
        f"when a is higher with Holm p < {ALPHA:g}, **refuted** when b is higher with Holm p < {ALPHA:g}, "
        "**inconclusive** otherwise. Where the textbook has no safe recipe (low similarity, scarce or limited "
        "data), a is the best entry and b the best entry of another strategy: **refuted** when they differ with "
        f"Holm p < {ALPHA:g} (a recipe exists there), **confirmed** when the 95% interval of the difference "
        f"lies within ±{EQUIVALENCE_POINTS:g} points (an equivalence margin: no strategy reliably better), "
        "**inconclusive** otherwise. Scratch training counts as a strategy other than the advised one. A "
        f"comparison on fewer than {MIN_SEEDS} paired seeds keeps its verdict, and its reason flags it as weak "
        "evidence."
    )
    doc.para(_seeds_text(matrix) + " " + _interval_text(matrix))
    convergence = _convergence_text(measured.selected, shown)
    if convergence:
        doc.para(convergence)
    declared = prepared[prepared["similarity_source"] == "declared"]["dataset"].unique()
    if len(declared):
        doc.para(
            "Similarity regime: not measured for "
            + ", ".join(f"`{d}`" for d in sorted(declared))
            + "; their declared VTAB group stands in (natural = high, specialized and structured = low)."
        )
    unknown = prepared[prepared["similarity_regime"].isna()]["dataset"].unique()
    if len(unknown):
        doc.para(
            "Left out of the matrix (no similarity and no declared group): "
            + ", ".join(f"`{d}`" for d in sorted(unknown))
            + "."
        )
    tuning = set(matrix.get("hyperparameters", pd.Series(dtype=object)).dropna()) - {""}
    if "fixed_verdict" in matrix:
        runs = analysis.tuned_runs
        changed = matrix[matrix["verdict_changed"] == True]  # noqa: E712 (None where not measured in both)
        doc.para(
            f"These runs hold both a hyperparameter search ({len(runs)} run(s)) and runs at fixed hyperparameters: "
            "the matrix above is the search's, each strategy at its own validation-selected setting; the column "
            "'at fixed hyperparameters' gives the fixed runs' verdict for the same regime cell. "
            + (
                f"Tuning changed {len(changed)} verdict(s): "
                + "; ".join(
                    f"{r.similarity_regime} similarity, {r.data_regime} data: {r.fixed_verdict} -> {r.verdict}"
                    for r in changed.itertuples()
                )
                + "."
                if len(changed)
                else "Tuning changed no verdict."
            )
        )
    elif tuning - {"fixed"}:
        doc.para(
            "Hyperparameters: 'tuned' verdicts compare each strategy at its own setting, selected on validation "
            "top-1 among a search's samples in every cell (section 5 lists them); 'search cost' counts every "
            "trial behind the regime cell, stopped samples included; 'edge selections' counts the compared "
            "entries' searched dimensions whose selected value is the lowest or highest value tried (section 5, "
            "'Did the search find its optimum?')."
        )
    else:
        doc.para(
            "Hyperparameters: every verdict here compares strategies at the suite's fixed hyperparameters; a "
            "strategy's result may depend on them (a `search:` block in the suite tunes each strategy instead)."
        )
    if not regime_board.empty:
        doc.heading("Ranking inside each regime cell", 3)
        doc.table(display_leaderboard(regime_board))


def _seeds_text(matrix: pd.DataFrame) -> str:
    """How many paired seeds the verdicts rest on, and which rest on fewer than MIN_SEEDS."""
    pairs = matrix.get("n_pairs", pd.Series(0, index=matrix.index)).fillna(0).astype(int)
    compared = matrix[pairs > 0]
    if compared.empty:
        return "No regime cell has two entries measured on common seeds, so no verdict rests on a paired comparison."
    counts = pairs[pairs > 0]
    if counts.min() == counts.max():
        where = f"in each of the {len(compared)} compared regime cells" if len(compared) > 1 else "(one compared cell)"
        text = f"The verdicts rest on {counts.min()} paired seeds {where}."
    else:
        text = (
            f"The verdicts rest on {counts.min()} to {counts.max()} paired seeds: "
            + ", ".join(f"{r.similarity_regime}/{r.data_regime} {p}" for r, p in zip(compared.itertuples(), counts))
            + "."
        )
    weak = compared[counts < MIN_SEEDS]
    if len(weak):
        text += (
            f" Fewer than {MIN_SEEDS} (weak evidence): "
            + ", ".join(f"{r.similarity_regime} similarity, {r.data_regime} data" for r in weak.itertuples())
            + "."
        )
    return text


_INTERVAL_TO_PAIRED = {"agrees": "confirmed", "disagrees": "refuted", "no clear winner": "inconclusive"}


def _interval_text(matrix: pd.DataFrame) -> str:
    """The sentence on the earlier, unpaired rule, kept as interval_verdict, and where it reads differently."""
    text = (
        "The earlier, unpaired rule (the two entries' independent 95% intervals: agrees, disagrees or no clear "
        "winner) is kept as the matrix's `interval_verdict` column, for comparison with earlier reports"
    )
    if "interval_verdict" not in matrix:
        return text + "."
    rows = matrix[matrix["interval_verdict"].notna()]
    differ = rows[rows["interval_verdict"].map(_INTERVAL_TO_PAIRED) != rows["verdict"]]
    if differ.empty:
        return text + "; it reads the same as the paired rule in every measured cell."
    return (
        text
        + f"; it reads differently in {len(differ)} cell(s): "
        + "; ".join(
            f"{r.similarity_regime} similarity, {r.data_regime} data: {r.interval_verdict} (paired: {r.verdict})"
            for r in differ.itertuples()
        )
        + "."
    )


def _convergence_text(selected: pd.DataFrame, shown: pd.DataFrame) -> str:
    """Where the selected rows carry a ``converged`` flag: the share that converged, and the verdicts whose
    compared entries fall below 90% (``display_matrix`` marks their why); "" without the flag."""
    if "converged" not in selected:
        return ""
    flags = selected["converged"].astype("boolean").dropna()
    if flags.empty:
        return ""
    text = (
        f"Convergence: {int(flags.sum())} of the {len(flags)} selected trials that record it (the `converged` "
        f"column) converged ({100 * flags.mean():.0f}%)."
    )
    unconverged = shown[shown["why"].str.contains("rests on unconverged trials", regex=False)]
    if unconverged.empty:
        return text + " Every verdict's compared entries converged in at least 90% of their selected trials."
    return (
        text
        + " Verdicts resting on entries with fewer than 90% of their selected trials converged (marked in the "
        + "'why' column): "
        + "; ".join(f"{r['similarity']} similarity, {r['data']} data" for _, r in unconverged.iterrows())
        + "."
    )
