"""Data sets and splits: seeded, disjoint, and clear about what is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables import data as data_module
from trainables.data import DATASETS, apply_crop_flip, build_data, dataset_info, list_datasets, split_indices
from trainables.errors import ConfigError, DataRootError


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.numpy().tobytes()) for img in images}


def test_digits_shapes_and_sizes():
    data = build_data({"dataset": "digits"})
    assert data.num_classes == 10
    assert data.input_shape == (3, 32, 32)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert abs(len(data.test) - 360) <= 5  # 20 %, stratified per class
    assert abs(len(data.val) - 144) <= 5  # 10 % of the training images, stratified
    assert data.train.images.dtype == torch.uint8


def test_digits_read_from_the_bundled_file_equal_scikit_learns_loader(monkeypatch):
    """The file read that spares each trial the scikit-learn import returns load_digits' arrays exactly,
    and without the file (a different scikit-learn layout) load_digits itself is used."""
    from sklearn.datasets import load_digits

    reference = load_digits()
    pixels, target = data_module.bundled_digits()
    assert np.array_equal(pixels, reference.images) and np.array_equal(target, reference.target)
    monkeypatch.setattr(data_module.importlib.util, "find_spec", lambda name: None)
    fallback_pixels, fallback_target = data_module.bundled_digits()
    assert np.array_equal(fallback_pixels, reference.images) and np.array_equal(fallback_target, reference.target)


def test_splits_are_disjoint_and_cover_the_training_set():
    train_idx, val_idx = split_indices(1000, 0.1, seed=3)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(train_idx) + len(val_idx) == 1000
    data = build_data({"dataset": "digits"})
    # No image of val appears in train (digits has a few exact duplicates, so compare by index sets).
    assert len(_rows(data.val.images) & _rows(data.test.images)) <= 2


def test_split_is_seeded():
    a = build_data({"dataset": "digits", "split_seed": 0})
    b = build_data({"dataset": "digits", "split_seed": 0})
    c = build_data({"dataset": "digits", "split_seed": 1})
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)  # the test split never moves


def test_stratified_split_keeps_every_class_in_val():
    labels = np.repeat(np.arange(10), 50)
    _, val_idx = split_indices(len(labels), 0.1, seed=0, labels=labels)
    assert np.bincount(labels[val_idx], minlength=10).tolist() == [5] * 10


def test_train_subset_takes_seeded_examples():
    a = build_data({"dataset": "digits", "train_subset": 300})
    b = build_data({"dataset": "digits", "train_subset": 300})
    assert len(a.train) == 300
    assert torch.equal(a.train.labels, b.train.labels)
    with pytest.raises(ConfigError, match="train_subset"):
        build_data({"dataset": "digits", "train_subset": 100000})


def test_batches_cover_the_split_once_per_epoch():
    data = build_data({"dataset": "digits"})
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([b.index for b in data.train.batches(64, shuffle=True, augment=True, generator=gen)])
    assert sorted(seen.tolist()) == list(range(len(data.train)))


def test_fixed_crop_and_flip_match_manual_slicing():
    img = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    out = apply_crop_flip(img, 2, torch.tensor([0, 4]), torch.tensor([1, 2]), torch.tensor([False, True]))
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:6, 1:7])
    assert torch.equal(out[1], padded[1, :, 4:10, 2:8].flip(-1))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1000'.*allowed: cifar10, cifar100, digits"):
        build_data({"dataset": "cifar1000"})


@pytest.mark.parametrize("name, folder", [("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")])
def test_missing_cifar_root_names_the_path(tmp_path, name, folder):
    with pytest.raises(DataRootError, match=f"{tmp_path / folder}.*download"):
        build_data({"dataset": name, "data_root": str(tmp_path)})


def test_missing_imagenet_root_names_the_path(tmp_path):
    with pytest.raises(DataRootError, match="imagenet.*train"):
        build_data({"dataset": "imagenet", "data_root": str(tmp_path / "nowhere")})


def test_data_root_required_for_cifar():
    with pytest.raises(DataRootError, match="needs data_root"):
        build_data({"dataset": "cifar100"})


@pytest.mark.parametrize("cfg", [{"dataset": "digits"}, {"dataset": "synthetic", "synthetic_size": 64,
                                                         "synthetic_classes": 7, "synthetic_image_size": 16}])
def test_built_data_matches_its_declaration(cfg):
    """The declaration (read by spec validation and the probe) and the builder agree on classes and shape."""
    info = dataset_info(cfg["dataset"])
    data = build_data(cfg)
    classes, side = info.shape(cfg)
    assert (data.num_classes, data.input_shape) == (classes, (3, side, side))
    if info.mean is not None:
        assert data.train.mean == pytest.approx(info.mean) and data.train.std == pytest.approx(info.std)


def test_every_registered_dataset_is_declared():
    assert sorted(DATASETS) == list_datasets()
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.needs_root or not info.folders  # folders live under a root
        assert not info.needs_root or info.how  # a missing root says how to get the data
