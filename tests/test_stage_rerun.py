"""A search re-run with ``--retry-errored`` whose best trial changes: its finished final stage ran the old best,
so it is put back to run on the new one, its earlier trials kept aside (hidden, never deleted). The runner's
bookkeeping on a real ``study.json`` and study dir; no Ray needed (the full resume path is in test_study_graph)."""

from __future__ import annotations

from pathlib import Path

from study.layout import save_manifest
from study.runner import _rerun_finals, _Run, _supersede_final
from study.tuner import Stage


def _manifest() -> dict:
    return {"teachers": {}, "stages": [
        {"name": "search-kd", "kind": "search", "method": "kd", "pair": None, "status": "done", "best_trial": "b"},
        {"name": "final-kd", "kind": "final", "method": "kd", "pair": None, "status": "done", "trials": 1,
         "errored": 0, "reused": {"stage": "search-kd", "trial": "a"}},
        {"name": "final-ce", "kind": "final", "method": "ce", "pair": None, "status": "done", "trials": 1},
    ]}


def test_a_new_search_best_puts_its_done_final_back_and_keeps_its_old_trials(tmp_path: Path, capsys) -> None:
    manifest = _manifest()
    (tmp_path / "final-kd" / "kd_0").mkdir(parents=True)
    (tmp_path / "final-kd" / "kd_0" / "result.json").write_text("{}")
    save_manifest(tmp_path, manifest)
    search = Stage("search-kd", "search", "kd")

    _supersede_final(search, "b", "a", manifest, tmp_path)

    final = manifest["stages"][1]
    assert final["status"] == "pending" and "reused" not in final and "trials" not in final
    assert manifest["stages"][2]["status"] == "done"  # another method's final is untouched
    assert not (tmp_path / "final-kd").exists()
    (aside,) = tmp_path.glob(".final-kd.superseded-*")
    assert (aside / "kd_0" / "result.json").read_text() == "{}"  # nothing on disk is lost
    assert "best trial is now b (was a): final-kd runs again" in capsys.readouterr().out
    assert _rerun_finals(search, manifest, _Run(waiting=[])) == ["final-kd"]
    assert _rerun_finals(search, manifest, _Run(waiting=["final-kd"])) == []  # queued once
    assert _rerun_finals(search, manifest, _Run(waiting=[], kinds=("search",))) == []  # not asked for finals


def test_a_final_that_has_not_run_yet_is_left_as_it_is(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest["stages"][1]["status"] = "pending"
    _supersede_final(Stage("search-kd", "search", "kd"), "b", "a", manifest, tmp_path)
    assert manifest["stages"][1]["status"] == "pending"  # _start_stage decides its reuse when it starts
    assert not list(tmp_path.glob(".final-kd*"))


def test_a_final_skipped_for_want_of_a_finished_search_trial_runs_once_one_finished(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest["stages"][1] = {"name": "final-kd", "kind": "final", "method": "kd", "pair": None, "status": "skipped",
                             "note": "no finished search trial to take the config from"}
    _supersede_final(Stage("search-kd", "search", "kd"), "b", None, manifest, tmp_path)
    assert manifest["stages"][1]["status"] == "pending" and "note" not in manifest["stages"][1]
