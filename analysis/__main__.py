"""``python -m analysis STUDY_DIR [--out DIR]``: build the report of a study dir (same as ``study report``)."""

from __future__ import annotations

import argparse
import sys

from .report import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("study_dir", help="the study dir (Ray experiment folders + spec.yaml + optuna.db)")
    parser.add_argument("--out", default=None, help="where report.md/.html, tables/ and figures/ go "
                        "(default: the study dir)")
    parser.add_argument("--baseline", default=None, help="the method the heatmap compares against "
                        "(default: kd, else ce, else the first method)")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.study_dir, args.out, baseline=args.baseline)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    print(f"        {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
