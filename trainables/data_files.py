"""Data-set files on disk: read CIFAR's python batches, check ImageNet's folder layout.

One place both the data loader (``trainables.data``) and the study's preflight use, so a truncated
``cifar-100-python/train`` or an empty ImageNet class folder is one ``DataRootError`` naming the file,
raised before any training (or Ray) starts, and the same line whichever path finds it.

CIFAR batches are read here rather than through torchvision's dataset classes: those check a fixed MD5
per file and answer any difference with "Dataset not found or corrupted", without naming the file.
Reading a batch (a pickled dict with ``data`` (N, 3072) uint8 and ``labels`` or ``fine_labels``) checks
it completely; the pixels come out in the same order torchvision gives.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataRootError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""What torchvision's ImageFolder counts as an image (lower case; it compares case-insensitively)."""


@dataclass(frozen=True)
class CifarLayout:
    """The files of one CIFAR python release and the label key its batches use."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    classes: int


CIFAR = {
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
    "cifar10": CifarLayout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10
    ),
}


def _bad(path: Path, found: str, layout: CifarLayout) -> DataRootError:
    return DataRootError(
        f"data file {path} is {found}; expected a CIFAR python batch (a pickled dict with 'data' (N, 3072 uint8) "
        f"and '{layout.label_key}' in 0..{layout.classes - 1}): re-extract {layout.folder} from {CIFAR_URL}"
    )


def read_cifar_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images (N, 3, 32, 32) uint8, labels (N,) int64); any defect is a DataRootError."""
    if not path.is_file():
        raise DataRootError(f"data file {path} not found; expected the files of {layout.folder} ({CIFAR_URL})")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError) as err:
        reason = " ".join(str(err).split())[:120]
        truncated = isinstance(err, EOFError) or "truncated" in reason
        found = "truncated" if truncated else f"not a readable pickle ({type(err).__name__}: {reason})"
        raise _bad(path, f"{found} ({path.stat().st_size} bytes)", layout) from None
    if not isinstance(entry, dict) or "data" not in entry or layout.label_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise _bad(path, f"a pickle without 'data' and '{layout.label_key}' (holds {keys})", layout)
    data, labels = np.asarray(entry["data"]), np.asarray(entry[layout.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _bad(path, f"a batch whose 'data' is {data.dtype} {data.shape}", layout)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise _bad(path, f"a batch of {data.shape[0]} images with {labels.shape} labels of {labels.dtype}", layout)
    if labels.size and (labels.min() < 0 or labels.max() >= layout.classes):
        raise _bad(path, f"a batch with labels {labels.min()}..{labels.max()}", layout)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(root: str | os.PathLike, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, test_images, test_labels)`` of a CIFAR release under ``root``.

    Images are uint8 (N, 3, 32, 32) in the release's order (as torchvision reads them).
    """
    layout = CIFAR[name]
    folder = Path(root) / layout.folder

    def read(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_cifar_batch(folder / f, layout) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    return (*read(layout.train), *read(layout.test))


def check_imagenet(root: str | os.PathLike) -> int:
    """Check ``root/train`` and ``root/val`` hold the same class folders, each with an image; return the count.

    Cheap: lists folders and stops at the first image of each class; the images themselves are not opened.
    """
    root = Path(root)
    how = "arrange ILSVRC-2012 as data_root/train/<wnid>/*.JPEG and data_root/val/<wnid>/*.JPEG"
    classes = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataRootError(f"dataset 'imagenet' not found: expected {folder}; {how}")
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if not names:
            raise DataRootError(f"{folder} holds no class folders; {how}")
        for name in names:
            with os.scandir(folder / name) as entries:
                if not any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
                    raise DataRootError(
                        f"class folder {folder / name} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
                    )
        classes[split] = names
    if classes["train"] != classes["val"]:
        only = sorted(set(classes["train"]) ^ set(classes["val"]))
        raise DataRootError(
            f"{root}/train and {root}/val hold different class folders ({len(classes['train'])} vs "
            f"{len(classes['val'])}; e.g. {', '.join(only[:3])}): labels would not line up; {how}"
        )
    return len(classes["train"])


def check_data_files(dataset: str, root: str | os.PathLike | None) -> int | None:
    """Open and check every file a data set reads (CIFAR) or its folder layout (ImageNet).

    Returns the class count found on disk (ImageNet), else None. Other data sets have no files.
    """
    if dataset in CIFAR and root:
        load_cifar(root, dataset)
        return None
    if dataset == "imagenet" and root:
        return check_imagenet(root)
    return None
