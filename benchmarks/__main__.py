"""``python -m benchmarks [flags]``: the training-throughput benchmark (``benchmarks.cli``); a first word
picks another benchmark: ``report`` (the report and ``study status`` at Table-1 scale,
``benchmarks.report_scale``), ``methods`` (each method's step time relative to ``kd``,
``benchmarks.method_cost``), ``stream`` (a search-like stage with and without the teacher stream,
``benchmarks.stream``) or ``study`` (a spec run sequential then concurrent, ``benchmarks.study_order``)."""

import importlib
import sys

SUBCOMMANDS = {"report": "benchmarks.report_scale", "stream": "benchmarks.stream", "study": "benchmarks.study_order",
               "methods": "benchmarks.method_cost"}

word = sys.argv[1] if len(sys.argv) > 1 else None
if word in SUBCOMMANDS:
    sys.exit(importlib.import_module(SUBCOMMANDS[word]).main(sys.argv[2:]))
from .cli import main  # noqa: E402 - only the training benchmark needs torch's import at start-up

sys.exit(main(sys.argv[1:]))
