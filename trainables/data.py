"""Data sets, seeded splits and batching.

Two paths feed the loop through one interface (``Split.batches``):

* ``TensorSplit`` holds a whole split as one uint8 tensor on the trial's device and augments on that
  device in batches (random crop with zero padding, horizontal flip, normalisation). CIFAR, digits and
  synthetic data use it: no worker processes, no PIL, and a seeded order that makes resume exact.
* ``LoaderSplit`` wraps a torch ``DataLoader`` for data that does not fit in memory (ImageNet folders).

Splits: ``train`` / ``val`` / ``test``. ``val`` is carved from the official training set with
``split_seed`` (default 0, the same for every trial of a study, so all trials select on the same images);
``test`` is the official test set and is touched once per trial, at the end.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import epoch_generator
from .data_files import CIFAR as CIFAR_FILES
from .data_files import check_imagenet, load_cifar
from .errors import ConfigError, DataRootError, unknown_choice


@dataclass
class Batch:
    """One training or evaluation batch: images, labels and their indices in the split."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    augmented: bool = False
    """Whether ``x`` went through random augmentation (a cache keyed by ``index`` is only valid when not)."""


class Split:
    """A split the loop can iterate: ``batches(...)`` yields normalised ``Batch`` objects."""

    num_examples: int

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        drop_last_single: bool = True,
    ) -> Iterator[Batch]:
        raise NotImplementedError

    def ordered_batches(
        self,
        order: torch.Tensor,
        batch_size: int,
        *,
        augment: bool,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` images taken in ``order`` (split indices; one may repeat), each image with
        its own augmentation: a sampler that is not one shuffled pass (CKD's groups) feeds the loop this way."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_examples

    def targets(self) -> torch.Tensor:
        """The label of every example, in index order (methods that sample by class, e.g. CRD's negatives)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its labels")


def draw_crop_flip(
    n: int, padding: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` crop offsets (y, x), each uniform over 0..2*padding, and flip flags with probability 0.5, on the CPU.

    torchvision's RandomCrop(padding=p) pads by p and draws the top-left corner uniformly from the
    (2p + 1)^2 positions; RandomHorizontalFlip flips when a uniform draw is below 0.5. Same law here.
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets[0], offsets[1], flips


def apply_crop_flip(
    images: torch.Tensor, padding: int, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop each image at its own offset, then flip the chosen ones.

    Works on any dtype and device; two ``torch.gather`` calls for the whole batch (rows, then columns with
    the flip folded into the column index) instead of a Python loop per image. Exact: pure indexing.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = oy.to(device)[:, None] + torch.arange(h, device=device)[None, :]
    cols = ox.to(device)[:, None] + torch.arange(w, device=device)[None, :]
    cols = torch.where(flip.to(device)[:, None], cols.flip(1), cols)
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))


