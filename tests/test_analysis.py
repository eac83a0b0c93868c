"""Analysis on real small studies: tables against the trials' own results, figures, reports, a browser.

Two real studies are made once per test module with ``study run`` (``study.runner.run_study``) on digits,
resnet20 (the session teacher) -> resnet8:

- ``digits-study``: ce and kd, each an Optuna search of 2 trials then the selected configuration on seeds 0,
  1 and 2 (the final stage trains 1 and 2 and reuses the search's seed-0 trial; stages ``search-ce``,
  ``final-ce``, ``search-kd``, ``final-kd``), 2 epochs per trial.
- ``budget-study``: kd under a teacher-call budget of 300 images (``train_subset`` 300), a grid over ``lr``
  [0.05, 1e12] (2 epochs): the huge learning rate makes the loss non-finite at its second step, so that
  trial errors; the other finishes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser_check import chromium_path, image_probe

from analysis import paper
from analysis.curves import FigureResult, build_figures
from analysis.load import load_study
from analysis.report import build_report
from analysis.tables import Skipped, Table, build_tables, select, table1_methods_by_pair, table4_imagenet

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
PAIR = "resnet20 → resnet8"


def _run_study(root: Path, teacher: dict, **spec) -> Path:
    from study.runner import run_study
    from study.spec import validate

    raw = {"storage_path": str(root), "data": {"dataset": "digits"},
           "teacher": {"train": False, "checkpoints": {teacher["arch"]: teacher["checkpoint"]}},
           "pairs": [{"teacher": teacher["arch"], "student": "resnet8"}], "resources": {"cpu": 1, "gpu": 0},
           "report": False, **spec}
    return run_study(validate(raw), root / raw["name"], verbose=0, report=False)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, ray_session, digits_teacher: dict) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis_studies")
    return {
        "main": _run_study(root, digits_teacher, name="digits-study", methods=["ce", "kd"], seeds=[0, 1, 2],
                           config={"epochs": 2}, search={"trials": 2, "seed": 0}),
        "budget": _run_study(root, digits_teacher, name="budget-study", methods=["kd"], seeds=[0],
                             config={"epochs": 2}, method_config={"kd": {"teacher_budget": 300, "train_subset": 300}},
                             grid={"kd": {"lr": [0.05, 1e12]}}),
    }


@pytest.fixture(scope="module")
def study_dir(studies: dict[str, Path]) -> Path:
    return studies["main"]


@pytest.fixture(scope="module")
def budget_dir(studies: dict[str, Path]) -> Path:
    return studies["budget"]


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def _trial_folders(stage: Path) -> list[Path]:
    """A stage's trial folders; for a final stage the search trial it reuses as its seeds[0] run comes first."""
    entry = next(s for s in json.loads((stage.parent / "study.json").read_text())["stages"] if s["name"] == stage.name)
    reused = [stage.parent / entry["reused"]["stage"] / entry["reused"]["trial"]] if entry.get("reused") else []
    return reused + [p.parent for p in sorted(stage.glob("*/params.json"))]


def _last(stage: Path, metric: str) -> list[float]:
    """The last reported ``metric`` of every trial of a stage (see ``_trial_folders``), straight from result.json."""
    return [_results(folder)[-1][metric] for folder in _trial_folders(stage)]


