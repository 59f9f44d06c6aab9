"""Datasets as in-memory tensors, the validation split, and fast batched augmentation.

This module owns *the data a run sees*: reading CIFAR-10/100 and Fashion-MNIST from disk
(through torchvision's dataset classes and on-disk layouts), holding every split as uint8
tensors ``(N, C, 32, 32)`` with int64 labels, the seeded validation split, normalisation
constants, and the batch iterator used for training, evaluation and mask scoring.

Design for speed: a whole split is one uint8 tensor (CIFAR-10 train is 150 MB), so it can
live on the GPU; shuffling, random crops and flips are a single batched gather on whatever
device the images are on. All randomness comes from a caller's CPU ``torch.Generator``
(drawn once per epoch, then moved to the device), so an epoch's batches are identical on
CPU and GPU and are reproduced exactly from the generator's state after a resume.

Public API: :func:`load_data` -> :class:`Splits`; :func:`batches`; :func:`scoring_batches`.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .files import DATA, atomic_write
from .seeds import stream_seed

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "synthetic")
# (num_classes, in_channels) of each dataset: what a model needs, known without reading files.
DATASET_SHAPES = {"cifar10": (10, 3), "cifar100": (100, 3), "fashion-mnist": (10, 1), "synthetic": (10, 3)}

# experiments.md: CIFAR-10's normalisation and reflect padding; CIFAR-100 has its own
# normalisation and pads with zeros, as the code that produced the published numbers did.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
PADDING = {"cifar100": "zeros"}  # the others: "reflect"
VAL_SPLITS = ("random", "last")

# Where Debian's ``fashion-mnist`` package puts the four idx .gz files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

PAD = 4  # pixels of reflect padding before the random crop (experiments.md)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""


@dataclass
class ImageSet:
    """One split: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.labels = self.labels.to(torch.int64)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.labels.numel() * 8

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass
class Splits:
    """Train / validation / test sets of one dataset, with what a model needs to know."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    seed: int = 0  # seed of the validation split and of the train/test_fraction subsamples
    val_fraction: float = 0.1
    train_fraction: float = 1.0
    test_fraction: float = 1.0
    val_split: str = "random"  # "random": a seeded share; "last": the file's last share, fixed
    padding: str = "reflect"  # how the random crop pads: "reflect" or "zeros"

    @property
    def nbytes(self) -> int:
        return self.train.nbytes + self.val.nbytes + self.test.nbytes

    def to(self, device) -> "Splits":
        """A copy whose three sets live on ``device`` (a no-op copy if already there)."""
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device))

    def __repr__(self) -> str:
        return (f"Splits({self.name}: train {len(self.train)}, val {len(self.val)}, "
                f"test {len(self.test)}, {self.num_classes} classes, {self.in_channels} "
                f"channel(s), seed {self.seed})")


# --------------------------------------------------------------------------- readers


def _cifar_class(name: str):
    from torchvision import datasets

    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def _read_cifar(name: str, root: Path, download: bool):
    """(train images, train labels, test images, test labels, num_classes) from disk.

    Order: the extracted folder ``root/cifar-10-batches-py`` (checked by torchvision against
    its md5 sums); else the archive ``root/cifar-10-python.tar.gz`` (verified and extracted
    by torchvision, no network); else torchvision's download if ``download``; else one
    :class:`DatasetNotFoundError` saying where to put the files.
    """
    from torchvision.datasets.utils import check_integrity, extract_archive

    cls = _cifar_class(name)

    def extracted() -> bool:  # torchvision's own test: every batch file with its md5
        return all(check_integrity(str(root / cls.base_folder / f), md5)
                   for f, md5 in cls.train_list + cls.test_list)

    if not extracted():
        archive = root / cls.filename
        if archive.exists():
            if not check_integrity(str(archive), cls.tgz_md5):
                raise DatasetNotFoundError(
                    f"{archive} is corrupt (md5 differs from {cls.tgz_md5}); replace it with the "
                    f"original {cls.filename}")
            extract_archive(str(archive), str(root))
        elif download:
            try:
                root.mkdir(parents=True, exist_ok=True)
                cls(str(root), train=True, download=True)
            except Exception as err:  # no internet, proxy, HTTP error...
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                raise DatasetNotFoundError(_missing_cifar_message(cls, root, reason)) from None
        if not extracted():
            raise DatasetNotFoundError(_missing_cifar_message(
                cls, root, "not on disk and download=False" if not download else "download failed"))

    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)

    def to_tensors(ds):
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    return (*to_tensors(train), *to_tensors(test), len(train.classes))


def _missing_cifar_message(cls, root: Path, reason: str) -> str:
    root = Path(root).resolve()
    return (f"{cls.__name__} not found ({reason}): put {cls.filename} in {root}/ "
            f"or extract it to {root / cls.base_folder}/")


def _gunzip(src: Path, dst: Path) -> None:
    def write(tmp):
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)

    atomic_write(dst, write)


def _read_fashion_mnist(root: Path, download: bool):
    """Fashion-MNIST through torchvision's ``FashionMNIST`` (layout ``root/FashionMNIST/raw``).

    Sources in order: the uncompressed idx files already in ``root/FashionMNIST/raw``; the
    ``.gz`` files there; the ``.gz`` files of Debian's package in
    ``/usr/share/datasets/fashion-mnist``; torchvision's download. torchvision 0.29 reads
    only the *uncompressed* idx files and extracts ``.gz`` files only after checking their
    md5 against the upstream archives -- Debian's are recompressed (different md5, same
    content), so torchvision would try to download again. We therefore gunzip the ``.gz``
    files into ``raw/`` ourselves, then let torchvision read them.
    """
    from torchvision import datasets

    raw = root / "FashionMNIST" / "raw"
    missing = [f for f in FASHION_FILES if not (raw / f).exists()]
    for f in missing:
        for src in (raw / f"{f}.gz", DEBIAN_FASHION_MNIST / f"{f}.gz"):
            if src.exists():
                _gunzip(src, raw / f)
                break
    if any(not (raw / f).exists() for f in FASHION_FILES):
        if download:
            try:
                datasets.FashionMNIST(str(root), train=True, download=True)
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                raise DatasetNotFoundError(
                    f"FashionMNIST not found ({reason}): put the four idx .gz files "
                    f"({', '.join(FASHION_FILES)}) in {raw.resolve()}/ or install Debian's "
                    f"fashion-mnist package ({DEBIAN_FASHION_MNIST})") from None
        else:
            raise DatasetNotFoundError(
                f"FashionMNIST not found (download=False): put the four idx .gz files in "
                f"{raw.resolve()}/ or install Debian's fashion-mnist package")

    out = []
    for train in (True, False):
        ds = datasets.FashionMNIST(str(root), train=train, download=False)
        images = ds.data.to(torch.uint8).unsqueeze(1)  # (N, 1, 28, 28)
        # experiments.md: 28x28 images are padded to 32x32 -- once, here, with zeros (the
        # background colour), so that every model sees 32x32 inputs like CIFAR.
        images = torch.nn.functional.pad(images, (2, 2, 2, 2), value=0)
        out += [images.contiguous(), ds.targets.to(torch.int64)]
    return (*out, 10)


def _synthetic(size: Sequence[int], num_classes: int):
    """Random but learnable images: a fixed random template per class plus noise.

    The data do not depend on the split seed (generator seeded with a constant), so two
    seeds see the same images, split differently. ``size[0]`` training images and
    ``max(size[0] // 4, num_classes)`` test images.
    """
    n, c, h, w = (int(s) for s in size)
    g = torch.Generator().manual_seed(12345)
    templates = torch.randint(0, 256, (num_classes, c, h, w), generator=g, dtype=torch.int16)

    def make(count):
        labels = torch.randint(0, num_classes, (count,), generator=g)
        noise = torch.randint(0, 256, (count, c, h, w), generator=g, dtype=torch.int16)
        images = ((templates[labels] + noise) // 2).to(torch.uint8)
        return images, labels

    return (*make(n), *make(max(n // 4, num_classes)), num_classes)


def on_disk(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` can be loaded without a download (files present; not verified here)."""
    root = Path(root) if root is not None else DATA
    if name in ("cifar10", "cifar100"):
        cls = _cifar_class(name)
        return (root / cls.base_folder).is_dir() or (root / cls.filename).is_file()
    if name == "fashion-mnist":
        raw = root / "FashionMNIST" / "raw"
        return all((raw / f).exists() or (raw / f"{f}.gz").exists() or (DEBIAN_FASHION_MNIST / f"{f}.gz").exists()
                   for f in FASHION_FILES)
    return name in DATASETS


# --------------------------------------------------------------------------- load_data


def load_data(name: str, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
              seed: int = 0, train_fraction: float = 1.0, test_fraction: float = 1.0,
              download: bool = True, val_split: str = "random",
              synthetic_size: Sequence[int] = (512, 3, 32, 32),
              synthetic_classes: int = 10) -> Splits:
    """Load ``name`` (``cifar10``, ``cifar100``, ``fashion-mnist`` or ``synthetic``) as :class:`Splits`.

    ``root`` defaults to the workbook's ``data/`` folder (:data:`lib.files.DATA`), so the
    result does not depend on the working directory. Validation split (``val_split``):
    ``"random"``, the first ``round(val_fraction * N)`` images of a permutation drawn from
    ``seed``; ``"last"``, the last ``round(val_fraction * N)`` images of the file, whatever the
    seed (the authors' code). ``train_fraction`` of the rest, drawn from the seed's generator,
    is the training set. ``test_fraction`` < 1 evaluates a seeded subsample of the test set
    (a budget option: per-epoch evaluation of 10000 test images costs a short CPU run as
    much as its training). Indices are sorted, so each set keeps the file order.
    ``synthetic`` is random data for tests; it never stands in for a missing dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_split not in VAL_SPLITS:
        raise ValueError(f"unknown val_split {val_split!r}; choose one of {', '.join(VAL_SPLITS)}")
    for label, fraction in (("train_fraction", train_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction <= 1:
            raise ValueError(f"{label} must be in (0, 1], got {fraction}")
    root = Path(root) if root is not None else DATA

    if name in ("cifar10", "cifar100"):
        x_train, y_train, x_test, y_test, num_classes = _read_cifar(name, root, download)
        mean, std = (CIFAR100_MEAN, CIFAR100_STD) if name == "cifar100" else (CIFAR_MEAN, CIFAR_STD)
    elif name == "fashion-mnist":
        x_train, y_train, x_test, y_test, num_classes = _read_fashion_mnist(root, download)
        # Computed from the whole padded 32x32 training set (60000 images, validation part
        # included, as the CIFAR constants are), not the usual (0.2860,), (0.3530,): those
        # describe the 28x28 images, and the zero border changes the statistics.
        mean, std = _channel_stats(x_train)
    else:
        x_train, y_train, x_test, y_test, num_classes = _synthetic(synthetic_size,
                                                                   synthetic_classes)
        mean, std = _channel_stats(x_train)

    n = len(y_train)
    g = torch.Generator().manual_seed(stream_seed(seed, "split"))
    n_val = int(round(val_fraction * n))
    if val_split == "random":
        perm = torch.randperm(n, generator=g)
        val_idx, rest = perm[:n_val], perm[n_val:]
    else:
        val_idx, rest = torch.arange(n - n_val, n), torch.arange(n - n_val)
    if train_fraction < 1:
        n_keep = max(1, int(round(train_fraction * len(rest))))
        rest = rest[torch.randperm(len(rest), generator=g)[:n_keep]]
    val_idx, train_idx = val_idx.sort().values, rest.sort().values
    test_idx = torch.arange(len(y_test))
    if test_fraction < 1:
        n_keep = max(1, int(round(test_fraction * len(y_test))))
        g_test = torch.Generator().manual_seed(stream_seed(seed, "test"))
        test_idx = torch.randperm(len(y_test), generator=g_test)[:n_keep].sort().values

    return Splits(
        train=ImageSet(x_train[train_idx].contiguous(), y_train[train_idx]),
        val=ImageSet(x_train[val_idx].contiguous(), y_train[val_idx]),
        test=ImageSet(x_test[test_idx].contiguous(), y_test[test_idx]),
        num_classes=int(num_classes),
        in_channels=int(x_train.shape[1]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        name=name,
        seed=int(seed),
        val_fraction=float(val_fraction),
        train_fraction=float(train_fraction),
        test_fraction=float(test_fraction),
        val_split=val_split,
        padding=PADDING.get(name, "reflect"),
    )


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (float64 sums)."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64) / 255
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


# --------------------------------------------------------------------------- batches


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions of a reflect-padded axis (may be <0 or >=size) back into [0, size)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def batches(images_set: ImageSet, batch_size: int, *, train: bool,
            generator: torch.Generator | None = None, device=None,
            mean: Sequence[float], std: Sequence[float], augment: bool | None = None,
            memory_format: torch.memory_format = torch.contiguous_format,
            padding: str = "reflect") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised float32 ``(x, y)`` batches of ``images_set`` on ``device``.

    ``train=True``: shuffled with ``generator`` and the last partial batch dropped -- every
    step then has the same size (a batch of one would break BatchNorm in train mode, and a
    small last batch would get a full step's weight), and the epoch's length does not depend
    on the shuffle. ``train=False``: file order, the last partial batch kept, so an accuracy
    covers every image.

    ``augment`` (default: ``train``) is the CIFAR recipe of experiments.md: 4-pixel padding
    (``padding``: ``"reflect"``, or ``"zeros"`` as the authors' CIFAR-100 runs), a random crop
    back to the original size, and a horizontal flip with probability 1/2. It is one gather:
    the crop's rows and columns are mapped back through the reflection (or clamped, and the
    outside zeroed) into the unpadded image, so no padded copy is made. Fashion-MNIST (padded
    28 -> 32 with zeros at load) gets the very same crop and flip, to keep one recipe for
    every dataset; its garments are left-right symmetric enough for the flip.

    All random numbers (permutation, crop offsets, flips) are drawn from the CPU
    ``generator`` at the start of the epoch, so the batches are a function of its state and
    identical on every device.
    """
    if augment is None:
        augment = train
    if padding not in ("reflect", "zeros"):
        raise ValueError(f"unknown padding {padding!r}; choose reflect or zeros")
    if (train or augment) and generator is None:
        raise ValueError("a generator is needed to shuffle or augment")
    n = len(images_set)
    images, labels = images_set.images, images_set.labels
    source = images.device
    device = torch.device(device) if device is not None else source
    _, c, h, w = images.shape
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
    inv_std = 1 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)

    if train:
        order = torch.randperm(n, generator=generator)
        n_batches = n // batch_size
    else:
        order = torch.arange(n)
        n_batches = -(-n // batch_size)
    if augment:
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
        offsets, flips = offsets.to(source), flips.to(source)
        rows_base = torch.arange(h, device=source) - PAD
        cols_base = torch.arange(w, device=source) - PAD
        chan = torch.arange(c, device=source).view(1, c, 1, 1)
    order = order.to(source)

    for b in range(n_batches):
        sel = slice(b * batch_size, min((b + 1) * batch_size, n))
        idx = order[sel]
        if augment and padding == "reflect":
            k = len(idx)
            rows = _reflect(offsets[sel, 0, None] + rows_base, h)  # (k, h)
            cols = _reflect(offsets[sel, 1, None] + cols_base, w)  # (k, w)
            cols = torch.where(flips[sel, None], cols.flip(1), cols)
            x = images[idx.view(k, 1, 1, 1), chan, rows.view(k, 1, h, 1), cols.view(k, 1, 1, w)]
        elif augment:  # zero padding: clamp into the image, then zero what lies outside it
            k = len(idx)
            rows = offsets[sel, 0, None] + rows_base
            cols = offsets[sel, 1, None] + cols_base
            cols = torch.where(flips[sel, None], cols.flip(1), cols)
            x = images[idx.view(k, 1, 1, 1), chan, rows.clamp(0, h - 1).view(k, 1, h, 1),
                       cols.clamp(0, w - 1).view(k, 1, 1, w)]
            inside = ((rows >= 0) & (rows < h)).view(k, 1, h, 1) & ((cols >= 0) & (cols < w)).view(k, 1, 1, w)
            x = x * inside
        else:
            x = images[idx]
        y = labels[idx]
        if x.device != device:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        x = (x.to(torch.float32) - mean_t).mul_(inv_std)
        if memory_format is not torch.contiguous_format:
            x = x.contiguous(memory_format=memory_format)
        yield x, y


def scoring_batches(splits: Splits, n_batches: int | str, batch_size: int, seed: int,
                    device=None, augment: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised training batches for SNIP / GraSP / iterSNIP scoring.

    ``n_batches``: a number of batches, drawn from a permutation of the training set seeded by
    ``seed`` (a fresh permutation after each pass if more are asked for than one pass holds),
    or ``"all"``: one pass over the training set, as the authors scored. ``augment``: with the
    training augmentation (the authors' loader), else the plain images. Full batches only.
    """
    if n_batches != "all" and not (isinstance(n_batches, int) and n_batches >= 1):
        raise ValueError(f"scoring batches must be a number >= 1 or 'all', got {n_batches!r}")
    batch_size = min(batch_size, len(splits.train))
    g = torch.Generator().manual_seed(stream_seed(seed, "scoring"))
    wanted = len(splits.train) // batch_size if n_batches == "all" else n_batches
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < wanted:
        for xy in batches(splits.train, batch_size, train=True, generator=g, device=device,
                          mean=splits.mean, std=splits.std, augment=augment, padding=splits.padding):
            out.append(xy)
            if len(out) == wanted:
                break
    return out
