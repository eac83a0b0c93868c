"""Helpers of ``benchmarks/gpu_check.sh``: the seeded teacher file, the environment, and the summary table.

``python -m benchmarks.gpu_check teacher PATH --arch A --classes C``  a seeded, untrained teacher checkpoint
``python -m benchmarks.gpu_check env``                              torch/CUDA/GPU facts as one JSON object
``python -m benchmarks.gpu_check summary OUTDIR``                   the table of every step (and summary.json)

The script records one line per step in ``OUTDIR/steps.jsonl`` (name, kind, exit status, seconds, timeout,
the file with its result); ``summary`` reads those results (benchmark JSON, pytest's junit XML, a trial's
``progress.jsonl``, the sync check's JSON) and prints one row per step with its figures and the targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EPOCHS_PROJECTED = 240
TARGET_PACKED_RATIO = 8.0
"""Aggregate platform img/s with 4 trials per GPU over the reference loop's, one trial (issue 16)."""
TARGET_240_EPOCHS_MIN = 10.0


def write_teacher(path: Path, arch: str, classes: int, seed: int = 0) -> None:
    """A seeded, untrained teacher: speed does not depend on its weights."""
    import torch

    from trainables import models

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": models.create(arch, num_classes=classes).state_dict()}, path)


def environment() -> dict[str, Any]:
    """What the figures came from."""
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
    for name in ("ray", "optuna", "torchvision"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "present")
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    return info