# -- loading ----------------------------------------------------------------------------------------------------
def test_analysis_never_imports_ray_torch_or_trainables(study_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "import analysis, analysis.load, analysis.tables, analysis.curves, analysis.report, analysis.paper\n"
        f"analysis.report.build_report({str(study_dir)!r}, {str(tmp_path / 'out')!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'trainables'))\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "out" / "report.html").is_file()


def test_trials_table_states_and_history(study_dir: Path, budget_dir: Path) -> None:
    study = load_study(study_dir)
    trials = study.trials
    assert len(trials) == 8 and set(trials["state"]) == {"terminated"} and trials["completed"].all()
    assert sorted(trials["experiment"].unique()) == ["final-ce", "final-kd", "search-ce", "search-kd"]
    assert dict(zip(trials["experiment"], trials["stage_kind"])) == {
        "search-ce": "search", "final-ce": "final", "search-kd": "search", "final-kd": "final"}
    assert trials.groupby("method").size().to_dict() == {"ce": 4, "kd": 4}
    assert set(trials["pair"]) == {"resnet20-resnet8"}  # the on-disk label (study.layout.pair_label)
    assert sorted(trials[trials["experiment"] == "final-kd"]["seed"]) == [1, 2]
    assert trials["final_reuse"].sum() == 2  # one search trial per method is its final's seed-0 run
    assert study.optuna_dbs == [study_dir / "optuna.db"] and study.spec["name"] == "digits-study"
    for _, row in trials.iterrows():  # history: one row per reported epoch, values as in result.json
        rows = _results(Path(row["trial_dir"]))
        hist = study.history[study.history["trial_id"] == row["trial_id"]].sort_values("epoch")
        assert list(hist["epoch"]) == [r["epoch"] for r in rows] == [1, 2]
        assert np.allclose(hist["val/top1"], [r["val/top1"] for r in rows])
        assert row["test/top1"] == pytest.approx(rows[-1]["test/top1"])
    assert {"train/loss_ce", "train/loss_kd", "teacher_calls"} <= set(study.history.columns)
    assert {"temperature", "kd_weight", "lr"} <= set(study.knobs()) and "seed" not in study.knobs()

    budget = load_study(budget_dir).trials.set_index("config/lr")
    assert budget.loc[1e12, "state"] == "errored" and budget.loc[0.05, "state"] == "terminated"
    assert "NonFiniteLossError: non-finite loss" in budget.loc[1e12, "error"]


def _stage_names(study_dir: Path) -> list[str]:
    return [s["name"] for s in json.loads((study_dir / "study.json").read_text())["stages"]]


def test_study_dirs_of_today_read_through_layout(study_dir: Path, budget_dir: Path, tmp_path: Path) -> None:
    """Dirs written by the real `study run`: status, the resume checks and the report read them through
    study.layout; also with a study.json reduced to the keys every version wrote, and with an orphan folder."""
    from study import layout
    from study.runner import _hide_orphans
    from study.state import status_table, trial_rows

    rows = trial_rows(study_dir)
    assert len(rows) == 8 and {r["state"] for r in rows} == {"TERMINATED"}
    for row in rows:  # the experiment state's last results are the trials' own result.json
        assert row["test/top1"] == pytest.approx(_results(Path(row["dir"]))[-1]["test/top1"])
        assert row["best val/top1"] == pytest.approx(max(r["val/top1"] for r in _results(Path(row["dir"]))))
    assert all(layout.all_finished(study_dir / name) for name in _stage_names(study_dir))
    assert [r["state"] for r in trial_rows(budget_dir)].count("ERROR") == 1
    assert "NonFiniteLossError" in status_table(budget_dir)

    copy = shutil.copytree(study_dir, tmp_path / "old", ignore=shutil.ignore_patterns("checkpoint_*"))
    manifest = json.loads((copy / "study.json").read_text())
    (copy / "study.json").write_text(json.dumps({"name": manifest["name"], "stages": [
        {k: s[k] for k in ("name", "kind", "method", "status")} for s in manifest["stages"]]}))
    exp = copy / "final-kd"
    orphan = exp / "kd_deadbeef"
    shutil.copytree(layout.experiment_trials(exp)[0]["dir"], orphan)
    assert layout.orphan_dirs(exp) == [orphan] and len(load_study(copy).trials) == 9  # analysis shows it
    _hide_orphans(exp)  # what a resume does before restoring the stage
    assert layout.orphan_dirs(exp) == [] and (exp / ".orphan-kd_deadbeef").is_dir()
    assert all(layout.all_finished(copy / name) for name in _stage_names(copy))
    assert len(trial_rows(copy)) == 8 and status_table(copy).count("TERMINATED") == 8
    study = load_study(copy)
    assert len(study.trials) == 8 and not study.problems
    assert dict(zip(study.trials["experiment"], study.trials["stage_kind"]))["final-kd"] == "final"
    build_report(copy, tmp_path / "out")
    assert "Status: finished" in (tmp_path / "out" / "report.md").read_text()


# -- tables -----------------------------------------------------------------------------------------------------
def test_table1_matches_trials_own_results(study_dir: Path, tmp_path: Path) -> None:
    """Cells are the final stages' seeds (the study's selection on val), recomputed here from result.json."""
    table = table1_methods_by_pair(load_study(study_dir))
    assert isinstance(table, Table) and table.columns == [PAIR] and table.rows == ["ce", "kd"]
    expected = {}
    for method in ("ce", "kd"):
        test, val = _last(study_dir / f"final-{method}", "test/top1"), _last(study_dir / f"final-{method}", "val/top1")
        expected[method] = statistics.fmean(test)
        cell = table.cells[(method, PAIR)]
        assert cell.stat.n == 3
        assert cell.stat.mean == pytest.approx(statistics.fmean(test))
        assert cell.stat.std == pytest.approx(statistics.stdev(test))
        assert cell.selection.val.mean == pytest.approx(statistics.fmean(val))
        assert cell.paper is None  # a digits pair is not a paper pair
    winner = max(expected, key=expected.get)
    loser = ({"ce", "kd"} - {winner}).pop()
    assert table.cells[(winner, PAIR)].best and not table.cells[(loser, PAIR)].best

    report = build_report(study_dir, tmp_path)
    assert report == tmp_path / "report.html"
    csv = pd.read_csv(tmp_path / "tables" / "table1_methods_by_pair.csv").set_index("row")
    for method, mean in expected.items():
        assert csv.loc[method, "mean"] == pytest.approx(mean) and csv.loc[method, "n"] == 3
        assert bool(csv.loc[method, "best"]) == (method == winner)
        assert csv.loc[method, "std"] == pytest.approx(statistics.stdev(_last(study_dir / f"final-{method}",
                                                                              "test/top1")))
    md = (tmp_path / "tables" / "table1_methods_by_pair.md").read_text()
    assert f"**{table.cells[(winner, PAIR)].text()}**" in md
    tex = (tmp_path / "tables" / "table1_methods_by_pair.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"$\pm$", r"$\to$"))


def test_selection_on_validation_without_a_final_stage(study_dir: Path) -> None:
    """Among searched configurations (one seed each), the best val/top1 wins; its test is reported."""
    study = load_study(study_dir)
    search = study.trials[study.trials["stage_kind"] == "search"]
    for method in ("ce", "kd"):
        stage = study_dir / f"search-{method}"
        vals, tests = _last(stage, "val/top1"), _last(stage, "test/top1")
        sel = select(search[search["method"] == method])
        best = max(range(len(vals)), key=lambda i: vals[i])
        assert sel.val.mean == pytest.approx(vals[best]) and sel.val.n == 1
        assert sel.report["test/top1"].mean == pytest.approx(tests[best])
        assert sel.n_configs == 2


def test_best_per_method_and_search_table(study_dir: Path, budget_dir: Path) -> None:
    tables = {t.key: t for t in build_tables(load_study(study_dir))}
    best = tables["best_per_method"].to_frame().set_index("method")
    for method in ("ce", "kd"):
        test = _last(study_dir / f"final-{method}", "test/top1")
        assert best.loc[method, "test_top1_mean"] == pytest.approx(statistics.fmean(test))
        assert best.loc[method, "n"] == 3
    search = tables["search_top_configs"].to_frame()
    assert search.groupby("method").size().to_dict() == {"ce": 2, "kd": 2}
    assert set(search["pair"]) == {PAIR} and set(search["seeds"]) == {1}  # the search stages' trials only
    for _, group in search.groupby("method"):
        assert list(group["val top-1 (%)"]) == sorted(group["val top-1 (%)"], reverse=True)
    for key in ("table2_connector_depth", "table3_ablation", "table4_imagenet", "table5_teacher_head",
                "online_vs_offline", "ckd_budget"):
        assert isinstance(tables[key], Skipped) and tables[key].reason

    budget_tables = {t.key: t for t in build_tables(load_study(budget_dir))}
    assert isinstance(budget_tables["search_top_configs"], Skipped)  # a grid is not a search
    budget = budget_tables["ckd_budget"]
    assert isinstance(budget, Table) and budget.rows == ["300 images"] and budget.columns == ["kd"]
    finished = [p.parent for p in (budget_dir / "grid-kd").glob("*/params.json")
                if not (p.parent / "error.txt").exists()]
    assert budget.cells[("300 images", "kd")].stat.mean == pytest.approx(_results(finished[0])[-1]["test/top1"])


def _as_paper_pair(study, teacher: str, student: str, dataset: str):
    """The real study's frame with the digits pair renamed in memory to one of the paper's pairs."""
    trials = study.trials.copy()
    trials["teacher"] = teacher
    trials["student"] = student
    trials["dataset"] = dataset
    trials["pair"] = f"{teacher} → {student}"
    study.trials = trials
    return study


def test_paper_numbers_beside_measured_ones(study_dir: Path) -> None:
    study = _as_paper_pair(load_study(study_dir), "resnet32x4", "resnet8x4", "cifar100")
    table = table1_methods_by_pair(study)
    col = "resnet32x4 → resnet8x4"
    kd, ce = table.cells[("kd", col)], table.cells[("ce", col)]
    assert kd.paper == 73.33 and ce.paper == 72.50  # KD and student_ce rows of the paper's Table 1
    assert kd.diff == pytest.approx(kd.stat.mean - 73.33)
    assert table.paper_table == "table1"
    md, html = table.to_markdown(), table.to_html()
    assert "paper" not in md.split("\n", 2)[2]  # compact cells: mean ± std; the paper on hover and in the CSV
    assert f"{kd.stat.mean:.2f} ± {kd.stat.std:.2f}" in md and "(n=" not in md
    assert "title='n=3 · paper 73.33 (Δ " in html and "title='n=3 · paper 72.50 (Δ " in html
    assert any("paper" in note and "CSV" in note for note in table.notes)
    frame = table.to_frame().set_index("row")
    assert frame.loc["kd", "paper"] == 73.33 and frame.loc["kd", "diff"] == pytest.approx(kd.diff)
    assert any("cifar100" in note for note in table.notes)

    imagenet = table4_imagenet(_as_paper_pair(load_study(study_dir), "resnet34", "resnet18", "imagenet"))
    assert isinstance(imagenet, Table)
    assert imagenet.cells[("kd", "resnet34 → resnet18 top-1")].paper == 70.67
    assert imagenet.cells[("kd", "resnet34 → resnet18 top-5")].paper == 90.04
    assert imagenet.cells[("ce", "resnet34 → resnet18 top-1")].paper == 69.75  # the paper's "student" row

    digits = table1_methods_by_pair(load_study(study_dir))
    assert not digits.has_paper and digits.paper_table is None


def _final_as(study, method_map: dict[str, str], teacher: str, student: str, knob_methods=("ijckd", "simkd"),
              **columns):
    """The real final runs on seeds 0 and 1 (the reused search trial is seed 0) relabelled in memory (methods, a
    paper pair, knob values by seed)."""
    final = (study.trials["stage_kind"] == "final") | study.trials["final_reuse"]
    trials = study.trials[final & study.trials["seed"].isin([0, 1])].copy()
    trials["method"] = trials["method"].map(method_map)
    trials = paper.with_method_info(trials, study.root)  # the new names' labels and row order, not the old ones'
    trials["teacher"], trials["student"], trials["dataset"] = teacher, student, "cifar100"
    trials["pair"] = f"{teacher} → {student}"
    for key, by_seed in columns.items():
        trials[f"config/{key}"] = [by_seed[int(seed)] if m in knob_methods else None
                                   for seed, m in zip(trials["seed"], trials["method"])]
    study.trials = trials.reset_index(drop=True)
    return study


def test_knob_layouts_on_relabelled_trials(study_dir: Path) -> None:
    """Tables 2, 3, 5 and online/offline lay out real trials by knob value, with the paper's numbers."""
    from analysis.tables import online_vs_offline, table2_connector_depth, table3_ablation, table5_teacher_head

    col = "resnet32x4 → resnet8x4"
    kd_test = dict(zip((0, 1), _last(study_dir / "final-kd", "test/top1")))
    seeds = [int(json.loads((f / "params.json").read_text())["seed"]) for f in _trial_folders(study_dir / "final-kd")]
    kd_by_seed = dict(zip(seeds, _last(study_dir / "final-kd", "test/top1")))

    t2 = table2_connector_depth(_final_as(load_study(study_dir), {"ce": "simkd", "kd": "ijckd"}, "resnet32x4",
                                          "resnet8x4", connector_depth={0: 1, 1: 3}))
    assert isinstance(t2, Table) and t2.rows == ["1: 1x1", "3: 1x1-3x3-1x1"] and t2.columns == ["simkd", "ijckd"]
    assert t2.cells[("3: 1x1-3x3-1x1", "ijckd")].paper == 77.76 and t2.cells[("1: 1x1", "simkd")].paper == 75.91
    assert t2.cells[("3: 1x1-3x3-1x1", "ijckd")].stat.mean == pytest.approx(kd_by_seed[1])

    t3 = table3_ablation(_final_as(load_study(study_dir), {"ce": "teacher_head", "kd": "ijckd"}, "resnet32x4",
                                   "resnet8x4", alpha_ce={0: 0.1, 1: 0.5}))
    assert isinstance(t3, Table) and t3.rows == ["α_ce = 0.1", "α_ce = 0.5", "ce_only (teacher_head)"]
    assert [t3.cells[(r, col)].paper for r in t3.rows] == [76.36, 76.09, 74.46]
    assert t3.cells[("α_ce = 0.1", col)].stat.mean == pytest.approx(kd_by_seed[0])
    assert t3.cells[("ce_only (teacher_head)", col)].stat.n == 2

    t5 = table5_teacher_head(_final_as(load_study(study_dir), {"ce": "ce", "kd": "teacher_head"}, "resnet32x4",
                                       "resnet8x4"))
    assert isinstance(t5, Table) and t5.rows == [col]
    head, own = (t5.cells[(col, c)] for c in t5.columns)
    assert (head.paper, own.paper) == (74.46, 72.50)
    assert head.stat.mean == pytest.approx(statistics.fmean(kd_test.values()))

    online = online_vs_offline(_final_as(load_study(study_dir), {"ce": "offline", "kd": "online"}, "resnet20",
                                         "resnet8"))
    assert isinstance(online, Table) and online.columns == ["offline", "online"]
    assert online.cells[("resnet20 → resnet8", "online")].stat.mean == pytest.approx(
        statistics.fmean(kd_test.values()))


def test_paper_layouts_for_knob_tables() -> None:
    assert paper.table2("ijckd", 3, "resnet32x4", "resnet8x4") == 77.76
    assert paper.table2("simkd", 2, "wrn_40_2", "wrn_40_1") == 72.23
    assert paper.table3("alpha_ce", 0.2, "resnet32x4", "resnet8x4") == 76.61
    assert paper.table3("alpha_ce", 1, "resnet32x4", "resnet8x4") == 76.52
    assert paper.table3("alpha_ce", "ce_only", "resnet32x4", "resnet8x4") == 74.46
    assert paper.table3("loss_comb", "sr+fm", "resnet32x4", "resnet8x4") == 76.86
    assert paper.table5("teacher", "resnet56", "resnet20") == 68.91
    assert paper.table5("own", "resnet56", "resnet20") == 69.06
    assert paper.table1("teacher", "resnet32x4", None) == 79.42
    assert paper.table1("ijckd", "resnet8", "resnet20") is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"pairs": [{"teacher": "resnet32x4", "student": "resnet8x4"}, {"teacher": "wrn_40_2", "student": "wrn_40_1"}],
          "methods": ["kd", "dkd", "simkd", "ijckd"]}, ["table1"]),
        ({"pairs": [{"teacher": "resnet32x4", "student": "resnet8x4"}], "methods": ["simkd", "ijckd"],
          "grid": {"ijckd": {"connector_depth": [1, 2, 3]}, "simkd": {"connector_depth": [1, 2, 3]}}},
         ["table1", "table2"]),
        ({"pairs": [{"teacher": "resnet32x4", "student": "resnet8x4"}], "methods": ["ijckd", "teacher_head"],
          "grid": {"ijckd": {"alpha_ce": [0, 0.1, 0.2, 0.5, 1.0]}}}, ["table1", "table3", "table5"]),
        ({"pairs": [{"teacher": "resnet34", "student": "resnet18"}], "methods": ["kd", "ijckd"],
          "data": {"dataset": "imagenet"}}, ["table4"]),
        ({"pairs": [{"teacher": "resnet20", "student": "resnet8"}], "methods": ["ce", "kd", "ijckd"]}, []),
        ({"paper_table": "table5", "methods": ["ce"]}, ["table5"]),
    ],
)
def test_reproduction_spec_maps_to_paper_table(spec: dict, expected: list[str]) -> None:
    assert paper.paper_tables_for_spec(spec) == expected


