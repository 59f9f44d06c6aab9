"""lib.data: readers (CIFAR on-disk format, Fashion-MNIST from Debian), split, batches.

The CIFAR tests write small files in CIFAR's own pickle layout. torchvision checks the md5
of every CIFAR file against the real archive's, so these tests (and only they) replace
torchvision's ``check_integrity`` by a file-exists test; real data goes through the md5s.
"""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib import data as D

N_BATCH = 200  # images per fake CIFAR-10 training file; 5 files -> 1000 images
N_TEST = 120


def _fake_images(start: int, n: int, rng) -> np.ndarray:
    """CIFAR rows (n, 3072) whose first two bytes encode the image's global index."""
    rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    idx = np.arange(start, start + n)
    rows[:, 0], rows[:, 1] = idx % 256, idx // 256
    return rows


def _index_of(images: torch.Tensor) -> set[int]:
    flat = images.reshape(len(images), -1)[:, :2].to(torch.int64)
    return set((flat[:, 0] + 256 * flat[:, 1]).tolist())


def _write_cifar10(root: Path) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {"data": [], "labels": []}
    for b in range(5):
        rows = _fake_images(b * N_BATCH, N_BATCH, rng)
        labels = rng.integers(0, 10, N_BATCH).tolist()
        written["data"].append(rows)
        written["labels"] += labels
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({"data": rows, "labels": labels}, f)
    test_rows = _fake_images(10_000, N_TEST, rng)
    test_labels = rng.integers(0, 10, N_TEST).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": test_rows, "labels": test_labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    written.update(test=test_rows, test_labels=test_labels)
    return written


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision's md5 check -> existence check, for hand-written CIFAR files."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    exists = lambda fpath, md5=None: Path(fpath).is_file()  # noqa: E731
    monkeypatch.setattr(tv_cifar, "check_integrity", exists)
    monkeypatch.setattr(tv_utils, "check_integrity", exists)


@pytest.fixture
def cifar_root(tmp_path, no_md5):
    root = tmp_path / "data"
    written = _write_cifar10(root)
    return root, written


@pytest.fixture
def no_download(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def fail(*args, **kwargs):
        raise URLError("no network in this test")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)


def test_cifar10_reads_on_disk_format(cifar_root):
    root, written = cifar_root
    s = D.load_data("cifar10", root=root, val_fraction=0.1, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (900, 100, N_TEST)
    assert (s.num_classes, s.in_channels, s.name) == (10, 3, "cifar10")
    assert s.mean == D.CIFAR_MEAN and s.std == D.CIFAR_STD
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (3, 32, 32)
    assert s.train.labels.dtype == torch.int64
    # Test set in file order, pixels in CIFAR's channel-major row layout.
    expected = torch.from_numpy(written["test"]).view(N_TEST, 3, 32, 32)
    assert torch.equal(s.test.images, expected)
    assert s.test.labels.tolist() == written["test_labels"]
    # Every training image keeps its own label.
    all_labels = torch.tensor(written["labels"])
    for part in (s.train, s.val):
        idx = part.images.reshape(len(part), -1)[:, :2].to(torch.int64)
        idx = idx[:, 0] + 256 * idx[:, 1]
        assert torch.equal(part.labels, all_labels[idx])


def test_cifar100_layout(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 300), ("test", 50)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _fake_images(0, n, rng),
                         "fine_labels": rng.integers(0, 100, n).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    s = D.load_data("cifar100", root=tmp_path)
    assert (len(s.train) + len(s.val), len(s.test), s.num_classes) == (300, 50, 100)
    # its own normalisation and zero padding, as the code behind the published numbers
    assert (s.mean, s.std, s.padding) == (D.CIFAR100_MEAN, D.CIFAR100_STD, "zeros")


def test_cifar_archive_is_extracted_without_network(tmp_path, no_md5, no_download):
    src = tmp_path / "src"
    _write_cifar10(src)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    s = D.load_data("cifar10", root=root)
    assert len(s.train) + len(s.val) == 5 * N_BATCH
    assert (root / "cifar-10-batches-py" / "data_batch_5").exists()


@pytest.mark.parametrize("download", [True, False])
@pytest.mark.parametrize("name,archive", [("cifar10", "cifar-10-python.tar.gz"),
                                          ("cifar100", "cifar-100-python.tar.gz")])
def test_missing_cifar_is_one_clear_error(tmp_path, no_download, download, name, archive):
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_data(name, root=tmp_path / "empty", download=download)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert archive in message and str((tmp_path / "empty").resolve()) in message
    assert "\n" not in message
    err = info.value  # no chained traceback: one error, one line
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="cifar10, cifar100, fashion-mnist, synthetic"):
        D.load_data("mnist")


