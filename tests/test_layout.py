"""``study.layout``, the one reader of the study-dir format, on study dirs laid out as ``study run`` writes them
(``benchmarks.fake_study``: real file layout, synthetic metrics; no Ray needed). The same checks on a study dir
written by the real ``study run`` path are in ``tests/test_analysis.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fake_study import TABLE1_PAIRS, make_study
from study import layout
from study.state import status_table, trial_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """teachers + grid-ce + grid-kd on two pairs, two seeds, 3 epochs (8 student trials, 2 teachers)."""
    return make_study(tmp_path_factory.mktemp("layout"), "small", seeds=(0, 1), epochs=3, methods=("ce", "kd"),
                      pairs=TABLE1_PAIRS[1:3])


_BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'ray', 'trainables'):
            raise ImportError('blocked by the test: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_layout_status_and_analysis_import_neither_torch_nor_ray(small: Path, tmp_path: Path) -> None:
    code = _BLOCKED + (
        "import json, study, study.layout, study.state\n"
        "import analysis, analysis.load, analysis.tables, analysis.curves, analysis.report, analysis.paper\n"
        f"analysis.report.build_report({str(small)!r}, {str(tmp_path / 'out')!r})\n"
        f"print(study.state.status_table({str(small)!r}).count('TERMINATED'))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'trainables'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, modules = proc.stdout.strip().splitlines()[-2:]
    assert int(count) == 10 and json.loads(modules) == []
    assert (tmp_path / "out" / "report.html").is_file()
    # and the block is real: importing torch under it fails
    proc = subprocess.run([sys.executable, "-c", _BLOCKED + "import torch\n"], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked by the test: torch" in proc.stderr


def test_study_package_stays_import_free() -> None:
    assert (REPO / "study" / "__init__.py").read_text().strip() == ""


def test_current_state_is_the_greatest_name_whatever_the_mtimes(small: Path, tmp_path: Path) -> None:
    """Tune restores from the greatest experiment_state name; a copied dir's mtimes must not change the answer."""
    exp = shutil.copytree(small / "grid-kd", tmp_path / "grid-kd")
    current = layout.current_state_file(exp)
    state = json.loads(current.read_text())
    old_state = json.loads(current.read_text())
    for entry in old_state["trial_data"]:
        trial = json.loads(entry[0])
        trial["status"] = layout.RUNNING
        entry[0] = json.dumps(trial)
    older = exp / "experiment_state-2025-12-31_23-59-59.json"  # an earlier session's state, written last
    older.write_text(json.dumps(old_state))
    os.utime(current, (1_000_000, 1_000_000))
    assert layout.current_state_file(exp) == current
    assert {t["status"] for t in layout.experiment_trials(exp)} == {layout.TERMINATED}
    assert layout.all_finished(exp)
    assert len(layout.experiment_trials(exp)) == len(state["trial_data"]) == 4


def test_trial_listing_orphans_and_hidden_folders(small: Path, tmp_path: Path) -> None:
    from study.runner import _hide_orphans

    exp = shutil.copytree(small / "grid-ce", tmp_path / "grid-ce")
    listed = layout.experiment_trials(exp)
    assert [t["dir"].name for t in listed] == sorted(p.parent.name for p in exp.glob("*/params.json"))
    assert all(t["listed"] and t["config"]["method"] == "ce" for t in listed)
    orphan = exp / "ce_deadbeef"  # a trial folder a killed driver never recorded
    shutil.copytree(listed[0]["dir"], orphan)
    assert layout.orphan_dirs(exp) == [orphan]
    every = layout.list_trials(exp)
    assert [t["dir"] for t in every if not t["listed"]] == [orphan] and every[-1]["status"] is None
    assert not any(t["dir"].name.startswith(".") for t in every)  # .state-backup is not a trial
    _hide_orphans(exp)
    assert not orphan.exists() and (exp / ".orphan-ce_deadbeef").is_dir()
    assert layout.orphan_dirs(exp) == [] and len(layout.list_trials(exp)) == len(listed)
    assert layout.all_finished(exp)
    # a stage where one trial still runs is not finished
    state_file = layout.current_state_file(exp)
    state = json.loads(state_file.read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial["status"] = layout.RUNNING
    state["trial_data"][0][0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))
    assert not layout.all_finished(exp)
    assert not layout.all_finished(tmp_path / "missing")


