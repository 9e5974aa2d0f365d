"""bench: transfer-learning benchmarks for image classification.

One shared core (`bench.training.trial.run_trial`) runs every trial; Ray Tune (`bench.runner.tune`) schedules the grid a suite
file (`bench.suite.spec`) describes; results land in Parquet (`bench.results.store`) and become leaderboards and reports.
"""

__version__ = "0.1.0"
