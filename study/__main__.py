"""``python -m study run|resume|status|report|teachers|validate|bench``.

Exit status of ``run``/``resume``: 0 every trial finished, 1 the study failed (a teacher did not train, some
trials errored, a stage ended with no finished trial), 2 bad input (spec, flags, study dir, resources no node
can host, a study dir another driver holds; nothing was started or written), 130 interrupted (resume later).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int = EXIT_INPUT) -> int:
    print(f"study: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return code


def _spec_sets(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    if getattr(args, "storage_path", None):
        sets.append(f"storage_path={args.storage_path}")
    if getattr(args, "name", None):
        sets.append(f"name={args.name}")
    return sets


def _is_study_dir(path: str) -> bool:
    return (Path(path) / "study.json").is_file()


def cmd_validate(args: argparse.Namespace) -> int:
    from .runner import study_dir_for
    from .spec import load_spec
    from .tuner import plan

    spec = load_spec(args.spec, _spec_sets(args))
    print(f"spec {args.spec} is valid; study dir: {study_dir_for(spec)}")
    for stage in plan(spec):
        what = "train teachers" if stage.kind == "teachers" else f"{stage.kind} of {stage.method}"
        print(f"  stage {stage.name}: {what}" + (f" on {stage.pair}" if stage.pair else ""))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, kinds: tuple[str, ...] | None = None) -> int:
    from .runner import run_study, study_dir_for
    from .spec import load_spec

    spec = load_spec(args.spec, _spec_sets(args))
    study_dir = study_dir_for(spec)
    if study_dir.exists():
        return _fail(f"study dir {study_dir} already exists: continue it with `python -m study resume {study_dir}` "
                     "or pick another --name")
    run_study(spec, study_dir, address=args.address, kinds=kinds, verbose=args.verbose,
              report=False if args.no_report else None)
    return _exit_status(study_dir)


def cmd_resume(args: argparse.Namespace) -> int:
    from .runner import load_study_spec, run_study

    if not _is_study_dir(args.dir):
        return _fail(f"{args.dir} is not a study dir (no study.json); start one with `python -m study run SPEC`")
    spec = load_study_spec(Path(args.dir))
    run_study(spec, Path(args.dir), address=args.address, resume=True, retry_errored=args.retry_errored,
              verbose=args.verbose, report=False if args.no_report else None)
    return _exit_status(Path(args.dir))


def _exit_status(study_dir: Path) -> int:
    """1 (with one line: how many errored, the first error, where to look) unless every trial finished."""
    from .runner import study_outcome

    outcome = study_outcome(study_dir)
    return _fail(outcome.message(study_dir), EXIT_FAILED) if outcome.failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .state import status_table, trial_rows

    if not _is_study_dir(args.dir):
        return _fail(f"{args.dir} is not a study dir (no study.json)")
    if args.json:
        rows = trial_rows(args.dir)
        print(json.dumps(rows, indent=1, default=str))
    else:
        print(status_table(args.dir))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .runner import build_report

    if not _is_study_dir(args.dir):
        return _fail(f"{args.dir} is not a study dir (no study.json)")
    message = build_report(Path(args.dir))
    print(message)
    return EXIT_OK if not message.startswith("report: failed") else EXIT_FAILED


def cmd_teachers(args: argparse.Namespace) -> int:
    """A study dir: list its teachers. A spec: train the teachers it needs (the teacher stage only)."""
    if _is_study_dir(args.target):
        from .layout import load_manifest

        manifest = load_manifest(args.target)
        teachers = manifest.get("teachers", {})
        from .runner import load_study_spec

        spec = load_study_spec(Path(args.target))
        given = spec.data["teacher"]["checkpoints"]
        if not teachers and not given:
            print("no teachers yet (the teacher stage has not finished)")
        for arch, path in given.items():
            print(f"{arch}: given checkpoint {path}")
        for arch, info in teachers.items():
            val = info.get("val/top1")
            val_text = f"{val:.2f}" if isinstance(val, (int, float)) else "-"
            print(f"{arch}: trained, val/top1 {val_text}, checkpoint {info['checkpoint']}, "
                  f"trajectory {info['trajectory']}")
        return EXIT_OK
    if not Path(args.target).is_file():
        return _fail(f"{args.target} is neither a study dir nor a spec file")
    args.spec = args.target
    return cmd_run(args, kinds=("teachers",))


def cmd_bench(argv: list[str]) -> int:
    """Hand the raw argument tail to the benchmark (``python -m benchmarks``): its flags, its ``--help``.

    Not parsed here: argparse would claim a leading ``--flag`` (``bench --json``) or ``--help`` itself.
    """
    from benchmarks.cli import main as bench_main

    return int(bench_main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study", description="Knowledge-distillation studies on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True)

    def spec_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage-path", help="folder that holds study dirs (default: the spec's storage_path)")
        p.add_argument("--name", help="study name = study dir name (default: the spec's name or file name)")
        p.add_argument("--set", action="append", metavar="KEY.SUB=VALUE",
                       help="override a spec key (value parsed as YAML); repeatable")

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None,
                       help="Ray cluster to join (host:port or 'auto'; default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2, 3), help="Ray Tune verbosity (default 1)")
        p.add_argument("--no-report", action="store_true", help="skip the report at the end")

    p = sub.add_parser("run", help="validate a spec, create the study dir and run it")
    p.add_argument("spec")
    spec_options(p)
    run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a spec and print its stages; starts nothing")
    p.add_argument("spec")
    spec_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("resume", help="continue a study after Ctrl-C, a crash or a restart")
    p.add_argument("dir")
    p.add_argument("--retry-errored", action="store_true", help="also resume errored trials from their checkpoints")
    run_options(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="one row per trial, read from the study dir (Ray not needed)")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="machine-readable rows")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="build the study's report (analysis package)")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("teachers", help="SPEC: train the spec's teachers; DIR: list a study's teachers")
    p.add_argument("target")
    spec_options(p)
    run_options(p)
    p.set_defaults(func=cmd_teachers)

    # listed for --help only: main() hands everything after 'bench' to the benchmark unparsed
    sub.add_parser("bench", help="throughput benchmark: every flag of `python -m benchmarks` (see bench --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    if args.func in (cmd_status, cmd_report):  # plain file reading: no torch, no Ray
        return int(args.func(args) or 0)
    from trainables.errors import PlatformError

    from .runner import Interrupted, StudyError

    try:
        return int(args.func(args) or 0)
    except PlatformError as err:  # SpecError and every other input problem: one line, exit 2
        return _fail(str(err))
    except StudyError as err:
        return _fail(str(err), EXIT_FAILED)
    except (Interrupted, KeyboardInterrupt) as err:
        text = str(err) or "interrupted"
        print(f"study: {text}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
