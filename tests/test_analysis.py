"""Analysis on a real small study: tables against the trials' own results, figures, reports, a browser.

One real study is made per test module with Ray Tune on digits (resnet8 student, the session teacher):
``grid-ce`` and ``grid-kd`` (2 seeds x 2 epochs), ``search-kd`` (OptunaSearch, 2 trials of 1 epoch, storage
``optuna.db``) and ``grid-broken`` (a kd trial whose teacher checkpoint does not exist: errored).
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

from analysis import paper
from analysis.curves import FigureResult, build_figures
from analysis.load import load_study
from analysis.report import build_report
from analysis.tables import Skipped, Table, build_tables, table1_methods_by_pair, table4_imagenet

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, ray_session, digits_teacher: dict) -> Path:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from trainables.trainable import trainable_for

    root = tmp_path_factory.mktemp("analysis_study") / "digits-study"
    root.mkdir()
    base = {"dataset": "digits", "student": "resnet8", "teacher": digits_teacher["arch"],
            "teacher_checkpoint": digits_teacher["checkpoint"]}

    def run(name: str, method: str, space: dict, **tune_config) -> None:
        tune.Tuner(
            tune.with_resources(trainable_for(method), {"cpu": 1}),
            param_space={**base, **space},
            tune_config=tune.TuneConfig(**tune_config) if tune_config else None,
            run_config=tune.RunConfig(name=name, storage_path=str(root), verbose=0),
        ).fit()

    for method in ("ce", "kd"):
        run(f"grid-{method}", method, {"epochs": 2, "seed": tune.grid_search([0, 1])})
    storage = optuna.storages.RDBStorage(f"sqlite:///{root / 'optuna.db'}")
    searcher = OptunaSearch(metric="val/top1", mode="max", storage=storage, study_name="digits-study/search-kd",
                            seed=0)
    run("search-kd", "kd", {"epochs": 1, "seed": 0, "temperature": tune.uniform(1.0, 8.0),
                            "kd_weight": tune.loguniform(0.1, 10.0)}, search_alg=searcher, num_samples=2)
    run("grid-broken", "kd", {"epochs": 2, "seed": 0, "teacher_checkpoint": str(root / "missing-teacher.pt")})
    (root / "spec.yaml").write_text(
        "name: digits-study\ndata: {dataset: digits}\npairs: [{teacher: resnet20, student: resnet8}]\n"
        "methods: [ce, kd]\nseeds: [0, 1]\nmetric: val/top1\nmode: max\n")
    return root


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def _independent_cells(root: Path) -> dict[str, dict]:
    """Per method, straight from the files: configs (params minus seed), the best on mean val, its test stats."""
    groups: dict[tuple, dict] = {}
    for params_file in root.glob("*/*/params.json"):
        trial = params_file.parent
        if (trial / "error.txt").exists():
            continue
        params = json.loads(params_file.read_text())
        rows = _results(trial)
        if not rows or rows[-1]["epoch"] != params["epochs"]:
            continue
        method = trial.name.split("_")[0]
        key = (method, tuple(sorted((k, str(v)) for k, v in params.items() if k not in ("seed", "teacher_checkpoint"))))
        entry = groups.setdefault(key, {"val": [], "test": [], "trials": []})
        entry["val"].append(rows[-1]["val/top1"])
        entry["test"].append(rows[-1]["test/top1"])
    best: dict[str, dict] = {}
    for (method, _), entry in groups.items():
        if method not in best or statistics.fmean(entry["val"]) > statistics.fmean(best[method]["val"]):
            best[method] = entry
    return best


# -- loading ----------------------------------------------------------------------------------------------------
def test_analysis_never_imports_ray_or_trainables(study_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "import analysis, analysis.load, analysis.tables, analysis.curves, analysis.report, analysis.paper\n"
        f"analysis.report.build_report({str(study_dir)!r}, {str(tmp_path / 'out')!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'trainables'))\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "out" / "report.html").is_file()


def test_trials_table_states_and_history(study_dir: Path) -> None:
    study = load_study(study_dir)
    trials = study.trials.set_index("trial_name")
    assert len(trials) == 2 + 2 + 2 + 1
    assert set(trials["method"]) == {"ce", "kd"}
    broken = trials[trials["experiment"] == "grid-broken"]
    assert list(broken["state"]) == ["errored"]
    assert "CheckpointError" in broken["error"].iloc[0] and "missing-teacher.pt" in broken["error"].iloc[0]
    ok = trials[trials["experiment"] != "grid-broken"]
    assert set(ok["state"]) == {"terminated"} and ok["completed"].all()
    assert sorted(ok[ok["experiment"] == "grid-ce"]["seed"]) == [0, 1]
    assert study.optuna_dbs == [study_dir / "optuna.db"] and study.spec["name"] == "digits-study"
    # history: one row per reported epoch, values as in result.json
    for name, row in ok.iterrows():
        rows = _results(Path(row["trial_dir"]))
        hist = study.history[study.history["trial_id"] == row["trial_id"]].sort_values("epoch")
        assert list(hist["epoch"]) == [r["epoch"] for r in rows], name
        assert np.allclose(hist["val/top1"], [r["val/top1"] for r in rows])
        assert row["test/top1"] == pytest.approx(rows[-1]["test/top1"])
    assert {"train/loss_ce", "train/loss_kd", "teacher_calls"} <= set(study.history.columns)
    assert set(study.knobs()) >= {"temperature", "kd_weight", "epochs"}


# -- tables -----------------------------------------------------------------------------------------------------
def test_table1_matches_trials_own_results(study_dir: Path, tmp_path: Path) -> None:
    study = load_study(study_dir)
    table = table1_methods_by_pair(study)
    assert isinstance(table, Table)
    expected = _independent_cells(study_dir)
    assert set(expected) == {"ce", "kd"}
    col = "resnet20 → resnet8"
    assert table.columns == [col] and table.rows == ["ce", "kd"]
    for method, entry in expected.items():
        cell = table.cells[(method, col)]
        assert cell.stat.n == len(entry["test"])
        assert cell.stat.mean == pytest.approx(statistics.fmean(entry["test"]))
        if len(entry["test"]) > 1:
            assert cell.stat.std == pytest.approx(statistics.stdev(entry["test"]))
        assert cell.selection.val.mean == pytest.approx(statistics.fmean(entry["val"]))
        assert cell.paper is None  # digits pair: not a paper pair
    means = {m: table.cells[(m, col)].stat.mean for m in ("ce", "kd")}
    winner = max(means, key=means.get)
    assert table.cells[(winner, col)].best and not table.cells[({"ce", "kd"} - {winner}).pop(), col].best

    report = build_report(study_dir, tmp_path)
    csv = pd.read_csv(tmp_path / "tables" / "table1_methods_by_pair.csv")
    for method, entry in expected.items():
        row = csv[csv["row"] == method].iloc[0]
        assert row["mean"] == pytest.approx(statistics.fmean(entry["test"]))
        assert int(row["n"]) == len(entry["test"])
        assert bool(row["best"]) == (method == winner)
    md = (tmp_path / "tables" / "table1_methods_by_pair.md").read_text()
    assert f"**{table.cells[(winner, col)].text()}**" in md
    tex = (tmp_path / "tables" / "table1_methods_by_pair.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{"))
    assert r"$\pm$" in tex and r"$\to$" in tex
    assert report == tmp_path / "report.html"


def test_best_per_method_and_search_table(study_dir: Path) -> None:
    tables = {t.key: t for t in build_tables(load_study(study_dir))}
    best = tables["best_per_method"].to_frame().set_index("method")
    expected = _independent_cells(study_dir)
    for method, entry in expected.items():
        assert best.loc[method, "test_top1_mean"] == pytest.approx(statistics.fmean(entry["test"]))
        assert best.loc[method, "val_mean"] == pytest.approx(statistics.fmean(entry["val"]))
    assert best.loc["kd", "configs compared"] == 3  # the grid config and 2 searched ones
    search = tables["search_top_configs"].to_frame()
    assert (search["method"] == "kd").sum() == 3
    assert list(search["val top-1 (%)"]) == sorted(search["val top-1 (%)"], reverse=True)
    for key in ("table2_connector_depth", "table3_ablation", "table4_imagenet", "table5_teacher_head",
                "online_vs_offline", "ckd_budget"):
        assert isinstance(tables[key], Skipped) and tables[key].reason


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
    md = table.to_markdown()
    assert "paper 73.33 (Δ " in md and "paper 72.50 (Δ " in md
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
    assert {"accuracy_curves", "loss_terms", "search_history", "search_importance", "search_params"} <= set(drawn)
    for fig in drawn.values():
        _assert_png_with_data(fig.path)
        assert fig.title and fig.caption
    skipped = {r.key: r.reason for r in results if isinstance(r, Skipped)}
    assert "bound_terms" in skipped and "supervision_complexity" in skipped and "budget_accuracy" in skipped
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
def test_report_with_errored_trial(study_dir: Path, tmp_path: Path) -> None:
    html_path = build_report(study_dir, tmp_path)
    md = (tmp_path / "report.md").read_text()
    html = html_path.read_text()
    for text in ("## Spec", "## Trials by state", "## Best configuration per method", "## Tables", "## Figures",
                 "## Errored trials", "## Not available in this study", "name: digits-study"):
        assert text in md, text
    assert "CheckpointError: teacher checkpoint not found" in md and "missing-teacher.pt" in md
    assert "| kd | 4 | 1 | 5 |" in md  # kd: 4 terminated, 1 errored
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert len(figures) >= 5
    assert html.count("src='data:image/png;base64,") == len(figures)
    assert "<img src='figures" not in html  # no external image links
    assert all(f"figures/{p.name}" in md for p in figures)


def _copy_as_running(src: Path, dst: Path) -> Path:
    """A copy of the study as it looked mid-run: one kd trial at epoch 1 of 2, the other not started."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint_*"))
    exp = dst / "grid-kd"
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
    kd_grid = study.trials[study.trials["experiment"] == "grid-kd"].sort_values("state")
    assert list(kd_grid["state"]) == ["pending", "running"]
    running = kd_grid[kd_grid["state"] == "running"].iloc[0]
    assert not running["completed"] and running["n_reports"] == 1 and math.isnan(running["test/top1"])
    assert not study.problems  # a half-written last line is expected while a trial runs

    html_path = build_report(running_dir)
    md = (running_dir / "report.md").read_text()
    assert "Status: still running (2 of 7 trials not finished)" in md
    assert "## Trials not finished yet" in md and "| pending |" in md and "| running |" in md
    assert "still running, paused or pending are not in this table yet" in md
    table = table1_methods_by_pair(study)
    assert set(table.cells[("kd", "resnet20 → resnet8")].selection.trial_ids) <= set(
        study.trials[study.trials["experiment"] == "search-kd"]["trial_id"])
    assert html_path.read_text().count("data:image/png;base64,") >= 4