def test_study_presets_map_to_their_paper_tables() -> None:
    presets = REPO / "study" / "presets"
    files = sorted(presets.glob("*table[1-5]*.yaml")) if presets.is_dir() else []
    if not files:
        pytest.skip(f"no paper-table presets in {presets} in this checkout")
    import yaml

    for path in files:
        number = next(ch for ch in path.stem.split("table", 1)[1] if ch.isdigit())
        assert f"table{number}" in paper.paper_tables_for_spec(yaml.safe_load(path.read_text())), path.name


# -- figures ------------------------------------------------------------------------------------------------------
def _assert_png_with_data(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3]
    assert float(rgb.std()) > 0.02, f"{path.name} looks blank"
    colored = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) > 0.15
    assert int(colored.sum()) > 50, f"{path.name} has no coloured data marks"


def test_every_figure_is_a_png_with_data(study_dir: Path, tmp_path: Path) -> None:
    results = build_figures(load_study(study_dir), tmp_path)
    drawn = {r.key: r for r in results if isinstance(r, FigureResult)}
    assert {"accuracy_curves", "loss_terms"} <= set(drawn)
    for i in (1, 2):  # one Optuna study per search stage (search-ce, search-kd)
        assert {f"search_history_{i}", f"search_importance_{i}", f"search_params_{i}"} <= set(drawn)
    for fig in drawn.values():
        _assert_png_with_data(fig.path)
        assert fig.title and fig.caption
    assert "bound_terms" in drawn  # every method with a teacher logs the error-bound terms (kd here)
    skipped = {r.key: r.reason for r in results if isinstance(r, Skipped)}
    assert "supervision_complexity" in skipped and "budget_accuracy" in skipped
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{k}.png" for k in drawn)


