"""The research report: regime matrix, learning curves, pretraining gains, freeze profiles, cost, and
transferability estimates against outcomes, as Markdown and HTML with figures."""

from bench.report.build import build_report, report_command, write_report

__all__ = ["build_report", "report_command", "write_report"]
