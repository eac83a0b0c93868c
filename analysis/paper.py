"""The seed paper's published numbers (shipped as CSVs in ``analysis/paper_tables``) and how studies match them.

"Knowledge Distillation Under Ideal Joint Classifier Assumption" (arXiv 2304.11004), Tables 1-5. A measured
cell gets a paper number when its method, teacher and student (and knob: connector depth, alpha_ce, loss
combination) are the ones the paper printed. A method's label (declared in its file, written into the study's
``study.json`` when the study starts, see ``study_methods``) maps to the paper's labels case-insensitively
(``KD``), except ``ce`` (the student trained alone: ``student_ce`` in Table 1, ``student`` in Table 4) and
``teacher_head`` (Table 3's ``ce_only`` row, Table 5's teacher-classifier column). Study dirs written before
``study.json`` carried the methods fall back to matching the method name itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent / "paper_tables"
PAPER = 'IJCKD paper ("Knowledge Distillation Under Ideal Joint Classifier Assumption", arXiv 2304.11004)'

FILES = {
    "table1": "ijckd_table1_cifar100.csv",
    "table2": "ijckd_table2_connectors.csv",
    "table3": "ijckd_table3_ablation.csv",
    "table4": "ijckd_table4_imagenet.csv",
    "table5": "ijckd_table5_teacher_classifier.csv",
}
DATASETS = {"table1": "cifar100", "table2": "cifar100", "table3": "cifar100", "table4": "imagenet",
            "table5": "cifar100"}

CONNECTOR_LABELS = {1: "1x1", 2: "1x1-1x1", 3: "1x1-3x3-1x1"}
"""``connector_depth`` values and the paper's Table 2 names for them."""

LOSS_COMBINATIONS = {"sr": "ce+sr", "fm": "ce+fm", "sr+fm": "ce+sr+fm"}
"""``loss_combination`` values and the paper's Table 3 names (the CE term is always on)."""

STUDENT_ALONE = {"table1": "student_ce", "table4": "student"}


LEGACY_ORDER = ("teacher", "ce", "fitnet", "kd", "vid", "rkd", "pkt", "ofd", "crd", "wsld", "dkd", "srrl",
                "simkd", "teacher_head", "ijckd", "offline", "online", "ckd")
"""Row order for study dirs whose ``study.json`` has no ``methods`` entry (written before methods declared it).
New methods never go here: their ``order`` travels in ``study.json``."""

LABEL_COLUMN, ORDER_COLUMN = "method_label", "method_order"
"""Trial columns ``with_method_info`` adds: each trial's method label and table order."""


def study_methods(root: str | Path) -> dict[str, dict[str, Any]]:
    """``{name: {label, order, ...}}`` from the study's ``study.json`` (empty for older study dirs)."""
    try:
        manifest = json.loads((Path(root) / "study.json").read_text())
    except (OSError, ValueError):
        return {}
    methods = manifest.get("methods") if isinstance(manifest, Mapping) else None
    if not isinstance(methods, Mapping):
        return {}
    return {str(k): dict(v) for k, v in methods.items() if isinstance(v, Mapping)}


