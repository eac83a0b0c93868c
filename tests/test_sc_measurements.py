"""Supervision complexity at initialisation, along the teacher's trajectory and over temperatures; the
``per_logit`` kernel against the full Gram's ASC as the paper writes it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.diagnostics.complexity import NTKGram, ntk_gram
from trainables.loop import build_trial, train
from trainables.reporting import RunDirReporter


def paper_asc(full: np.ndarray, y: np.ndarray) -> float:
    """sqrt(vec(Y)^T K^-1 vec(Y) * tr K) / n on the nk x nk Gram (row i*k + c), straight from the formula."""
    n = y.shape[0]
    v = y.reshape(-1)
    return math.sqrt(float(v @ np.linalg.solve(full, v)) * float(np.trace(full))) / n


def test_per_logit_asc_is_the_full_grams_asc_over_sqrt_k() -> None:
    n, k = 9, 4
    rng = np.random.default_rng(0)
    blocks = []
    for _ in range(k):
        a = rng.normal(size=(n, 2 * n))
        blocks.append(a @ a.T / n * rng.uniform(0.5, 3.0))
    full = np.zeros((n * k, n * k))
    for c, b in enumerate(blocks):  # no cross-logit terms: the case per_logit is exact for
        full[c::k, c::k] = b
    y = np.eye(k)[rng.integers(0, k, n)] * 0.7 + 0.3 / k
    expected = paper_asc(full, y)
    gram = NTKGram("per_logit", torch.tensor(np.stack(blocks)), n, k)
    assert gram.asc(torch.tensor(y), ridge=0.0) == pytest.approx(expected / math.sqrt(k), rel=1e-9)
    full_gram = NTKGram("full", torch.tensor(full), n, k)  # the logged full kind uses the same per-output trace
    assert full_gram.asc(torch.tensor(y), ridge=0.0) == pytest.approx(expected / math.sqrt(k), rel=1e-9)


@pytest.mark.parametrize("kind", ["per_logit", "trace", "sum", "full"])
def test_many_targets_in_one_solve_equal_one_at_a_time(kind: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    gram = ntk_gram(model, torch.randn(6, 5, dtype=torch.float64), kind)
    targets = {f"t{i}": torch.softmax(torch.randn(6, 3, dtype=torch.float64) * i, 1) for i in range(4)}
    many = gram.asc_many(targets)
    for name, y in targets.items():
        assert many[name] == pytest.approx(gram.asc(y), rel=1e-12), name


@pytest.mark.slow
def test_online_trial_measures_at_init_along_the_trajectory_and_over_temperatures(
    student_cfg: dict, tmp_path: Path
) -> None:
    source = Path(student_cfg["teacher_checkpoint"]).parent
    traj = tmp_path / "trajectory"
    traj.mkdir()
    for name in ("epoch_0002.pt", "epoch_0004.pt", "final.pt"):
        shutil.copy(source / name, traj / name)
    cfg = {**student_cfg, "method": "online", "teacher_trajectory": str(traj), "epochs": 2, "train_subset": 256,
           "sc_every": 1, "sc_n": 24, "sc_kernel": "sum", "temperature": 2.0}
    run = RunDirReporter(tmp_path / "run")
    train(cfg, reporter=run)
    first, second = run.history
    final_epoch = int(torch.load(traj / "final.pt", weights_only=True)["epoch"])
    traj_keys = ["trajectory/0002", "trajectory/0004", f"trajectory/{final_epoch:04d}"]
    names = ["labels", "random_labels", "offline_teacher", "online_teacher", *traj_keys,
             "teacher_T1", "teacher_T2", "teacher_T4", "teacher_T8"]
    for prefix, row in (("sc_init/", first), ("sc/", first), ("sc/", second)):
        assert all(math.isfinite(row[prefix + k]) and row[prefix + k] > 0 for k in names), (prefix, row)
    assert not any(k.startswith("sc_init/") for k in second)  # once, with the first report
    # at init the online teacher is the checkpoint of epoch 0 (the earliest kept); T2 is the trial's T
    assert first["sc_init/online_teacher"] == pytest.approx(first["sc_init/trajectory/0002"], rel=1e-12)
    assert first["sc_init/offline_teacher"] == pytest.approx(first["sc_init/teacher_T2"], rel=1e-12)
    assert first["sc_init/offline_teacher"] == pytest.approx(first[f"sc_init/trajectory/{final_epoch:04d}"], rel=1e-12)
    assert first["sc_init/labels"] != pytest.approx(first["sc/labels"], rel=1e-6)  # the kernel moved in training

    # the init value, independently: a freshly built student (same seed) and the formula in numpy
    trial = build_trial(cfg)
    probe = trial.diagnostics.complexity
    from trainables.diagnostics.complexity import ComplexityProbe

    points = ComplexityProbe(trial.data.train, 24, trial.data.num_classes, 0)
    kernel = ntk_gram(trial.method.student, points.x, "sum").matrix.numpy()
    y = points.onehot.numpy()
    sc = float(np.trace(y.T @ np.linalg.solve(kernel + 1e-6 * np.trace(kernel) / 24 * np.eye(24), y)))
    assert probe is not None
    assert first["sc_init/labels"] == pytest.approx(math.sqrt(sc * np.trace(kernel)) / 24, rel=1e-5)


def test_sc_figures_start_at_init_and_sweep_trajectory_and_temperature(tmp_path: Path) -> None:
    """Figures from a (synthetic) study: the sc_init/* values are the curves' epoch 0; the trajectory and
    temperature sweeps are drawn, the axis names the kernel and the per_logit relation."""
    from analysis.curves import Curves, FigureResult, build_figures, sc_axis_label
    from analysis.load import load_study
    from benchmarks.fake_study import make_study

    study = load_study(make_study(tmp_path, methods=("kd",), pairs=(("resnet56", "resnet20"),), seeds=(0, 1),
                                  epochs=4))
    h = study.history
    h["sc/labels"] = 2.0 + h["epoch"]
    first = h.groupby("trial_id")["epoch"].transform("min") == h["epoch"]
    h.loc[first, "sc_init/labels"] = 1.5
    for e in (0, 5, 10):
        h[f"sc/trajectory/{e:04d}"] = 1.0 + e / 10 + h["epoch"]
        h.loc[first, f"sc_init/trajectory/{e:04d}"] = 0.5 + e / 10
    for t in (1, 2, 4, 8):
        h[f"sc/teacher_T{t}"] = 3.0 - t / 8 + h["epoch"]
        h.loc[first, f"sc_init/teacher_T{t}"] = 1.0 - t / 16
    curves = Curves(study)
    ids = list(study.trials.loc[study.trials["method"] == "kd", "trial_id"])
    init = curves.curve(ids, "sc/labels")
    assert init.epoch[0] == 0 and init.mean[0] == pytest.approx(1.5) and list(init.epoch[1:]) == [1, 2, 3, 4]
    assert curves.curve(ids, "sc/teacher_T4").mean[0] == pytest.approx(0.75)
    results = {r.key: r for r in build_figures(study, tmp_path / "figures")}
    for key in ("supervision_complexity", "sc_teacher_trajectory", "sc_teacher_temperature"):
        assert isinstance(results[key], FigureResult), results[key]
        assert results[key].path.stat().st_size > 10_000
    assert "full nk×nk Gram's ASC / √k" in sc_axis_label(study.trials)  # per_logit is the default kernel
    assert "√k" not in sc_axis_label(study.trials.assign(**{"config/sc_kernel": "sum"}))
