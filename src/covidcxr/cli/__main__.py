"""``python -m covidcxr.cli``: the ``covidcxr`` command (torchrun and the benchmarks start it this way)."""

import sys

from . import main

sys.exit(main())
