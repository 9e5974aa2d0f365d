"""bench: transfer-learning benchmarks for image classification.

One shared core (`bench.core.run_trial`) runs every trial; Ray Tune (`bench.tune`) schedules the grid a suite
file (`bench.suite`) describes; results land in Parquet (`bench.results`) and become leaderboards and reports.
"""

__version__ = "0.1.0"
