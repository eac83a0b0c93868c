"""``python -m benchmarks [flags]``: the training-throughput benchmark (see ``benchmarks.throughput``)."""

import sys

from .throughput import main

sys.exit(main(sys.argv[1:]))