def method_label(method: str, methods: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The declared label of ``method`` (the name itself when the study dir does not say)."""
    return str((methods or {}).get(method, {}).get("label") or method)


def method_order(method: str, methods: Mapping[str, Mapping[str, Any]] | None = None) -> float:
    """The declared row order of ``method``; older study dirs use ``LEGACY_ORDER`` (unknown methods last)."""
    order = (methods or {}).get(method, {}).get("order")
    if isinstance(order, int | float) and not isinstance(order, bool):
        return float(order)
    return float(LEGACY_ORDER.index(method) * 10) if method in LEGACY_ORDER else math.inf


def with_method_info(trials: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """``trials`` with each trial's method label and order as columns (read from the study dir)."""
    methods = study_methods(root)
    names = trials["method"] if "method" in trials else pd.Series([None] * len(trials), index=trials.index)
    trials[LABEL_COLUMN] = [method_label(str(m), methods) if isinstance(m, str) else None for m in names]
    trials[ORDER_COLUMN] = [method_order(str(m), methods) if isinstance(m, str) else math.inf for m in names]
    return trials


@cache
def paper_table(name: str) -> pd.DataFrame:
    """One of the shipped paper tables (``table1`` .. ``table5``) as a frame."""
    if name not in FILES:
        raise KeyError(f"unknown paper table '{name}'; allowed: {', '.join(FILES)}")
    return pd.read_csv(PAPER_DIR / FILES[name], dtype={"setting": str})


def paper_method(method: str | None, table: str = "table1", label: str | None = None) -> str | None:
    """The paper's row for one of our methods in ``table`` (None when the paper has no such row).

    ``label``: the method's declared label; without it the method name is matched (older study dirs).
    """
    if not method:
        return None
    if method == "ce":
        return STUDENT_ALONE.get(table)
    labels = set(paper_table(table)["method"]) if "method" in paper_table(table).columns else set()
    by_lower = {label.lower(): label for label in labels}
    return by_lower.get(str(label or method).lower())


def connector_label(depth: Any) -> str:
    try:
        return CONNECTOR_LABELS[int(depth)]
    except (TypeError, ValueError, KeyError):
        return str(depth)


def _one(frame: pd.DataFrame, column: str = "top1") -> float | None:
    if frame.empty:
        return None
    value = float(frame.iloc[0][column])
    return value if math.isfinite(value) else None


def _pair(frame: pd.DataFrame, teacher: str | None, student: str | None) -> pd.DataFrame:
    out = frame[frame["student"] == student] if student is not None else frame
    return out[out["teacher"] == teacher] if teacher is not None else out


def table1(method: str | None, teacher: str | None, student: str | None, declared: str | None = None) -> float | None:
    """``declared``: the method's declared label (see ``paper_method``)."""
    label = paper_method(method, "table1", declared)
    if label is None:
        return None
    rows = paper_table("table1")
    rows = rows[rows["method"] == label]
    if label == "teacher":
        return _one(rows[rows["teacher"] == teacher])
    if label == "student_ce" and teacher is None:
        return _one(rows[rows["student"] == student])
    return _one(_pair(rows, teacher, student))


def table2(method: str | None, depth: Any, teacher: str | None, student: str | None,
           declared: str | None = None) -> float | None:
    label = paper_method(method, "table2", declared)
    rows = paper_table("table2")
    rows = rows[(rows["method"] == label) & (rows["connector"] == connector_label(depth))]
    return _one(_pair(rows, teacher, student))


def table3(setting: str, value: Any, teacher: str | None, student: str | None) -> float | None:
    """``setting``: ``alpha_ce`` (value a number or ``ce_only``) or ``loss_comb`` (value a loss_combination)."""
    rows = paper_table("table3")
    rows = _pair(rows[rows["ablation"] == setting], teacher, student)
    if setting == "loss_comb":
        return _one(rows[rows["setting"] == LOSS_COMBINATIONS.get(str(value), str(value))])
    if value == "ce_only":
        return _one(rows[rows["setting"] == "ce_only"])
    try:
        wanted = float(value)
    except (TypeError, ValueError):
        return None
    numeric = pd.to_numeric(rows["setting"], errors="coerce")
    return _one(rows[(numeric - wanted).abs() < 1e-9])


def table4(method: str | None, teacher: str | None, student: str | None, metric: str = "top1",
           declared: str | None = None) -> float | None:
    label = paper_method(method, "table4", declared)
    rows = paper_table("table4")
    rows = rows[rows["method"] == label]
    if label == "teacher":
        return _one(rows[rows["teacher"] == teacher], metric)
    return _one(_pair(rows, teacher, student), metric)


def table5(head: str, teacher: str | None, student: str | None) -> float | None:
    """``head``: ``teacher`` (the teacher_head method) or ``own`` (the student trained alone with CE)."""
    column = "teacher_classifier_top1" if head == "teacher" else "own_classifier_top1"
    return _one(_pair(paper_table("table5"), teacher, student), column)


def paper_pairs(name: str) -> set[tuple[str, str]]:
    frame = paper_table(name)
    return set(zip(frame["teacher"], frame["student"]))


def reproduced_tables(methods: Iterable[str], pairs: Iterable[tuple[str, str]], knobs: Iterable[str],
                      labels: Mapping[str, str] | None = None) -> list[str]:
    """Which paper tables a study with these methods, teacher-student pairs and varied knobs reproduces.

    ``labels``: the methods' declared labels (``{name: label}``; names are matched where it has none).
    """
    methods, pairs, knobs, labels = set(methods), set(pairs), set(knobs), dict(labels or {})
    out = []
    t1 = {(paper_method(m, "table1", labels.get(m)), t, s) for m in methods for t, s in pairs}
    if t1 & set(zip(*(paper_table("table1")[c] for c in ("method", "teacher", "student")))):
        out.append("table1")
    if "connector_depth" in knobs and pairs & paper_pairs("table2") and methods & {"simkd", "ijckd"}:
        out.append("table2")
    if (knobs & {"alpha_ce", "loss_combination"} and pairs & paper_pairs("table3")
            and methods & {"ijckd", "teacher_head"}):
        out.append("table3")
    t4 = {(paper_method(m, "table4", labels.get(m)), t, s) for m in methods for t, s in pairs}
    if t4 & set(zip(*(paper_table("table4")[c] for c in ("method", "teacher", "student")))):
        out.append("table4")
    if "teacher_head" in methods and pairs & paper_pairs("table5"):
        out.append("table5")
    return out


def _method_names(value: Any) -> set[str]:
    """``methods: kd``, ``[kd, ijckd]``, ``{kd: {...}, ijckd: {...}}`` or ``[{name: kd, ...}]``."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, Mapping):
        return {str(value["name"])} if isinstance(value.get("name"), str) else {str(k) for k in value}
    if isinstance(value, list | tuple):
        return set().union(*(_method_names(v) for v in value)) if value else set()
    return set()


def _walk(node: Any, found: dict[str, set]) -> None:
    """Collect method names, architectures per role and config keys anywhere in a spec."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            key = str(key)
            if key in ("method", "methods"):
                found["methods"].update(_method_names(value))
            if key in ("teacher", "student") and isinstance(value, str):
                found[key].add(value)
            if key in ("teacher", "student") and isinstance(value, Mapping):
                for sub in ("arch", "name", "architecture", "model"):
                    if isinstance(value.get(sub), str):
                        found[key].add(value[sub])
            if key == "pairs" and isinstance(value, list | tuple):
                for pair in value:
                    if isinstance(pair, Mapping) and "teacher" in pair and "student" in pair:
                        found["pairs"].add((str(pair["teacher"]), str(pair["student"])))
                    elif isinstance(pair, list | tuple) and len(pair) == 2:
                        found["pairs"].add((str(pair[0]), str(pair[1])))
                    elif isinstance(pair, str) and (":" in pair or "->" in pair):
                        t, s = pair.replace("->", ":").split(":", 1)
                        found["pairs"].add((t.strip(), s.strip()))
            found["keys"].add(key)
            _walk(value, found)
    elif isinstance(node, list | tuple):
        for item in node:
            _walk(item, found)


def paper_tables_for_spec(spec: Mapping[str, Any]) -> list[str]:
    """The paper tables a study spec reproduces, read from its methods, pairs and the knobs it grids or searches.

    A spec may also say so outright with a top-level ``paper_table``/``reproduces`` key (``table1`` or
    ``[table2, table3]``); those are returned first.
    """
    explicit: list[str] = []
    for key in ("paper_table", "paper_tables", "reproduces"):
        value = spec.get(key)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str) and item.lower().replace(" ", "") in FILES:
                explicit.append(item.lower().replace(" ", ""))
    found: dict[str, set] = {"methods": set(), "teacher": set(), "student": set(), "pairs": set(), "keys": set()}
    _walk(spec, found)
    varied: dict[str, set] = {"methods": set(), "teacher": set(), "student": set(), "pairs": set(), "keys": set()}
    for section in ("grid", "search"):  # only keys a study varies make it an ablation
        _walk(spec.get(section) or {}, varied)
    found["keys"] = varied["keys"]
    pairs = set(found["pairs"]) | {(t, s) for t in found["teacher"] for s in found["student"]}
    inferred = reproduced_tables(found["methods"], pairs, found["keys"])
    return list(dict.fromkeys(explicit + inferred))
