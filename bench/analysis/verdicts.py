"""Regime verdicts: the measured 2x3 matrix (similarity regime x data regime) against the textbook advice.

The textbook (docs/design.md, "What it answers"): high similarity, freeze the backbone; low similarity with
enough data, fine-tune; little data, no safe recipe. `matrix_of` reads a regime leaderboard and says, per regime
cell, whether the measurements agree with that advice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.cells import DATA_REGIMES, SIMILARITY_REGIMES
from bench.analysis.paired import holm, paired_difference, verdict_of
from bench.analysis.stats import intervals_overlap
from bench.analysis.tables import cost_text, pct

ALPHA = 0.05  # family-wise error rate of the matrix's verdicts (Holm over its comparisons)
EQUIVALENCE_POINTS = 2.0  # "no strategy reliably better": the paired 95% interval lies within +-2 points
MIN_SEEDS = 5  # fewer paired seeds than this: the verdict stands, its reason says it rests on too few

# The textbook matrix: advice text and the strategies that count as following it.
_FINE_TUNE = {"full", "lp_ft"}


def textbook_advice(similarity_regime: str, data_regime: str) -> tuple[str, set[str] | None]:
    """(advice, strategies that follow it); None = "no safe recipe", judged by whether any strategy wins."""
    if similarity_regime == "high":
        return "linear probe (feature extraction)", {"linear_probe"}
    if data_regime == "sufficient":
        return "full fine-tune", _FINE_TUNE
    return "no safe recipe (risk of overfitting)", None


def matrix_of(board: pd.DataFrame, seeds: pd.DataFrame | None = None, metric: str = "metric_top1") -> pd.DataFrame:
    """The measured 2x3 matrix beside the textbook one, from a regime leaderboard (`regime_board`) and its
    per-seed values (`regime_seeds`): one row per (similarity regime, data regime).

    best_*: the best entry of the cell; runner_up_*: the best entry of a different strategy (pretrained vs
    scratch counts as different); margin = best mean - runner-up mean.

    verdict (paired, the one to read): each cell makes one comparison on the per-seed values its entries share
    (same seeds, so same data subsets and head initialisations): the difference a - b per seed, its mean
    (effect), Student-t 95% interval (effect_ci_low/high) and paired t-test p (p_value), with Holm's correction
    over the matrix's comparisons (p_holm, family-wise ALPHA).
    - cells with advice (high: linear probe; low + sufficient: full or lp_ft): a = the best entry that follows
      the advice, b = the best one that does not. "confirmed" when a is higher and p_holm < ALPHA, "refuted"
      when b is higher and p_holm < ALPHA, else "inconclusive".
    - low + scarce/limited ("no safe recipe": no strategy reliably better): a = the best entry, b = the runner-up.
      "refuted" when p_holm < ALPHA (a recipe exists here), "confirmed" when the 95% interval of the difference
      lies within +-EQUIVALENCE_POINTS (an equivalence test: the two are within 2 points), else "inconclusive".
    a_entry, b_entry: the entries compared. n_pairs: the seeds the comparison rests on; with fewer than
    MIN_SEEDS the reason says so. Without `seeds` (or with fewer than 2 pairs) the verdict is "inconclusive".
    interval_verdict (the earlier, unpaired rule, kept for comparison with earlier findings): the same pairs
    compared by their independent 95% intervals: "agrees", "disagrees" or "no clear winner" (docs/design.md).
    A cell with no trial has verdict "not measured". similarity_source says whether the similarity regime was
    measured or taken from the declared dataset group (natural = high, others = low). hyperparameters: "tuned"
    where every cell of the best and the runner-up entries selected its setting among several on validation,
    "fixed" where none did, "partly tuned" otherwise; trials_run / trials_stopped / compute_seconds: what every
    entry of the regime cell cost, its search included.
    """
    rows = []
    for sim in SIMILARITY_REGIMES:
        for data in DATA_REGIMES:
            advice, advised = textbook_advice(sim, data)
            cell = (
                board[(board["similarity_regime"] == sim) & (board["data_regime"] == data)]
                if not board.empty
                else board
            )
            row: dict[str, object] = {"similarity_regime": sim, "data_regime": data, "advice": advice}
            if cell.empty:
                rows.append({**row, "verdict": "not measured", "reason": "no trial in this cell", "n_pairs": 0})
                continue
            cell = cell.sort_values(["mean", "entry"], ascending=[False, True])
            key = cell["strategy"] + np.where(cell["pretrained"].astype(bool), "", " (scratch)")
            best = cell.iloc[0]
            others = cell[key != key.iloc[0]]
            runner = others.iloc[0] if not others.empty else None
            row.update(
                best_entry=best["entry"],
                best_strategy=key.iloc[0],
                mean=best["mean"],
                ci95=best["ci95"],
                ci_low=best["ci_low"],
                ci_high=best["ci_high"],
                n_seeds=best["n_seeds"],
                runner_up_entry=None if runner is None else runner["entry"],
                runner_up_strategy=None if runner is None else key.loc[runner.name],
                runner_up_mean=np.nan if runner is None else runner["mean"],
                margin=np.nan if runner is None else best["mean"] - runner["mean"],
                datasets=", ".join(sorted(set(", ".join(cell["datasets"]).split(", ")))),
                similarity_source=", ".join(sorted(set(", ".join(cell["similarity_source"]).split(", ")) - {""})),
                hyperparameters=_tuning(cell.iloc[[0]] if runner is None else cell.loc[[best.name, runner.name]]),
                trials_run=int(cell["trials_run"].sum()),
                trials_stopped=int(cell["trials_stopped"].sum()),
                compute_seconds=float(cell["compute_seconds"].sum()),
            )
            row["interval_verdict"], row["interval_reason"] = _verdict(cell, key, advised)
            row.update(_paired(cell, key, advised, seeds, metric))
            rows.append(row)
    return _holm_verdicts(pd.DataFrame(rows))


def _comparison(cell: pd.DataFrame, key: pd.Series, advised: set[str] | None) -> tuple[pd.Series, pd.Series] | None:
    """(a, b) of a regime cell (see `matrix_of`), or None when the cell has nothing to compare."""
    if advised is None:
        others = cell[key != key.iloc[0]]
        return None if others.empty else (cell.iloc[0], others.iloc[0])
    follows = cell["strategy"].isin(advised) & cell["pretrained"].astype(bool)
    if not follows.any() or follows.all():
        return None
    return cell[follows].iloc[0], cell[~follows].iloc[0]


def _paired(
    cell: pd.DataFrame, key: pd.Series, advised: set[str] | None, seeds: pd.DataFrame | None, metric: str
) -> dict[str, object]:
    """The cell's paired comparison: comparison, effect, its interval, p_value, n_pairs and a provisional
    verdict/reason (`_holm_verdicts` settles them once every p value of the matrix is known)."""
    pair = _comparison(cell, key, advised)
    out: dict[str, object] = {"kind": "no recipe" if advised is None else "advice"}
    if pair is None:
        reason = "only one strategy measured" if advised is None else "the advised strategy was not compared"
        return {**out, "verdict": "inconclusive", "reason": reason, "n_pairs": 0}
    a, b = pair
    out.update(comparison=f"{key.loc[a.name]} vs {key.loc[b.name]}", a_entry=a["entry"], b_entry=b["entry"])
    if seeds is None or seeds.empty:
        return {**out, "verdict": "inconclusive", "reason": "no per-seed values to pair", "n_pairs": 0}
    regime = (seeds["similarity_regime"] == a["similarity_regime"]) & (seeds["data_regime"] == a["data_regime"])
    values = {
        side: seeds[regime & (seeds["entry"] == row["entry"])].set_index("seed")[metric]
        for side, row in (("a", a), ("b", b))
    }
    result = paired_difference(values["a"], values["b"])
    out.update(
        n_pairs=result.n,
        effect=result.mean_diff,
        effect_ci_low=result.ci_low,
        effect_ci_high=result.ci_high,
        effect_boot_low=result.boot_low,
        effect_boot_high=result.boot_high,
        p_value=result.p_value,
        _result=result,
    )
    return out


def _holm_verdicts(matrix: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjust the matrix's p values together and read each compared cell's verdict (rules in `matrix_of`)."""
    if "p_value" not in matrix:
        return matrix
    matrix["p_holm"] = holm(matrix["p_value"].astype(float).to_numpy())
    for i, row in matrix[matrix["_result"].notna()].iterrows():
        effect, low, high, p = row["effect"], row["effect_ci_low"], row["effect_ci_high"], row["p_holm"]
        if pd.isna(p):
            matrix.loc[i, ["verdict", "reason"]] = ["inconclusive", f"{row['comparison']}: fewer than 2 paired seeds"]
            continue
        if row["kind"] == "advice":
            verdict = verdict_of(row["_result"], p, ALPHA, expected_sign=1)
        elif p < ALPHA:
            verdict = "refuted"
        else:
            verdict = "confirmed" if low >= -EQUIVALENCE_POINTS and high <= EQUIVALENCE_POINTS else "inconclusive"
        reason = (
            f"{row['comparison']}: {effect:+.1f} pts [{low:+.1f}, {high:+.1f}], Holm p = {p:.3g}, "
            f"{int(row['n_pairs'])} paired seeds"
        )
        if row["n_pairs"] < MIN_SEEDS:
            reason += f" (fewer than {MIN_SEEDS}: weak evidence)"
        matrix.loc[i, ["verdict", "reason"]] = [verdict, reason]
    return matrix.drop(columns="_result")


