"""``python -m benchmarks [flags]``: the training-throughput benchmark (see ``benchmarks.throughput``)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