# -- reading each step's result -----------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any]:
    """The last JSON object line of a file (the benchmarks print one)."""
    lines = [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
    if not lines:
        raise ValueError(f"no JSON object in {path.name}")
    return json.loads(lines[-1])


def describe_env(path: Path) -> tuple[str, dict[str, Any]]:
    env = _json(path)
    gpu = env.get("gpu") or "no CUDA"
    return f"{gpu}, torch {env['torch']}, CUDA {env.get('cuda')}, Python {env['python']}, ray {env['ray']}", env


def describe_pytest(path: Path) -> tuple[str, dict[str, Any]]:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [f"{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    text = f"{counts['passed']} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    if failed:
        text += " (" + ", ".join(failed[:4]) + (", ..." if len(failed) > 4 else "") + ")"
    return text, {**counts, "failed_tests": failed}


def describe_bench(path: Path) -> tuple[str, dict[str, Any]]:
    result = _json(path)
    if result["mode"] == "single":
        parts = [f"{loop} {result[loop]['img_s']:.0f} img/s" for loop in ("platform", "reference") if loop in result]
        if "ratio" in result:
            parts.append(f"ratio {result['ratio']:.2f}x")
        compile_mode = result.get("platform", {}).get("compile")
        if compile_mode:
            parts.append(f"compile {compile_mode}")
        return ", ".join(parts), {"platform_img_s": result.get("platform", {}).get("img_s"),
                                  "reference_img_s": result.get("reference", {}).get("img_s"),
                                  "ratio": result.get("ratio")}
    n = result["trials"]
    figures: dict[str, Any] = {"trials": n, "backend": result["backend"]}
    parts = []
    for loop in ("platform", "reference"):
        if loop in result:
            r = result[loop]
            figures[loop] = {"single_img_s": r["single"]["img_s"], "packed_img_s": r["packed"]["img_s"],
                             "packing_gain": r["packing_gain"]}
            parts.append(f"{loop} 1: {r['single']['img_s']:.0f}, {n}: {r['packed']['img_s']:.0f} img/s "
                         f"(gain {r['packing_gain']:.2f}x)")
    if "platform" in result and "reference" in result:
        target = result["platform"]["packed"]["img_s"] / result["reference"]["single"]["img_s"]
        figures["platform_packed_over_reference_single"] = target
        parts.append(f"platform {n} / reference 1: {target:.2f}x (target >= {TARGET_PACKED_RATIO:g}x)")
    return "; ".join(parts), figures


def describe_trial(path: Path) -> tuple[str, dict[str, Any]]:
    """Epoch times of a short trial and the 240-epoch time they imply (epoch 1 + 239 x the last epoch)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"no epoch in {path}")
    times = [r["time/epoch_s"] for r in rows]
    steady = times[-1]  # includes the last epoch's test evaluation: a slight over-estimate per epoch
    projected = times[0] + (EPOCHS_PROJECTED - 1) * steady
    figures = {"epoch_s": times, "train_img_s": [r.get("throughput/img_s") for r in rows],
               "projected_240_epochs_s": projected}
    text = (", ".join(f"epoch {r['epoch']} {t:.1f} s" for r, t in zip(rows, times))
            + f" (train {rows[-1].get('throughput/img_s') or float('nan'):.0f} img/s); "
            f"{EPOCHS_PROJECTED} epochs ~ {projected / 60:.1f} min (target <= {TARGET_240_EPOCHS_MIN:g})")
    return text, figures


def describe_sync(path: Path) -> tuple[str, dict[str, Any]]:
    result = _json(path)
    if not result["checked"]:
        return f"steps ran on {result['device']}: no CUDA, nothing counted", result
    sites = "; ".join(f"{c:g} at {s}" for s, c in list(result["step_sites"].items())[:3])
    return f"{result['syncs_per_step']:g} syncs per step" + (f" ({sites})" if sites else ""), result


def describe_log(path: Path) -> tuple[str, dict[str, Any]]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return (lines[0][:100] if lines else "(empty)"), {}


DESCRIBE: dict[str, Callable[[Path], tuple[str, dict[str, Any]]]] = {
    "env": describe_env, "pytest": describe_pytest, "bench": describe_bench, "trial": describe_trial,
    "sync": describe_sync, "log": describe_log,
}


def summarise(outdir: Path) -> tuple[str, dict[str, Any]]:
    """The table of every step recorded in ``outdir/steps.jsonl``, and the same as a dict."""
    steps = [json.loads(line) for line in (outdir / "steps.jsonl").read_text().splitlines() if line.strip()]
    rows, summary = [], {"steps": []}
    for step in steps:
        status = step["status"]
        text, figures = "", {}
        result = outdir / (step.get("result") or step["log"])  # a plain command's result is its log
        if status == "ok" or (status != "skipped" and result.exists() and step.get("result")):
            try:
                text, figures = DESCRIBE[step["kind"]](result)
            except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as err:
                text = f"unreadable result ({type(err).__name__}: {err})"
                status = "failed" if status == "ok" else status
        if status == "skipped":
            text = describe_log(outdir / step["log"])[0]
        elif status != "ok":
            text = f"{status} (exit {step['rc']}, log {step['log']})" + (f"; {text}" if text else "")
        rows.append((step["name"], status, f"{step['seconds']:.0f}", text))
        summary["steps"].append({**step, "status": status, "figures": figures, "text": text})
    width = max(len(r[0]) for r in rows) if rows else 4
    lines = [f"{'step':<{width}}  {'status':<9} {'s':>5}  result"]
    lines += [f"{name:<{width}}  {status:<9} {secs:>5}  {text}" for name, status, secs, text in rows]
    total = sum(s["seconds"] for s in steps)
    failed = [s["name"] for s in summary["steps"] if s["status"] not in ("ok", "skipped")]
    lines.append(f"total {total:.0f} s; " + (f"not ok: {', '.join(failed)}" if failed else "every step ok"))
    summary.update(total_s=total, not_ok=failed)
    return "\n".join(lines), summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="write a seeded, untrained teacher checkpoint")
    t.add_argument("path", type=Path)
    t.add_argument("--arch", default="resnet32x4")
    t.add_argument("--classes", type=int, default=100)
    sub.add_parser("env", help="print torch/CUDA/GPU facts as one JSON object")
    s = sub.add_parser("summary", help="print the table of a gpu_check.sh output folder")
    s.add_argument("outdir", type=Path)
    args = p.parse_args(argv)
    if args.command == "teacher":
        write_teacher(args.path, args.arch, args.classes)
        print(f"wrote {args.path} ({args.arch}, {args.classes} classes, seeded, untrained)")
    elif args.command == "env":
        print(json.dumps(environment()))
    else:
        if not (args.outdir / "steps.jsonl").exists():
            print(f"error: {args.outdir} has no steps.jsonl (not a gpu_check.sh output folder)", file=sys.stderr)
            return 2
        text, summary = summarise(args.outdir)
        (args.outdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (args.outdir / "summary.txt").write_text(text + "\n")
        print(text)
        return 0 if not summary["not_ok"] else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
