"""``python -m trainables key=value ... --out DIR``: one trial without Ray, for debugging.

``python -m trainables docs [--check]`` regenerates (checks) the README's method tables instead.

Values are parsed as YAML scalars (``epochs=3``, ``amp=off``, ``lr_milestones=[2,4]``). ``--resume``
continues from ``DIR/checkpoint`` when it exists.

``python -m trainables convert-checkpoint DIR`` rewrites the trial checkpoints under DIR that an older
version saved with pickled RNG objects as weights-only files (``trainables.checkpoint.convert_checkpoints``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from .errors import PlatformError
from .loop import train
from .reporting import RunDirReporter


def parse_assignments(items: list[str]) -> dict:
    cfg = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got '{item}'")
        cfg[key.strip()] = yaml.safe_load(value)
    return cfg


def convert_main(argv: list[str]) -> int:
    from .checkpoint import convert_checkpoints

    parser = argparse.ArgumentParser(
        prog="python -m trainables convert-checkpoint",
        description="Rewrite old trial checkpoints (state.pt) as weights-only files; only for files you trust.",
    )
    parser.add_argument("dir", help="a checkpoint, trial, stage or study dir (searched for state.pt)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.exists():
        print(f"error: {root} does not exist (give a checkpoint, trial, stage or study dir)", file=sys.stderr)
        return 2
    try:
        converted = convert_checkpoints(root)
    except PlatformError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in converted:
        print(f"converted {path} (the old file is kept as {path.name}.unsafe)")
    print(f"{len(converted)} checkpoint(s) converted under {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["docs"]:
        from .docs import main as docs_main

        return docs_main(argv[1:])
    if argv[:1] == ["convert-checkpoint"]:
        return convert_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m trainables", description=__doc__)
    parser.add_argument("assignments", nargs="*", help="config key=value pairs (see README 'Config keys')")
    parser.add_argument("--out", default="runs/debug", help="run folder (metrics, checkpoint, artifacts)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    args = parser.parse_args(argv)
    cfg = parse_assignments(args.assignments)
    out = Path(args.out).absolute()
    reporter = RunDirReporter(out)
    resume = reporter.checkpoint_dir if args.resume and reporter.checkpoint_dir.exists() else None
    try:
        final = train(cfg, reporter=reporter, resume_from=resume, workdir=out)
    except PlatformError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in final.items() if not k.startswith("train/loss_")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
