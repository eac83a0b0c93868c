"""The benchmark's command line (``python -m benchmarks``, ``python -m study bench``).

It sits above both loops' modules: ``benchmarks.throughput`` (one trial) and ``benchmarks.packing``
(N concurrent trials) each know nothing of the other's entry point.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from .packing import run_pack
from .throughput import LOOPS, build_parser, format_text, machine_info, run_single, settings_from_args


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print text (or one JSON object with ``--json``). Returns the exit status."""
    args = build_parser().parse_args(argv)
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    bad = [name for name in loops if name not in LOOPS]
    if bad or not loops:
        raise SystemExit(f"--loops takes a comma-separated subset of {', '.join(LOOPS)}; got '{args.loops}'")
    settings, device, note = settings_from_args(args)
    if args.pack and args.pack < 1:
        raise SystemExit("--pack takes a number of trials >= 1")
    if args.pack and args.pack_backend == "ray" and not _importable("ray"):
        print("error: --pack-backend ray needs Ray, which is not installed here; --pack-backend processes "
              "packs the trials without it", file=sys.stderr)
        return 2
    if args.pack:
        result = run_pack(settings, args.pack, loops, backend=args.pack_backend)
    else:
        result = run_single(settings, loops, args.order)
    result["settings"] = asdict(settings)
    result["machine"] = machine_info(device)
    result["notes"] = [note] if note else []
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(format_text(result))
    sys.stdout.flush()
    return 0
