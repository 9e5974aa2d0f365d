"""``bench perf``: plain against optimised trials and suites, measured on this machine (docs/performance.md).

``trials``: one trial both ways; ``suites``: whole suites; ``flops``: achieved FLOP/s; ``main``: the command.
"""
