"""Regime verdicts: the measured 2x3 matrix (similarity regime x data regime) against the textbook advice.

The textbook (docs/design.md, "What it answers"): high similarity, freeze the backbone; low similarity with
enough data, fine-tune; little data, no safe recipe. `matrix_of` reads a regime leaderboard and says, per regime
cell, whether the measurements agree with that advice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.cells import DATA_REGIMES, SIMILARITY_REGIMES
from bench.analysis.stats import intervals_overlap
from bench.analysis.tables import cost_text, pct

# The textbook matrix: advice text and the strategies that count as following it.
_FINE_TUNE = {"full", "lp_ft"}


def textbook_advice(similarity_regime: str, data_regime: str) -> tuple[str, set[str] | None]:
    """(advice, strategies that follow it); None = "no safe recipe", judged by whether any strategy wins."""
    if similarity_regime == "high":
        return "linear probe (feature extraction)", {"linear_probe"}
    if data_regime == "sufficient":
        return "full fine-tune", _FINE_TUNE
    return "no safe recipe (risk of overfitting)", None


def matrix_of(board: pd.DataFrame) -> pd.DataFrame:
    """The measured 2x3 matrix beside the textbook one, from a regime leaderboard (`regime_board`): one row per
    (similarity regime, data regime).

    best_*: the best entry of the cell; runner_up_*: the best entry of a different strategy (pretrained vs
    scratch counts as different); margin = best mean - runner-up mean. Verdict rule:
    - cells with advice (high: linear probe; low + sufficient: full or lp_ft): compare the best entry that
      follows the advice with the best one that does not. Intervals overlap (or either has one seed): "no clear
      winner"; the advised one higher: "agrees"; lower: "disagrees".
    - low + scarce/limited ("no safe recipe"): "agrees" when the best and the runner-up overlap (no strategy
      is reliably better, as the textbook expects), "disagrees" when the best clearly beats the runner-up (a
      recipe exists here), "no clear winner" when one seed leaves no interval.
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
                rows.append({**row, "verdict": "not measured", "reason": "no trial in this cell"})
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
            row["verdict"], row["reason"] = _verdict(cell, key, advised)
            rows.append(row)
    return pd.DataFrame(rows)


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


def display_matrix(matrix: pd.DataFrame) -> pd.DataFrame:
    """The regime matrix as a reader wants it: one row per regime cell, percentages with their intervals."""
    out = []
    for _, r in matrix.iterrows():
        measured = r.get("verdict") != "not measured"
        out.append(
            {
                "similarity": r["similarity_regime"],
                "data": r["data_regime"],
                "best strategy": r.get("best_entry", "") if measured else "",
                "top-1 % (95% CI)": pct(r["mean"], r["ci95"]) if measured else "",
                "margin (pts)": f"{r['margin']:+.1f} vs {r['runner_up_entry']}"
                if measured and pd.notna(r.get("margin"))
                else "",
                "textbook": r["advice"],
                "verdict": r["verdict"],
                "why": r["reason"],
                "hyperparameters": r.get("hyperparameters", "") if measured else "",
            }
        )
        if "trials_run" in matrix and matrix["hyperparameters"].isin(("tuned", "partly tuned")).any():
            out[-1]["search cost"] = (
                cost_text(r["trials_run"], r["trials_stopped"], r["compute_seconds"]) if measured else ""
            )
        if "fixed_verdict" in matrix:
            out[-1]["at fixed hyperparameters"] = (
                r["fixed_verdict"]
                if r["fixed_verdict"] == "not measured"
                else f"{r['fixed_verdict']} ({r['fixed_best_entry']})"
            )
            out[-1]["verdict changed"] = {True: "yes", False: "no"}.get(r["verdict_changed"], "")
    return pd.DataFrame(out)