class TensorSplit(Split):
    """A split held as uint8 images (N, C, H, W) and int64 labels, augmented on their device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_padding: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"TensorSplit wants uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long()
        self.num_examples = int(images.shape[0])
        self.crop_padding = crop_padding
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # A tensor, not the number: CUDA divides by a Python scalar as a multiply by its reciprocal, which
        # differs from ToTensor's true division in the last bit for about half the pixel values.
        self._255 = torch.full((1, 1, 1, 1), 255.0)
        self.memory_format = torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean (what ``transforms.Normalize`` would be given)."""
        return tuple(float(v) for v in self._mean.flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._std.flatten().tolist())

    def targets(self) -> torch.Tensor:
        return self.labels

    def to(self, device: torch.device | str) -> TensorSplit:
        """Move the whole split to ``device`` once; batches are then cut and augmented there."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        self._mean = self._mean.to(device)
        self._std = self._std.to(device)
        self._255 = self._255.to(device)
        return self

    def subset(self, indices: torch.Tensor) -> TensorSplit:
        indices = indices.to(self.images.device)
        out = TensorSplit(self.images[indices], self.labels[indices], (0,), (1,), self.crop_padding)
        out._mean, out._std, out._255, out.memory_format = self._mean, self._std, self._255, self.memory_format
        return out

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1] -> (x - mean) / std: the same arithmetic as ToTensor + Normalize."""
        x = images_uint8.contiguous(memory_format=self.memory_format).float().div_(self._255)
        return x.sub_(self._mean).div_(self._std)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        drop_last_single: bool = True,
    ) -> Iterator[Batch]:
        """Cut the split into batches on its device.

        The epoch's order and all its augmentation parameters are drawn up front on the CPU generator
        and copied to the device once, so the batches themselves never wait on the host.
        """
        n = self.num_examples
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        yield from self._cut(order, batch_size, augment, generator, drop_last_single and shuffle)

    def ordered_batches(
        self,
        order: torch.Tensor,
        batch_size: int,
        *,
        augment: bool,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        yield from self._cut(order.long(), batch_size, augment, generator, True)

    def _cut(
        self, order: torch.Tensor, batch_size: int, augment: bool, generator: torch.Generator | None,
        drop_last_single: bool,
    ) -> Iterator[Batch]:
        """Batches along ``order``; all augmentation parameters drawn up front (after the order, as before)."""
        n = int(order.shape[0])
        device = self.images.device
        order = order.to(device)
        if augment:
            oy_all, ox_all, flip_all = (t.to(device) for t in draw_crop_flip(n, self.crop_padding, generator))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if drop_last_single and stop - start == 1 and n > 1:
                break  # BatchNorm cannot train on a single example
            idx = order[start:stop]
            imgs = self.images[idx]
            if augment:
                imgs = apply_crop_flip(
                    imgs, self.crop_padding, oy_all[start:stop], ox_all[start:stop], flip_all[start:stop]
                )
            yield Batch(self.normalize(imgs), self.labels[idx], idx, augmented=augment)


def training_batches(split: Split, cfg: Mapping[str, Any], epoch: int) -> Iterator[Batch]:
    """Epoch ``epoch``'s training batches: shuffled and augmented by the (seed, epoch) generator alone.

    The one definition of a trial's training order: the loop trains on it and the teacher stream computes
    the teacher ahead on it (a trial waiting for another's chunk computes a later one), so both are the
    very same batches.
    """
    return split.batches(int(cfg["batch_size"]), shuffle=True, augment=bool(cfg["augment"]),
                         generator=epoch_generator(int(cfg["seed"]), epoch))


class _IndexedDataset(torch.utils.data.Dataset):
    """Return (image, label, index) so cached teacher outputs can be looked up per example."""

    def __init__(self, base: Any, indices: list[int] | None = None) -> None:
        self.base = base
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        j = self.indices[i] if self.indices is not None else i
        x, y = self.base[j]
        return x, y, i


class LoaderSplit(Split):
    """A folder-backed split read through a DataLoader (for data sets too big to hold in memory)."""

    def __init__(
        self,
        train_dataset: Any,
        eval_dataset: Any,
        indices: list[int] | None,
        num_workers: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.train_dataset = _IndexedDataset(train_dataset, indices)
        self.eval_dataset = _IndexedDataset(eval_dataset, indices)
        self.num_examples = len(self.train_dataset)
        self.num_workers = num_workers
        self._device = torch.device(device)
        self.memory_format = torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return self._device

    def targets(self) -> torch.Tensor:
        """Labels from the underlying data set's ``targets`` (torchvision's CIFAR and ImageFolder have them)."""
        base = self.train_dataset.base
        labels = getattr(base, "targets", None)
        if labels is None:
            raise NotImplementedError(f"the data set {type(base).__name__} has no 'targets' list")
        labels = torch.as_tensor(labels, dtype=torch.long)
        indices = self.train_dataset.indices
        return labels if indices is None else labels[torch.as_tensor(indices, dtype=torch.long)]

    def to(self, device: torch.device | str) -> LoaderSplit:
        self._device = torch.device(device)
        return self

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        drop_last_single: bool = True,
    ) -> Iterator[Batch]:
        dataset = self.train_dataset if augment else self.eval_dataset
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self._device.type == "cuda",
            persistent_workers=False,
        )
        yield from self._moved(loader, augment, drop_last_single and shuffle)

    def ordered_batches(
        self,
        order: torch.Tensor,
        batch_size: int,
        *,
        augment: bool,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        dataset = self.train_dataset if augment else self.eval_dataset
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=[int(i) for i in order.tolist()],
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self._device.type == "cuda",
            persistent_workers=False,
        )
        yield from self._moved(loader, augment, True)

    def _moved(self, loader: Any, augment: bool, drop_last_single: bool) -> Iterator[Batch]:
        for x, y, idx in loader:
            if drop_last_single and x.shape[0] == 1:
                break
            x = x.to(self._device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield Batch(x, y.to(self._device, non_blocking=True), idx.to(self._device), augmented=augment)


@dataclass
class DataBundle:
    """Everything the loop needs to know about a data set."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]

    def to(self, device: torch.device | str) -> DataBundle:
        for split in (self.train, self.val, self.test):
            split.to(device)
        return self

    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        for split in (self.train, self.val, self.test):
            split.memory_format = memory_format


DATA_KEYS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": None,
    "download": False,
    "val_fraction": 0.1,
    "split_seed": 0,
    "train_subset": None,
    "num_workers": 4,
    "synthetic_size": 1024,
    "synthetic_classes": 100,
    "synthetic_image_size": 32,
}
"""Config keys that choose and shape the data, with their defaults."""

@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, declared once where it is registered; its builder and study validation read it.

    ``num_classes`` and ``image_size`` are numbers, or the config key that sets them (synthetic data).
    ``folders`` must exist under the data root (checked before any trial runs); ``mean``/``std`` are the
    normalisation statistics (None: measured on the training images when the data set is built).
    """

    name: str
    num_classes: int | str
    image_size: int | str
    needs_root: bool = False
    folders: tuple[str, ...] = ()
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    how: str = ""
    """How to get the data (the end of a missing-data error)."""

    def shape(self, cfg: Mapping[str, Any]) -> tuple[int, int]:
        """``(num_classes, image side)`` for a config (keys missing from ``cfg`` take their defaults)."""
        return self._resolve(self.num_classes, cfg), self._resolve(self.image_size, cfg)

    @staticmethod
    def _resolve(value: int | str, cfg: Mapping[str, Any]) -> int:
        return int(cfg.get(value, DATA_KEYS[value])) if isinstance(value, str) else value

    def missing_folder(self, root: str | os.PathLike) -> Path | None:
        """The first declared folder absent under ``root`` (None when all are there)."""
        for folder in self.folders:
            if not (Path(root) / folder).exists():
                return Path(root) / folder
        return None


Builder = Callable[[Mapping[str, Any]], DataBundle]
_BUILDERS: dict[str, Builder] = {}
DATASETS: dict[str, DatasetInfo] = {}
"""Every registered data set's declaration, by name."""


def register_dataset(info: DatasetInfo) -> Callable[[Builder], Builder]:
    """Register a builder ``cfg -> DataBundle`` under ``info.name``, with its declaration."""

    def wrap(fn: Builder) -> Builder:
        _BUILDERS[info.name] = fn
        DATASETS[info.name] = info
        return fn

    return wrap


def list_datasets() -> list[str]:
    return sorted(_BUILDERS)


def dataset_info(name: str) -> DatasetInfo:
    """The declaration of a registered data set; an unknown name is a ConfigError listing the choices."""
    if name not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS)
    return DATASETS[name]


