"""The report at the size of the paper's comparison (issue 18): a generated study dir of Table-1 shape (12 methods
x 8 pairs x 3 seeds + the teachers, laid out as `study run` writes it, synthetic metrics, few epochs), read by
the real report and looked at in headless Chromium. Speed is measured by `python -m benchmarks report`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from browser_check import chromium_path, image_probe

from analysis.curves import FigureResult, Skipped, build_figures, choose_baseline
from analysis.load import load_study
from analysis.report import build_report
from analysis.tables import TEACHER_ONLY, build_tables, cell_trials, ordered_methods, study_pairs
from benchmarks.fake_study import TABLE1_METHODS, TABLE1_PAIRS, make_study
from study import layout

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def table1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study(tmp_path_factory.mktemp("scale"), "table1", seeds=(0, 1, 2), epochs=12)


@pytest.fixture(scope="module")
def report(table1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("scale_report")
    page = build_report(table1_dir, out)
    return {"page": page, "out": out, "md": (out / "report.md").read_text()}


def _method(label: str) -> str:
    return label.split(" ", 1)[0]


def test_generated_dir_has_table1_shape(table1_dir: Path) -> None:
    study = load_study(table1_dir)
    trials = study.trials
    assert len(trials) == 12 * 8 * 3 + 4 and set(trials["state"]) == {"terminated"} and trials["completed"].all()
    assert set(trials["method"]) == {*TABLE1_METHODS, "teacher"} and not study.problems
    assert sorted(layout.experiment_dirs(table1_dir)) == sorted(table1_dir / n for n in ("teachers", *(
        f"grid-{m}" for m in TABLE1_METHODS)))
    assert study_pairs(trials) == list(TABLE1_PAIRS)


def test_every_method_with_data_in_every_curve_figure(table1_dir: Path, tmp_path: Path) -> None:
    study = load_study(table1_dir)
    figures = {f.key: f for f in build_figures(study, tmp_path) if isinstance(f, FigureResult)}
    trials = study.trials
    bound_methods = set(trials[trials["method"].isin(set(trials["method"]) - {"ce", "teacher"})]["method"])
    for i, (t, s) in enumerate(TABLE1_PAIRS, start=1):
        expected = {m for m in ordered_methods(trials) if not cell_trials(trials, m, t, s).empty}
        assert {"teacher", "ce", *TABLE1_METHODS} == expected  # the 12 methods and the teacher
        accuracy = figures[f"accuracy_curves_{i}"]
        assert {_method(label) for label in accuracy.shown} == expected, accuracy.shown
        assert layout.pair_display(t, s) in accuracy.title
        assert {_method(label) for label in figures[f"loss_terms_{i}"].shown} == expected
        assert {_method(label) for label in figures[f"bound_terms_{i}"].shown} == bound_methods  # all with bounds
        assert set(figures[f"final_numbers_{i}"].shown) == expected
    heatmap = figures["baseline_heatmap"]
    assert heatmap.title.endswith("(kd)") and set(heatmap.shown) == set(TABLE1_METHODS) - {"kd"}
    assert "paper's Table 1" in heatmap.caption  # the paper's differences are marked


def test_baseline_choice_falls_back() -> None:
    assert choose_baseline(["teacher", "ce", "kd", "dkd"]) == ("kd", "")
    assert choose_baseline(["teacher", "ce", "kd", "dkd"], "dkd") == ("dkd", "")
    pick, note = choose_baseline(["teacher", "ce", "dkd"], "kd")
    assert pick == "ce" and "kd did not run" in note
    assert choose_baseline(["teacher", "dkd", "srrl"], "kd")[0] == "dkd"
    assert choose_baseline(["teacher"])[0] is None


def test_tables_at_scale(table1_dir: Path) -> None:
    tables = {t.key: t for t in build_tables(load_study(table1_dir))}
    search = tables["search_top_configs"]
    assert isinstance(search, Skipped) and "no search" in search.reason  # a grid study has no search table
    best = tables["best_per_method"].to_frame()
    teachers = best[best["method"].isin(TEACHER_ONLY)]
    assert sorted(teachers["pair"]) == sorted({t for t, _ in TABLE1_PAIRS})  # one row per teacher architecture
    assert (teachers["n"] == 1).all()
    assert len(best) == 4 + 12 * 8
    table1 = tables["table1_methods_by_pair"]
    text, _ = table1.display()
    assert text.shape == (13, 8)
    cells = [str(v) for v in text.to_numpy().ravel()]
    assert all("(n=" not in c and "paper" not in c and len(c) <= 13 for c in cells), cells[:5]
    csv = table1.to_frame()
    assert {"n", "paper", "diff"} <= set(csv.columns) and csv["paper"].notna().sum() == 13 * 8
    assert "title='n=3 · paper " in table1.to_html()


def test_report_at_scale_renders_in_headless_chromium(report: dict, tmp_path: Path) -> None:
    md, out = report["md"], report["out"]
    assert "### Search — top configurations" not in md and "## Tables" in md
    for key in ("final_numbers_1", "final_numbers_8", "baseline_heatmap", "accuracy_curves_8", "bound_terms_8"):
        assert f"figures/{key}.png" in md, key
    figures = sorted((out / "figures").glob("*.png"))
    images = image_probe(chromium_path(), report["page"], tmp_path / "profile")
    assert len(images) == len(figures) == 8 * 4 + 1
    for img in images:
        assert img["complete"] and img["width"] > 300 and img["height"] > 200, img
    best = pd.read_csv(out / "tables" / "best_per_method.csv")
    assert (best["method"] == "teacher").sum() == 4