def _tuning(entries: pd.DataFrame) -> str:
    if (entries["tuned_cells"] == entries["n_cells"]).all():
        return "tuned"
    return "fixed" if (entries["tuned_cells"] == 0).all() else "partly tuned"


def _verdict(cell: pd.DataFrame, key: pd.Series, advised: set[str] | None) -> tuple[str, str]:
    def separated(a: pd.Series, b: pd.Series) -> bool | None:
        if a["n_seeds"] < 2 or b["n_seeds"] < 2:
            return None
        return not intervals_overlap(a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"])

    pretrained = cell["pretrained"].astype(bool)
    if advised is None:
        best = cell.iloc[0]
        others = cell[key != key.iloc[0]]
        if others.empty:
            return "no clear winner", "only one strategy measured"
        sep = separated(best, others.iloc[0])
        if sep is None:
            return "no clear winner", "fewer than 2 seeds: no interval"
        if sep:
            return "disagrees", f"{key.iloc[0]} beats {key.loc[others.index[0]]} beyond the 95% intervals"
        return "agrees", f"{key.iloc[0]} and {key.loc[others.index[0]]} overlap: no strategy reliably better"
    follows = cell["strategy"].isin(advised) & pretrained
    if not follows.any():
        return "no clear winner", "the advised strategy was not measured"
    if follows.all():
        return "agrees", "only the advised strategy was measured"
    a, b = cell[follows].iloc[0], cell[~follows].iloc[0]
    sep = separated(a, b)
    if sep is None:
        return "no clear winner", "fewer than 2 seeds: no interval"
    if not sep:
        return "no clear winner", f"{key.loc[a.name]} and {key.loc[b.name]} overlap"
    if a["mean"] > b["mean"]:
        return "agrees", f"{key.loc[a.name]} beats {key.loc[b.name]} beyond the 95% intervals"
    return "disagrees", f"{key.loc[b.name]} beats {key.loc[a.name]} beyond the 95% intervals"


def verdict_lines(matrix: pd.DataFrame) -> pd.DataFrame:
    """The verdict columns of `display_matrix` alone, for the end of `bench run`."""
    shown = display_matrix(matrix)
    return shown[
        [c for c in ("similarity", "data", "comparison", "effect (pts, 95% CI)", "Holm p", "seeds", "verdict")]
    ]


def display_matrix(matrix: pd.DataFrame, board: pd.DataFrame | None = None) -> pd.DataFrame:
    """The regime matrix as a reader wants it: one row per regime cell, the paired verdict first.

    Columns: similarity, data, textbook, comparison (a vs b), "effect (pts, 95% CI)" (mean per-seed difference
    a - b with its Student-t interval, "+3.1 [+1.2, +5.0]"), "Holm p", seeds (paired seeds), verdict, why (its
    reason), best strategy and its "top-1 % (95% CI)", hyperparameters; "search cost" where some cell was tuned;
    the fixed-vs-tuned columns where the matrix has fixed_verdict.

    `board`: the regime leaderboard of the same rows (``Analysis.leaderboard("regime")``). With it, "edge
    selections" (the compared entries' edge_selections summed; the best entry's where nothing was compared) and,
    where the board has converged_share, "converged" (the lower share of the compared entries, percent); a
    verdict whose compared entries have a share below 90% gets "; rests on unconverged trials" in its why.
    Cells without a paired comparison leave the comparison columns blank.
    """

    def compared(r: pd.Series) -> pd.DataFrame:
        """The board rows of the entries the cell compared (a_entry, b_entry); the best entry where there is no
        comparison."""
        cell = board[
            (board["similarity_regime"] == r["similarity_regime"]) & (board["data_regime"] == r["data_regime"])
        ]
        names = [r.get(c) for c in ("a_entry", "b_entry") if isinstance(r.get(c), str)] or [r.get("best_entry")]
        return cell[cell["entry"].isin(names)]

    def number(value: object) -> float:
        return float(value) if value is not None and pd.notna(value) else np.nan

    quality = board is not None and not board.empty and "edge_selections" in board
    converged = quality and "converged_share" in board and board["converged_share"].notna().any()
    tuned = "trials_run" in matrix and matrix["hyperparameters"].isin(("tuned", "partly tuned")).any()
    out = []
    for _, r in matrix.iterrows():
        measured = r.get("verdict") != "not measured"
        effect, low, high = (number(r.get(c)) for c in ("effect", "effect_ci_low", "effect_ci_high"))
        p_holm, n_pairs = number(r.get("p_holm")), number(r.get("n_pairs"))
        if np.isnan(effect):
            effect_text = ""
        elif np.isnan(low):
            effect_text = f"{effect:+.1f}"
        else:
            effect_text = f"{effect:+.1f} [{low:+.1f}, {high:+.1f}]"
        row: dict[str, object] = {
            "similarity": r["similarity_regime"],
            "data": r["data_regime"],
            "textbook": r["advice"],
            "comparison": r.get("comparison") if isinstance(r.get("comparison"), str) else "",
            "effect (pts, 95% CI)": effect_text,
            "Holm p": "" if np.isnan(p_holm) else f"{p_holm:.3g}",
            "seeds": int(n_pairs) if n_pairs > 0 else "",
            "verdict": r["verdict"],
            "why": r["reason"],
            "best strategy": r.get("best_entry", "") if measured else "",
            "top-1 % (95% CI)": pct(r["mean"], r["ci95"]) if measured else "",
            "hyperparameters": r.get("hyperparameters", "") if measured else "",
        }
        if tuned:
            row["search cost"] = (
                cost_text(r["trials_run"], r["trials_stopped"], r["compute_seconds"]) if measured else ""
            )
        entries = compared(r) if quality and measured else pd.DataFrame()
        if quality:
            row["edge selections"] = int(entries["edge_selections"].sum()) if not entries.empty else ""
        if converged:
            share = entries["converged_share"].min() if not entries.empty else np.nan
            row["converged"] = f"{100 * share:.0f}%" if pd.notna(share) else ""
            if pd.notna(share) and share < 0.9:
                row["why"] = f"{row['why']}; rests on unconverged trials"
        if "fixed_verdict" in matrix:
            row["at fixed hyperparameters"] = (
                r["fixed_verdict"]
                if r["fixed_verdict"] == "not measured"
                else f"{r['fixed_verdict']} ({r['fixed_best_entry']})"
            )
            row["verdict changed"] = {True: "yes", False: "no"}.get(r["verdict_changed"], "")
        out.append(row)
    return pd.DataFrame(out)