def test_result_lines_half_written_and_duplicate_epochs(tmp_path: Path) -> None:
    trial = tmp_path / "kd_00000"
    trial.mkdir()
    rows = [{"epoch": 1, "val/top1": 10.0}, {"epoch": 2, "val/top1": 20.0}, {"epoch": 2, "val/top1": 21.0}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (trial / "result.json").write_text(text + '{"epoch": 3, "val/t')  # the line being written
    problems: list[str] = []
    assert layout.read_results(trial, problems) == [rows[0], rows[2]] and problems == []
    (trial / "result.json").write_text('{"epoch": 1, "val/t\n' + text)  # a broken line that is not the last
    assert layout.read_results(trial, problems) == [rows[0], rows[2]]
    assert len(problems) == 1 and "malformed line 1" in problems[0]
    (trial / "result.json").unlink()  # no result.json: progress.csv
    (trial / "progress.csv").write_text("epoch,val/top1,done\n1,10.0,False\n2,20.5,True\n")
    assert layout.read_results(trial) == [{"epoch": 1, "val/top1": 10.0, "done": False},
                                          {"epoch": 2, "val/top1": 20.5, "done": True}]
    assert layout.read_params(trial, {"method": "kd"}) == {"method": "kd"}
    (trial / "error.txt").write_text("Failure # 1\nTraceback (most recent call last):\n  File x\n"
                                     "trainables.errors.NonFiniteLossError: non-finite loss in term(s) kd\n")
    assert layout.read_error(trial) == "trainables.errors.NonFiniteLossError: non-finite loss in term(s) kd"


def test_pair_label_on_disk_and_for_display() -> None:
    from study.spec import pair_label

    assert layout.pair_label("resnet56", "resnet20") == "resnet56-resnet20"
    assert pair_label({"teacher": "resnet56", "student": "resnet20"}) == "resnet56-resnet20"
    assert layout.pair_display("resnet56", "resnet20") == "resnet56 → resnet20"
    assert layout.pair_display(None, "resnet20") == "resnet20"


def test_status_reads_last_results_from_the_experiment_state(small: Path, tmp_path: Path) -> None:
    rows = trial_rows(small)
    assert len(rows) == 10 and {r["state"] for r in rows} == {layout.TERMINATED}
    for row in rows:  # the state's last result and best value are the trial's own result.json
        results = layout.read_results(row["dir"])
        assert row["epoch"] == results[-1]["epoch"] == 3
        assert row["last val/top1"] == pytest.approx(results[-1]["val/top1"])
        assert row["best val/top1"] == pytest.approx(max(r["val/top1"] for r in results))
        assert row["test/top1"] == pytest.approx(results[-1]["test/top1"])
    # with the results gone from the state, status reads result.json instead (same numbers)
    copy = shutil.copytree(small, tmp_path / "no-results")
    for exp in layout.experiment_dirs(copy):
        state_file = layout.current_state_file(exp)
        state = json.loads(state_file.read_text())
        state["trial_data"] = [[t, json.dumps({})] for t, _ in state["trial_data"]]
        state_file.write_text(json.dumps(state))
    again = trial_rows(copy)
    for a, b in zip(rows, again):
        assert (a["epoch"], a["best val/top1"], a["test/top1"]) == (b["epoch"], b["best val/top1"], b["test/top1"])
    table = status_table(small)
    assert table.count("TERMINATED") == 10 and "[grid-kd] grid of kd: done" in table and "3/3" in table


def test_minimal_manifest_still_loads(small: Path, tmp_path: Path) -> None:
    """A study.json with only the keys every version wrote (name; stages with name, kind, method, status)."""
    from analysis.report import build_report

    copy = shutil.copytree(small, tmp_path / "minimal")
    manifest = layout.load_manifest(copy)
    layout.save_manifest(copy, {"name": manifest["name"], "stages": [
        {k: s[k] for k in ("name", "kind", "method", "status")} for s in manifest["stages"]]})
    assert len(trial_rows(copy)) == 10 and "[teachers] teachers: done" in status_table(copy)
    assert all(layout.all_finished(copy / s["name"]) for s in manifest["stages"])
    assert layout.stage_kinds(copy) == {"teachers": "teachers", "grid-ce": "grid", "grid-kd": "grid"}
    build_report(copy, tmp_path / "out")
    assert "Status: finished" in (tmp_path / "out" / "report.md").read_text()


def test_status_shows_the_teacher_stream_and_the_report_the_teacher_passes(small: Path, tmp_path: Path) -> None:
    import pandas as pd

    from analysis.report import build_report, teacher_passes

    copy = shutil.copytree(small, tmp_path / "streamed")
    assert "teacher stream" not in status_table(copy) and layout.stream_size(copy) == (0, 0)
    epoch = copy / layout.STREAM_DIR / "key" / "epoch_0000"
    epoch.mkdir(parents=True)
    (epoch / "chunk_00000.pt").write_bytes(b"x" * 3 * 2**20)
    (epoch / "chunk_00001.pt").write_bytes(b"x" * 2**19)
    (epoch / "chunk_00002.lock").write_bytes(b"")  # a chunk being written: its lock and temporary file
    (epoch / "chunk_00002.pt.7.tmp").write_bytes(b"x" * 2**20)
    (epoch.parent / "epoch_0001").mkdir()  # an epoch nothing was written to yet
    assert layout.stream_size(copy) == (3 * 2**20 + 2**19, 1)
    assert "teacher stream: 3.5 MiB in 1 epoch(s) (teacher_stream/)" in status_table(copy)

    frame = pd.DataFrame({layout.TEACHER_CALLS: [100, 100, 50, None],
                          layout.TEACHER_CALLS_COMPUTED: [100, 0, 50, None]})
    assert teacher_passes(frame) == (150, 250, 3)  # a trial without the counts is left out
    assert teacher_passes(frame.drop(columns=layout.TEACHER_CALLS_COMPUTED)) is None  # runs before the count
    requested, counted = 0, 0
    for result in copy.rglob(layout.RESULT_FILE):  # every trial ran a quarter of the passes it asked for
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if layout.TEACHER_CALLS not in rows[-1]:
            continue
        for row in rows:
            row[layout.TEACHER_CALLS_COMPUTED] = row[layout.TEACHER_CALLS] // 4
        result.write_text("".join(json.dumps(r) + "\n" for r in rows))
        requested, counted = requested + rows[-1][layout.TEACHER_CALLS], counted + 1
    assert requested and counted
    build_report(copy, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    line = f"Teacher passes: {requested // 4:,} computed of {requested:,} requested (25 %) over {counted} trial(s)"
    assert line in text, text[:3000]