def test_report_before_any_trial(tmp_path: Path) -> None:
    empty = tmp_path / "empty-study"
    empty.mkdir()
    (empty / "spec.yaml").write_text("name: empty\n")
    build_report(empty)
    md = (empty / "report.md").read_text()
    assert "Status: no trials yet" in md and "No figure could be drawn yet" in md


# -- the browser --------------------------------------------------------------------------------------------------
_PROBE = """<script>window.addEventListener('load', function () {
  var out = Array.prototype.slice.call(document.images).map(function (i) {
    return {complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}; });
  var pre = document.createElement('pre'); pre.id = 'image-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    subprocess.run(["bash", str(REPO / ".ci" / "install-chromium.sh")], check=False, timeout=900)
    path = shutil.which("chromium")
    if not path:
        reason = "Chromium is not installed and .ci/install-chromium.sh could not install it (see its output)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


def _image_probe(chromium: str, page: Path, profile: Path) -> list[dict]:
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.find('<pre id="image-probe">')
    assert start >= 0, "the page's load handler never ran"
    body = proc.stdout[start + len('<pre id="image-probe">'):]
    return json.loads(body[: body.index("</pre>")].replace("&quot;", '"'))


def test_report_renders_in_headless_chromium(study_dir: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    page = build_report(study_dir, tmp_path / "report")
    images = _image_probe(chromium, page, tmp_path / "profile")
    assert len(images) == len(list((tmp_path / "report" / "figures").glob("*.png"))) >= 5
    for img in images:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
    # the probe can fail: a corrupted embedded image decodes to nothing
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("base64,iVBOR", "base64,AAAA", 1))
    images = _image_probe(chromium, broken, tmp_path / "profile2")
    assert images[0]["width"] == 0 and all(i["width"] > 0 for i in images[1:])