def test_val_split_deterministic_and_disjoint(cifar_root):
    root, _ = cifar_root
    a = D.load_data("cifar10", root=root, seed=3)
    b = D.load_data("cifar10", root=root, seed=3)
    c = D.load_data("cifar10", root=root, seed=4)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    train, val = _index_of(a.train.images), _index_of(a.val.images)
    assert not train & val and train | val == set(range(5 * N_BATCH)) and len(val) == 100
    assert _index_of(c.val.images) != val
    half = D.load_data("cifar10", root=root, seed=3, train_fraction=0.5)
    assert _index_of(half.val.images) == val  # the subsample never touches validation
    sub = _index_of(half.train.images)
    assert len(sub) == 450 and sub < train
    assert _index_of(D.load_data("cifar10", root=root, seed=3, train_fraction=0.5)
                     .train.images) == sub


def test_test_fraction_is_a_seeded_subsample_of_the_test_set():
    s = D.load_data("synthetic", synthetic_size=(200, 3, 32, 32), seed=3)
    q = D.load_data("synthetic", synthetic_size=(200, 3, 32, 32), seed=3, test_fraction=0.2)
    assert len(s.test) == 50 and len(q.test) == 10 and q.test_fraction == 0.2
    # every kept test image is one of the full test set's, in the file order, with its label
    full = {bytes(x.flatten().tolist()): int(y) for x, y in zip(s.test.images, s.test.labels)}
    keys = [bytes(x.flatten().tolist()) for x in q.test.images]
    assert all(full[k] == int(y) for k, y in zip(keys, q.test.labels))
    order = {k: i for i, k in enumerate(full)}
    assert [order[k] for k in keys] == sorted(order[k] for k in keys)
    again = D.load_data("synthetic", synthetic_size=(200, 3, 32, 32), seed=3, test_fraction=0.2)
    other = D.load_data("synthetic", synthetic_size=(200, 3, 32, 32), seed=4, test_fraction=0.2)
    assert torch.equal(again.test.images, q.test.images)
    assert not torch.equal(other.test.images, q.test.images)
    # the training and validation sets do not depend on it
    assert torch.equal(q.train.images, s.train.images) and torch.equal(q.val.images, s.val.images)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\]"):
        D.load_data("synthetic", test_fraction=0)


def test_synthetic():
    s = D.load_data("synthetic", synthetic_size=(200, 3, 32, 32), synthetic_classes=5)
    assert (len(s.train), len(s.val), len(s.test)) == (180, 20, 50)
    assert (s.num_classes, s.in_channels) == (5, 3)
    assert s.train.images.shape[1:] == (3, 32, 32) and s.train.labels.max() < 5
    assert len(s.mean) == len(s.std) == 3 and all(0.3 < m < 0.7 for m in s.mean)
    again = D.load_data("synthetic", synthetic_size=(200, 3, 32, 32), synthetic_classes=5)
    assert torch.equal(s.train.images, again.train.images)


