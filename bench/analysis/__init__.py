"""Everything computed from trial rows, by concern: cells and labels (`cells`), statistics over seeds (`stats`),
hyperparameter selection and search cost (`selection`), leaderboards (`tables`), regime verdicts (`verdicts`) and
the report's outcome analyses (`outcomes`), behind one object, `Analysis`, that computes each once."""

from bench.analysis.analysis import Analysis

__all__ = ["Analysis"]
