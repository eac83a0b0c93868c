"""The study's stages as a dependency graph: what each stage waits for before it may start.

A ``final`` stage waits for its ``search``; a stage of a method that distils waits for the teachers of its
pairs that the study trains (per architecture: as soon as that teacher's ``final.pt`` is written, not after
the whole teacher stage); everything else (``ce``, the teacher stage) may start at once. With
``scheduling: sequential`` every stage waits for all the stages before it (the order of ``study.json``).
No Ray here: the runner asks these questions of ``study.json`` and the teacher folders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import Spec, pair_label, teacher_folder


@dataclass
class Needs:
    """Stages (by name) that must have ended and trained teacher architectures that must exist."""

    stages: list[str] = field(default_factory=list)
    teachers: list[str] = field(default_factory=list)


def stage_needs(spec: Spec, entries: list[Mapping[str, Any]], sequential: bool = False) -> dict[str, Needs]:
    """``study.json``'s stages -> what each waits for."""
    from trainables.methods import get_method

    trained = set(spec.archs_to_train()) if any(e["kind"] == "teachers" for e in entries) else set()
    out: dict[str, Needs] = {}
    for i, entry in enumerate(entries):
        needs = Needs()
        if sequential:
            needs.stages = [e["name"] for e in entries[:i]]
        elif entry["kind"] == "final":
            needs.stages = [e["name"] for e in entries if e["kind"] == "search" and e["method"] == entry["method"]
                            and e.get("pair") == entry.get("pair")]
        if entry["kind"] != "teachers" and get_method(entry["method"]).needs_teacher:
            labels = [entry["pair"]] if entry.get("pair") else [pair_label(p) for p in spec.pairs]
            archs = {p["teacher"] for p in spec.pairs if pair_label(p) in labels}
            needs.teachers = sorted(archs & trained)
        out[entry["name"]] = needs
    return out


def ready(needs: Needs, unfinished: Iterable[str], teachers: Mapping[str, Any], teacher_stage_open: bool) -> bool:
    """All of ``needs`` met: its stages are not among ``unfinished`` (waiting or running), its teachers trained
    (or the teacher stage is over, so the stage starts and its teacher check says what is missing)."""
    unfinished = set(unfinished)
    if any(name in unfinished for name in needs.stages):
        return False
    return not teacher_stage_open or all(arch in teachers for arch in needs.teachers)


def trained_teachers(study_dir: Path, archs: Iterable[str], known: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Teachers of a running teacher stage whose ``final.pt`` is written (atomically, after the last epoch)."""
    out = {}
    for arch in archs:
        final = teacher_folder(study_dir, arch) / "final.pt"
        if arch not in known and final.is_file():
            out[arch] = {"checkpoint": str(final), "trajectory": str(final.parent)}
    return out
