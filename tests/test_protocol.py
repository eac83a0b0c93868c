"""The papers' protocol: ``val_fraction: 0`` trains on the whole training split, reports no validation, and the
tables label such numbers "full training set, final epoch" instead of calling them validation-selected."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import Study
from analysis.tables import (
    BEST_EPOCH,
    FULL_TRAINING,
    VALIDATION_SELECTED,
    best_per_method,
    table1_methods_by_pair,
)
from trainables.data import build_data
from trainables.errors import ConfigError
from trainables.loop import train

DIGITS_TRAIN = 1438  # digits images left for train + val once the fixed stratified test split is set aside


def test_val_fraction_zero_trains_on_the_whole_training_split():
    full = build_data({"dataset": "digits", "val_fraction": 0})
    assert (len(full.train), len(full.val)) == (DIGITS_TRAIN, 0)
    held = build_data({"dataset": "digits"})
    assert len(held.train) + len(held.val) == DIGITS_TRAIN and len(held.val) > 0
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\) \(0: no validation split"):
        build_data({"dataset": "digits", "val_fraction": 1})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> dict:
    cfg = {"method": "ce", "dataset": "digits", "student": "resnet8", "epochs": 1, "batch_size": 64, "seed": 0,
           "val_fraction": 0}
    return train(cfg, workdir=tmp_path_factory.mktemp("full"))


def test_full_training_trial_reports_test_and_no_validation(full_run):
    assert math.isnan(full_run["val/top1"]) and math.isnan(full_run["val/top5"])
    assert 0 <= full_run["test/top1"] <= 100


def test_family_exports_without_a_validation_split(student_cfg, tmp_path):
    final = train({**student_cfg, "method": "srrl", "epochs": 1, "train_subset": 128, "val_fraction": 0},
                  workdir=tmp_path)
    assert math.isnan(final["val/top1"]) and math.isnan(final["bound/student_err"])
    assert (tmp_path / "export" / "model.pt").is_file()


def _row(trial_id: str, method: str, seed: int, test: float, val: float, **config) -> dict:
    row = {"trial_id": trial_id, "method": method, "teacher": "resnet20", "student": "resnet8", "seed": seed,
           "dataset": "digits", "state": "terminated", "completed": True, "config/epochs": 1,
           "val/top1": val, "test/top1": test}
    row.update({f"config/{k}": v for k, v in config.items()})
    return row


def _study(rows: list[dict]) -> Study:
    return Study(root=Path("/nonexistent"), trials=pd.DataFrame(rows), history=pd.DataFrame())


def test_tables_label_full_training_cells(full_run):
    test = full_run["test/top1"]
    rows = [_row("a", "kd", 0, test, full_run["val/top1"], val_fraction=0),
            _row("b", "kd", 1, test - 1.0, math.nan, val_fraction=0)]
    table = table1_methods_by_pair(_study(rows))
    cell = table.cells[("kd", "resnet20 → resnet8")]
    assert cell.selection.protocol == FULL_TRAINING and cell.stat.n == 2
    assert cell.stat.mean == pytest.approx(test - 0.5) and cell.text().endswith(" †") and "n=2" in cell.hover()
    assert FULL_TRAINING in table.caption and VALIDATION_SELECTED not in table.caption
    assert any(FULL_TRAINING in note and "not selected on validation" in note for note in table.notes)
    assert list(table.to_frame()["protocol"]) == [FULL_TRAINING]
    best = best_per_method(_study(rows))
    assert list(best.frame["protocol"]) == [FULL_TRAINING] and best.frame["seeds"].tolist() == [2]

    mixed = table1_methods_by_pair(_study(rows + [_row("c", "ce", 0, 50.0, 60.0)]))
    assert VALIDATION_SELECTED in mixed.caption  # the ce cell was selected on validation
    assert mixed.cells[("ce", "resnet20 → resnet8")].selection.protocol == VALIDATION_SELECTED
    assert any(note.startswith(f"† {FULL_TRAINING}") for note in mixed.notes)


def test_several_configs_without_validation_are_not_chosen_on_test():
    rows = [_row("a", "kd", 0, 70.0, math.nan, val_fraction=0, temperature=2),
            _row("b", "kd", 0, 80.0, math.nan, val_fraction=0, temperature=4),
            _row("c", "ce", 0, 50.0, 60.0)]
    table = table1_methods_by_pair(_study(rows))
    assert ("kd", "resnet20 → resnet8") not in table.cells


def test_best_epoch_on_test_beside_the_final_epoch():
    """Two kd trials on a paper pair, test logged every epoch: best epochs 72 and 70 give 71 beside the final."""
    pair = {"teacher": "resnet32x4", "student": "resnet8x4"}
    rows = [{**_row("a", "kd", 0, 71.0, 60.0), **pair}, {**_row("b", "kd", 1, 69.0, 61.0), **pair}]
    history = pd.DataFrame({"trial_id": ["a", "a", "a", "b", "b", "b"], "epoch": [1, 2, 3] * 2,
                            "test/top1": [50.0, 72.0, 71.0, 40.0, 70.0, 69.0]})
    study = Study(root=Path("/nonexistent"), trials=pd.DataFrame(rows), history=history)
    cell = table1_methods_by_pair(study).cells[("kd", "resnet32x4 → resnet8x4")]
    assert cell.stat.mean == pytest.approx(70.0) and cell.best_epoch.mean == pytest.approx(71.0)
    assert "best epoch 71.00‡" in cell.text()
    assert any(BEST_EPOCH in note for note in table1_methods_by_pair(study).notes)

    sparse = Study(root=Path("/nonexistent"), trials=pd.DataFrame(rows),
                   history=history.assign(**{"test/top1": [math.nan, math.nan, 71.0, math.nan, math.nan, 69.0]}))
    assert table1_methods_by_pair(sparse).cells[("kd", "resnet32x4 → resnet8x4")].best_epoch is None
