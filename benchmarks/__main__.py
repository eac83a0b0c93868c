"""``python -m benchmarks [flags]``: the training-throughput benchmark (see ``benchmarks.throughput``);
``python -m benchmarks report [flags]``: the report and ``study status`` at Table-1 scale
(``benchmarks.report_scale``)."""

import sys

from .cli import main

if sys.argv[1:2] == ["report"]:
    from .report_scale import main as report_main

    sys.exit(report_main(sys.argv[2:]))
sys.exit(main(sys.argv[1:]))