def build_data(cfg: Mapping[str, Any]) -> DataBundle:
    """Build the data set named by ``cfg['dataset']`` with its seeded train/val split."""
    name = cfg.get("dataset", DATA_KEYS["dataset"])
    if name not in _BUILDERS:
        raise unknown_choice("dataset", name, _BUILDERS)
    val_fraction = float(cfg.get("val_fraction", DATA_KEYS["val_fraction"]))
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must be in [0, 1) (0: no validation split, train on the whole training split), "
            f"got {val_fraction}"
        )
    return _BUILDERS[name](cfg)


def split_indices(
    n: int, val_fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, disjoint (train, val) index arrays; stratified by label when labels are given.

    ``val_fraction`` 0 leaves the validation split empty: every index trains (the papers' protocol).
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train, val = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(members) * val_fraction))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def subset_indices(train_idx: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Keep ``size`` seeded training examples (budgeted settings train on n labelled images)."""
    if size is None:
        return train_idx
    size = int(size)
    if not 0 < size <= len(train_idx):
        raise ConfigError(f"train_subset must be in [1, {len(train_idx)}] for this data set, got {size}")
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(train_idx, size=size, replace=False))


def _tensor_bundle(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    cfg: Mapping[str, Any],
) -> DataBundle:
    seed = int(cfg.get("split_seed", DATA_KEYS["split_seed"]))
    val_fraction = float(cfg.get("val_fraction", DATA_KEYS["val_fraction"]))
    tr, va = split_indices(len(train_labels), val_fraction, seed, train_labels.numpy())
    tr = subset_indices(tr, cfg.get("train_subset"), seed)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    return DataBundle(
        name=name,
        train=TensorSplit(train_images[tr_t], train_labels[tr_t], mean, std),
        val=TensorSplit(train_images[va_t], train_labels[va_t], mean, std),
        test=TensorSplit(test_images, test_labels, mean, std),
        num_classes=num_classes,
        input_shape=tuple(train_images.shape[1:]),
    )


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' 8x8 images (values 0-16) and labels, read from the file scikit-learn ships.

    Why not ``sklearn.datasets.load_digits``: importing scikit-learn costs about 0.8 s, paid by every
    trial actor before its first epoch; the file itself (``datasets/data/digits.csv.gz``: 64 pixels and
    the label per row) reads in milliseconds. Where that file is not found, ``load_digits`` is used.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            rows = np.loadtxt(path, delimiter=",")
            return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


@register_dataset(DatasetInfo("digits", num_classes=10, image_size=32))
def _digits(cfg: Mapping[str, Any]) -> DataBundle:
    """scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32 RGB: runs offline anywhere.

    The 1797 images are split once, stratified, into 1437 train+val and 360 test images (fixed seed 0,
    independent of ``split_seed``, so every study reports on the same test images).
    """
    info = DATASETS["digits"]
    pixels, target = bundled_digits()
    images = torch.from_numpy(pixels).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    side = info.image_size
    images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(target).long()
    rest, test = split_indices(len(labels), 0.2, seed=0, labels=target)
    rest_t, test_t = torch.from_numpy(rest), torch.from_numpy(test)
    train_imgs = images[rest_t]
    mean = tuple(float(v) for v in train_imgs.float().div(255).mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in train_imgs.float().div(255).std(dim=(0, 2, 3)))
    return _tensor_bundle(
        "digits", train_imgs, labels[rest_t], images[test_t], labels[test_t], info.num_classes, mean, std, cfg
    )


@register_dataset(
    DatasetInfo("synthetic", "synthetic_classes", "synthetic_image_size", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
)
def _synthetic(cfg: Mapping[str, Any]) -> DataBundle:
    """Random images and labels of a chosen shape: for benchmarks and tests, not for accuracy."""
    info = DATASETS["synthetic"]
    size = int(cfg.get("synthetic_size", DATA_KEYS["synthetic_size"]))
    classes, side = info.shape(cfg)
    g = torch.Generator().manual_seed(1234)
    n_test = max(classes, size // 5)
    images = torch.randint(0, 256, (size + n_test, 3, side, side), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, classes, (size + n_test,), generator=g)
    return _tensor_bundle(
        "synthetic", images[:size], labels[:size], images[size:], labels[size:], classes, info.mean, info.std, cfg
    )


def _require_root(cfg: Mapping[str, Any], info: DatasetInfo) -> Path:
    """The data root of ``cfg`` holding every folder ``info`` declares (unless ``download`` may fetch them)."""
    root = cfg.get("data_root")
    if not root:
        raise DataRootError(f"dataset '{info.name}' needs data_root (a local folder); {info.how}")
    path = Path(os.path.expanduser(str(root))).absolute()
    missing = info.missing_folder(path)
    if missing is not None and not cfg.get("download"):
        raise DataRootError(f"dataset '{info.name}' not found: expected {missing}; {info.how}")
    return path


def _cifar_how(folder: str) -> str:
    return (
        f"download and extract the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        f"into data_root (giving data_root/{folder}), or set download: true on a machine with internet"
    )


def _cifar_info(name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetInfo:
    """A CIFAR declaration whose folder and class count are the release's file layout (``CIFAR_FILES``)."""
    files = CIFAR_FILES[name]
    return DatasetInfo(name, files.classes, 32, needs_root=True, folders=(files.folder,), mean=mean, std=std,
                       how=_cifar_how(files.folder))


CIFAR100 = _cifar_info("cifar100", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
CIFAR10 = _cifar_info("cifar10", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


def _cifar(cfg: Mapping[str, Any], info: DatasetInfo) -> DataBundle:
    root = _require_root(cfg, info)
    if cfg.get("download", False):  # torchvision's downloader; the files are then read and checked below
        from torchvision import datasets

        cls = {"cifar100": datasets.CIFAR100, "cifar10": datasets.CIFAR10}[info.name]
        for train in (True, False):
            cls(str(root), train=train, download=True)
    tri, trl, tei, tel = load_cifar(root, info.name)  # checks every file: a damaged one is named
    return _tensor_bundle(info.name, tri, trl, tei, tel, info.num_classes, info.mean, info.std, cfg)


@register_dataset(CIFAR100)
def _cifar100(cfg: Mapping[str, Any]) -> DataBundle:
    return _cifar(cfg, CIFAR100)


@register_dataset(CIFAR10)
def _cifar10(cfg: Mapping[str, Any]) -> DataBundle:
    return _cifar(cfg, CIFAR10)


IMAGENET = DatasetInfo(
    "imagenet", 1000, 224, needs_root=True, folders=("train", "val"),
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    how="arrange ILSVRC-2012 as data_root/train/<wnid>/*.JPEG and data_root/val/<wnid>/*.JPEG",
)


@register_dataset(IMAGENET)
def _imagenet(cfg: Mapping[str, Any]) -> DataBundle:
    """ImageNet as ImageFolder ``data_root/train`` and ``data_root/val`` (one folder per class).

    The validation split for selection is carved from ``train``; ``val`` serves as the test split,
    as is usual for ImageNet.
    """
    from torchvision import datasets, transforms

    root = _require_root(cfg, IMAGENET)
    check_imagenet(root)
    normalize = transforms.Normalize(IMAGENET.mean, IMAGENET.std)
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    eval_tf = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
    )
    train_aug = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    train_eval = datasets.ImageFolder(str(root / "train"), transform=eval_tf)
    test = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    seed = int(cfg.get("split_seed", 0))
    targets = np.asarray(train_aug.targets)
    tr, va = split_indices(len(targets), float(cfg.get("val_fraction", 0.1)), seed, targets)
    tr = subset_indices(tr, cfg.get("train_subset"), seed)
    workers = int(cfg.get("num_workers", DATA_KEYS["num_workers"]))
    return DataBundle(
        name="imagenet",
        train=LoaderSplit(train_aug, train_eval, tr.tolist(), workers),
        val=LoaderSplit(train_eval, train_eval, va.tolist(), workers),
        test=LoaderSplit(test, test, None, workers),
        num_classes=len(train_aug.classes),
        input_shape=(3, IMAGENET.image_size, IMAGENET.image_size),
    )
