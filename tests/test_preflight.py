"""Files a study names are opened before Ray starts: a bad teacher, trajectory or data file is one line, exit 2.

Real files, damaged for real (random bytes, truncated on disk, another architecture or class count); the CLI's
``main`` runs in-process, one subprocess checks that Ray is never imported and nothing is written.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from study.__main__ import main
from trainables import models
from trainables.__main__ import main as trainables_main
from trainables.data import build_data
from trainables.data_files import check_imagenet
from trainables.errors import DataRootError

REPO = Path(__file__).resolve().parents[1]
TEACHER = "resnet20"


def _save_teacher(path: Path, arch: str = TEACHER, num_classes: int = 10, **meta) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": models.create(arch, num_classes=num_classes).state_dict(), **meta}, path)
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _spec(tmp_path: Path, teacher: dict, methods=("kd",), data=None) -> Path:
    spec = {
        "name": "pre",
        "storage_path": str(tmp_path / "studies"),
        "data": data or {"dataset": "digits"},
        "teacher": {"train": False, **teacher},
        "pairs": [{"teacher": TEACHER, "student": "resnet8"}],
        "methods": list(methods),
        "config": {"epochs": 1},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _validate(path: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def _one_line(rc: int, lines: list[str], *fragments: str) -> None:
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("study: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_fitting_teacher_checkpoint_passes(tmp_path, capsys):
    good = _save_teacher(tmp_path / "good.pt")
    rc, lines = _validate(_spec(tmp_path, {"checkpoints": {TEACHER: str(good)}}), capsys)
    assert rc == 0 and lines == []


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    return path


BAD_TEACHERS = {
    "random-bytes": (_random_bytes, "is not a torch checkpoint"),
    "truncated": (lambda d: _truncate(_save_teacher(d / "cut.pt")), "is a truncated or damaged torch checkpoint"),
    "other-architecture": (lambda d: _save_teacher(d / "wrn.pt", arch="wrn_16_2"), "missing keys"),
    "other-class-count": (lambda d: _save_teacher(d / "c100.pt", num_classes=100),
                          "fc.weight: checkpoint (100, 64) vs model (10, 64)"),
}


@pytest.mark.parametrize("case", list(BAD_TEACHERS))
def test_a_bad_teacher_checkpoint_is_one_line(case, tmp_path, capsys):
    make, found = BAD_TEACHERS[case]
    path = make(tmp_path)
    rc, lines = _validate(_spec(tmp_path, {"checkpoints": {TEACHER: str(path)}}), capsys)
    # the file, what was found, what was expected
    _one_line(rc, lines, f"teacher.checkpoints.{TEACHER}", str(path), found, f"teacher '{TEACHER}' (10 classes)")


def test_a_bad_teacher_stops_run_before_ray_and_writes_nothing(tmp_path):
    path = _spec(tmp_path, {"checkpoints": {TEACHER: str(_random_bytes(tmp_path))}})
    code = (
        "import sys; from study.__main__ import main; rc = main(['run', sys.argv[1]]); "
        "print('RAY' if 'ray' in sys.modules else 'NORAY', rc)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split() == ["NORAY", "2"], out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "random.pt" in lines[0], out.stderr
    assert not (tmp_path / "studies").exists()


def _trajectory(folder: Path, epochs=(1, 2), num_classes: int = 10) -> Path:
    for e in epochs:
        _save_teacher(folder / f"epoch_{e:04d}.pt", num_classes=num_classes, epoch=e)
    _save_teacher(folder / "final.pt", epoch=3)
    return folder


def _online_spec(tmp_path: Path, folder: Path) -> Path:
    teacher = {"checkpoints": {TEACHER: str(folder / "final.pt")}, "trajectories": {TEACHER: str(folder)}}
    return _spec(tmp_path, teacher, methods=("online",))


def test_a_fitting_trajectory_passes(tmp_path, capsys):
    rc, lines = _validate(_online_spec(tmp_path, _trajectory(tmp_path / "traj")), capsys)
    assert rc == 0 and lines == []


@pytest.mark.parametrize("damage", ["truncated", "other-class-count", "random-bytes"])
def test_a_bad_trajectory_file_is_one_line(damage, tmp_path, capsys):
    folder = _trajectory(tmp_path / "traj")
    bad = folder / "epoch_0002.pt"
    if damage == "truncated":
        _truncate(bad, 0.9)
    elif damage == "other-class-count":
        _save_teacher(bad, num_classes=100, epoch=2)
    else:
        bad.write_bytes(random.Random(1).randbytes(2048))
    rc, lines = _validate(_online_spec(tmp_path, folder), capsys)
    _one_line(rc, lines, f"teacher.trajectories.{TEACHER}", str(bad), f"teacher '{TEACHER}' (10 classes)")


# -- data files ---------------------------------------------------------------------------------------------------
def test_fake_cifar_reads_in_torchvisions_order(tmp_path, fake_cifar):
    import pickle

    folder = fake_cifar(tmp_path, "cifar10", per_file=20)
    bundle = build_data({"dataset": "cifar10", "data_root": str(tmp_path), "val_fraction": 0.5})
    entry = pickle.loads((folder / "test_batch").read_bytes())
    expected = torch.from_numpy(entry["data"].reshape(-1, 3, 32, 32))  # CHW rows, as the CIFAR page documents
    assert torch.equal(bundle.test.images, expected)
    assert bundle.test.labels.tolist() == entry["labels"]
    assert bundle.train.num_examples + bundle.val.num_examples == 5 * 20 and bundle.num_classes == 10


def _cifar_spec(tmp_path: Path, root: Path) -> Path:
    path = _spec(tmp_path, {"train": True}, methods=("ce",), data={"dataset": "cifar100", "root": str(root)})
    return path


@pytest.mark.parametrize("damage", ["truncated", "missing", "not-a-batch"])
def test_a_damaged_cifar_file_is_one_line_in_both_clis(damage, tmp_path, fake_cifar, capsys):
    root = tmp_path / "data"
    folder = fake_cifar(root, "cifar100")
    bad = folder / "train"
    if damage == "truncated":
        _truncate(bad, 0.6)
    elif damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(__import__("pickle").dumps({"rows": [1, 2, 3]}))
    rc, lines = _validate(_cifar_spec(tmp_path, root), capsys)
    _one_line(rc, lines, f"data file {bad} ")
    if damage == "truncated":
        assert "truncated" in lines[0]
    message = lines[0][len("study: error: data.root: "):]
    # the debugging CLI (no Ray, no study) gives the same line
    rc = trainables_main(["dataset=cifar100", f"data_root={root}", "epochs=1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {message}"], err


def test_a_sound_fake_cifar_validates(tmp_path, fake_cifar, capsys):
    fake_cifar(tmp_path / "data", "cifar100")
    rc, lines = _validate(_cifar_spec(tmp_path, tmp_path / "data"), capsys)
    assert rc == 0 and lines == []


def _imagenet(root: Path, train=("n01", "n02"), val=("n01", "n02")) -> Path:
    for split, classes in (("train", train), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            (root / split / c / "a.JPEG").write_bytes(b"")
    return root


def test_imagenet_folder_layout_is_checked(tmp_path):
    assert check_imagenet(_imagenet(tmp_path / "ok")) == 2
    with pytest.raises(DataRootError, match="different class folders"):
        check_imagenet(_imagenet(tmp_path / "short", val=("n01",)))
    root = _imagenet(tmp_path / "empty")
    (root / "val" / "n02" / "a.JPEG").unlink()
    with pytest.raises(DataRootError, match=f"class folder {root / 'val' / 'n02'} holds no image files"):
        check_imagenet(root)
    with pytest.raises(DataRootError, match="expected .*val"):
        build_data({"dataset": "imagenet", "data_root": str(_imagenet(tmp_path / "noval", val=()))})
