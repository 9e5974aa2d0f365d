"""`python -m bench.perf`: plain against optimised trials (see ``bench.perf.main``)."""

import sys

from bench.perf.main import main

sys.exit(main())