def test_bound_and_sc_curves_drawn_when_logged(study_dir: Path, tmp_path: Path) -> None:
    """The diagnostics' metrics, derived here from the real history, give their figures."""
    study = load_study(study_dir)
    h = study.history
    err = 100.0 - h["val/top1"]
    h["bound/teacher_err"] = 5.0
    h["bound/student_err"] = err
    h["bound/delta1"] = err / 2
    h["bound/delta2"] = err / 3
    h["bound/rhs"] = 5.0 + err / 2 + err / 3
    for i, name in enumerate(("labels", "random_labels", "offline_teacher", "online_teacher")):
        h[f"sc/{name}"] = h["train/loss"] * (i + 1)
    results = {r.key: r for r in build_figures(study, tmp_path)}
    for key in ("bound_terms", "supervision_complexity"):
        assert isinstance(results[key], FigureResult), results[key]
        _assert_png_with_data(results[key].path)


# -- reports ------------------------------------------------------------------------------------------------------
def test_report_with_errored_trial(budget_dir: Path, tmp_path: Path) -> None:
    html_path = build_report(budget_dir, tmp_path)
    md = (tmp_path / "report.md").read_text()
    html = html_path.read_text()
    for text in ("## Spec", "## Trials by state", "## Best configuration per method", "## Tables", "## Figures",
                 "## Errored trials", "## Not available in this study", "name: budget-study"):
        assert text in md, text
    assert "NonFiniteLossError: non-finite loss in term(s)" in md and "lr 1000000000000.0" in md
    assert "| kd | 1 | 1 | 2 |" in md  # kd: 1 terminated, 1 errored
    assert "Accuracy vs teacher-call budget" in md
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert {"accuracy_curves.png", "budget_accuracy.png"} <= {p.name for p in figures}
    assert html.count("src='data:image/png;base64,") == len(figures)
    assert "<img src='figures" not in html  # no external image links
    assert all(f"figures/{p.name}" in md for p in figures)
    assert html.count("NonFiniteLossError") == 1  # in the errored-trials table