def _normalise(images, s):
    mean = torch.tensor(s.mean).view(1, -1, 1, 1)
    std = torch.tensor(s.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def test_batches_eval_and_train_shapes():
    s = D.load_data("synthetic", synthetic_size=(300, 3, 32, 32))  # 270 train images
    kw = dict(mean=s.mean, std=s.std)
    ev = list(D.batches(s.train, 100, train=False, **kw))
    assert [len(y) for _, y in ev] == [100, 100, 70]  # eval keeps the partial batch
    x = torch.cat([x for x, _ in ev])
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, _normalise(s.train.images, s), rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    tr = list(D.batches(s.train, 100, train=True, generator=g, **kw))
    assert [tuple(x.shape) for x, _ in tr] == [(100, 3, 32, 32)] * 2  # train drops it
    with pytest.raises(ValueError, match="generator"):
        next(D.batches(s.train, 100, train=True, **kw))


def test_augmentation_is_pad_crop_flip_and_deterministic():
    s = D.load_data("synthetic", synthetic_size=(64, 3, 32, 32))
    kw = dict(mean=s.mean, std=s.std)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return list(D.batches(s.train, 16, train=True, generator=g, **kw))

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # Every augmented image is one of the 81 crops of the reflect-padded image, or its flip.
    x, y = a[0]
    padded = F.pad(_normalise(s.train.images, s), (4, 4, 4, 4), mode="reflect")
    flips = 0
    for img, label in zip(x, y):
        found = None
        for i in range(len(s.train)):
            if s.train.labels[i] != label:
                continue
            for dy in range(9):
                for dx in range(9):
                    crop = padded[i, :, dy:dy + 32, dx:dx + 32]
                    for flip in (False, True):
                        ref = crop.flip(-1) if flip else crop
                        if torch.allclose(img, ref, atol=1e-5):
                            found = flip
                            break
                    if found is not None:
                        break
                if found is not None:
                    break
            if found is not None:
                break
        assert found is not None
        flips += found
    assert 0 < flips < len(x)  # both flipped and unflipped images occur


def test_val_split_last_is_the_files_last_share_whatever_the_seed(cifar_root):
    root, written = cifar_root
    a = D.load_data("cifar10", root=root, val_fraction=0.1, seed=0, val_split="last")
    b = D.load_data("cifar10", root=root, val_fraction=0.1, seed=5, val_split="last", train_fraction=0.5)
    n = len(written["labels"])
    assert torch.equal(a.val.images, b.val.images) and len(a.val) == n // 10
    assert _index_of(a.val.images) == set(range(n - n // 10, n))
    assert max(_index_of(b.train.images)) < n - n // 10 and len(b.train) == (n - n // 10) // 2
    with pytest.raises(ValueError, match="unknown val_split 'first'; choose one of random, last"):
        D.load_data("cifar10", root=root, val_split="first")


def test_zero_padding_crops_show_zeros_where_reflect_shows_pixels():
    images = torch.full((64, 1, 8, 8), 200, dtype=torch.uint8)
    part = D.ImageSet(images, torch.zeros(64, dtype=torch.int64))
    kw = dict(train=False, augment=True, mean=(0.0,), std=(1 / 255,))
    zeros = torch.cat([x for x, _ in D.batches(part, 64, generator=torch.Generator().manual_seed(0),
                                               padding="zeros", **kw)])
    reflect = torch.cat([x for x, _ in D.batches(part, 64, generator=torch.Generator().manual_seed(0), **kw)])
    assert set(reflect.unique().tolist()) == {200.0}
    assert set(zeros.unique().tolist()) == {0.0, 200.0}  # some crops reach into the padding
    assert ((zeros == 0).flatten(1).sum(1) > 0).float().mean() > 0.5  # 8/9 of offsets do


def test_scoring_batches_all_is_one_augmented_pass():
    s = D.load_data("synthetic", synthetic_size=(300, 3, 32, 32))
    every = D.scoring_batches(s, "all", batch_size=64, seed=7, augment=True)
    assert len(every) == len(s.train) // 64
    plain = _normalise(s.train.images, s).reshape(len(s.train), -1)
    d = torch.cdist(every[0][0].reshape(64, -1), plain, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert d.max() > 1e-3  # crops and flips, not the stored images
    with pytest.raises(ValueError, match="a number >= 1 or 'all'"):
        D.scoring_batches(s, "some", 64, seed=7)


def test_scoring_batches():
    s = D.load_data("synthetic", synthetic_size=(300, 3, 32, 32))
    a = D.scoring_batches(s, n_batches=5, batch_size=64, seed=7)  # > one pass (4 batches)
    b = D.scoring_batches(s, n_batches=5, batch_size=64, seed=7)
    assert len(a) == 5 and all(x.shape == (64, 3, 32, 32) for x, _ in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert not torch.equal(a[0][0], D.scoring_batches(s, 1, 64, seed=8)[0][0])
    # Un-augmented: each image is a normalised training image.
    ref = _normalise(s.train.images, s).reshape(len(s.train), -1)
    d = torch.cdist(a[0][0].reshape(64, -1), ref,
                    compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert d.max() < 1e-3


FASHION = [D.DEBIAN_FASHION_MNIST / f"{f}.gz" for f in D.FASHION_FILES]


@pytest.mark.skipif(not all(p.exists() for p in FASHION),
                    reason="Debian's fashion-mnist files are not installed")
def test_fashion_mnist_from_debian_files(tmp_path):
    s = D.load_data("fashion-mnist", root=tmp_path, download=False)
    assert len(s.train) + len(s.val) == 60000 and len(s.val) == 6000
    assert len(s.test) == 10000
    assert s.train.images.shape[1:] == (1, 32, 32) and s.in_channels == 1
    assert s.num_classes == 10 and set(s.test.labels.tolist()) == set(range(10))
    border = s.test.images[:, :, :2, :]  # padded 28 -> 32 with zeros
    assert border.max() == 0 and s.test.images.max() == 255
    assert len(s.mean) == 1 and 0.1 < s.mean[0] < 0.4 and 0.2 < s.std[0] < 0.5
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").exists()
