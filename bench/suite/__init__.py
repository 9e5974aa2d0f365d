"""Suite files: YAML read as hostile input, validated against a strict schema, expanded into trials.

Every mistake in a suite file is caught before anything runs and reported in one line that names the file,
the key path and what was expected.
"""

from bench.suite.reading import MAX_FILE_BYTES, MAX_NESTING, expand_vars
from bench.suite.spec import SuiteSpec
from bench.suite.suite import Suite, deep_merge, load_suite

__all__ = ["MAX_FILE_BYTES", "MAX_NESTING", "Suite", "SuiteSpec", "deep_merge", "expand_vars", "load_suite"]