def _copy_as_running(src: Path, dst: Path) -> Path:
    """A copy of the study as it looked mid-run: in final-kd one trial at epoch 1 of 2, the other not started."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint_*"))
    for stale in ("report.md", "report.html", "figures", "tables"):
        shutil.rmtree(dst / stale, ignore_errors=True) if (dst / stale).is_dir() else (dst / stale).unlink(True)
    exp = dst / "final-kd"
    state_file = sorted(exp.glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    names = []
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        names.append(trial["relative_logdir"])
        trial["status"] = "RUNNING" if len(names) == 1 else "PENDING"
        entry[0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))
    running, pending = exp / names[0], exp / names[1]
    lines = (running / "result.json").read_text().splitlines()
    (running / "result.json").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # half-written line
    csv = (running / "progress.csv").read_text().splitlines()
    (running / "progress.csv").write_text("\n".join(csv[:2]) + "\n")
    shutil.rmtree(pending)
    return dst


def test_report_for_a_study_still_running(study_dir: Path, tmp_path: Path) -> None:
    running_dir = _copy_as_running(study_dir, tmp_path / "running")
    study = load_study(running_dir)
    final_kd = study.trials[study.trials["experiment"] == "final-kd"].sort_values("state")
    assert list(final_kd["state"]) == ["pending", "running"]
    running = final_kd[final_kd["state"] == "running"].iloc[0]
    assert not running["completed"] and running["n_reports"] == 1 and math.isnan(running["test/top1"])
    assert not study.problems  # a half-written last line is expected while a trial runs

    html_path = build_report(running_dir)
    md = (running_dir / "report.md").read_text()
    assert "Status: still running (2 of 8 trials not finished)" in md
    assert "## Trials not finished yet" in md and "| pending |" in md and "| running |" in md
    assert "still running, paused or pending are not in this table yet" in md
    # until final-kd finishes, kd's cell is the searched configuration selected on val
    kd = table1_methods_by_pair(study).cells[("kd", PAIR)].selection
    assert set(kd.trial_ids) <= set(study.trials[study.trials["experiment"] == "search-kd"]["trial_id"])
    assert html_path.read_text().count("data:image/png;base64,") >= 4


def test_report_before_any_trial(tmp_path: Path) -> None:
    empty = tmp_path / "empty-study"
    empty.mkdir()
    (empty / "spec.yaml").write_text("name: empty\n")
    build_report(empty)
    md = (empty / "report.md").read_text()
    assert "Status: no trials yet" in md and "No figure could be drawn yet" in md


# -- the browser --------------------------------------------------------------------------------------------------
def test_report_renders_in_headless_chromium(study_dir: Path, tmp_path: Path) -> None:
    chromium = chromium_path()
    page = build_report(study_dir, tmp_path / "report")
    images = image_probe(chromium, page, tmp_path / "profile")
    assert len(images) == len(list((tmp_path / "report" / "figures").glob("*.png"))) >= 5
    for img in images:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
    # the probe can fail: a corrupted embedded image decodes to nothing
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("base64,iVBOR", "base64,AAAA", 1))
    images = image_probe(chromium, broken, tmp_path / "profile2")
    assert images[0]["width"] == 0 and all(i["width"] > 0 for i in images[1:])


def test_budget_cell_shows_images_per_epoch_beside_accuracy() -> None:
    from analysis.tables import Cell, Stat

    cell = Cell(Stat.of([70.0, 72.0]), images=Stat.of([200000, 200000]))
    assert cell.text() == "71.00 ± 1.41 · 200,000 img/epoch"
    assert Cell(Stat.of([70.0])).text() == "70.00"
