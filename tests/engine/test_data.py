"""demo/engine/data.py: generated and bundled sets, and the torchvision sets read from small files that
the tests write in tmp folders. No test touches the network: an autouse fixture makes any
connection attempt fail."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import socket
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar
import torchvision.datasets.mnist

from demo.engine import data

POINT_SETS = ("spirals", "moons", "circles", "xor")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids spin-waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same(a: data.Dataset, b: data.Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def _differs(a: data.Dataset, b: data.Dataset) -> bool:
    return not torch.equal(a.x_train, b.x_train)


# --- 2-D points -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINT_SETS)
def test_point_sets_shapes_and_metadata(name):
    ds = data.load(name)
    assert ds.x_train.shape == (1000, 2) and ds.x_test.shape == (500, 2)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (2,) == data.input_shape(name)
    assert ds.kind == "points" and ds.value_range is None and ds.num_classes == 2
    assert len(ds.class_names) == 2
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert set(y.tolist()) == {0, 1}
        assert 0.4 < y.float().mean() < 0.6  # roughly balanced in both splits
        assert 0.3 < x.std() < 1.5 and x.abs().max() < 3  # coordinates of order 1
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", POINT_SETS)
def test_point_sets_follow_the_seed(name):
    _assert_same(data.load(name, seed=3), data.load(name, seed=3))
    assert _differs(data.load(name, seed=3), data.load(name, seed=4))


@pytest.mark.parametrize("name", POINT_SETS)
def test_noise_spreads_the_points(name):
    clean, noisy = data.load(name, noise=0.0), data.load(name, noise=0.3)
    # The same clean points with Gaussian noise on top: the residual has about the noise's std.
    residual = (noisy.x_train - clean.x_train).std().item()
    assert 0.27 < residual < 0.33


def test_clean_circles_lie_on_two_radii():
    ds = data.load("circles", noise=0.0)
    radius = ds.x_train.norm(dim=1)
    torch.testing.assert_close(radius[ds.y_train == 0], torch.ones_like(radius[ds.y_train == 0]))
    torch.testing.assert_close(radius[ds.y_train == 1], torch.full_like(radius[ds.y_train == 1], 0.5))


def test_clean_xor_labels_are_the_sign_product():
    ds = data.load("xor", noise=0.0)
    product = ds.x_train[:, 0] * ds.x_train[:, 1]
    assert torch.equal(ds.y_train, (product > 0).long())
    assert ds.x_train.abs().min() >= data.XOR_MARGIN


def test_clean_spirals_are_two_arms_turned_by_half_a_turn():
    ds = data.load("spirals", noise=0.0)
    assert ds.x_train.norm(dim=1).max() <= 1.0
    # Each point sits on its class's arm: angle 2 pi turns r, plus pi for the second arm.
    x, y = ds.x_train, ds.y_train
    r = x.norm(dim=1)
    angle = 2 * torch.pi * data.SPIRAL_TURNS * r + torch.pi * y
    on_arm = r[:, None] * torch.stack([angle.sin(), angle.cos()], dim=1)
    torch.testing.assert_close(x, on_arm, rtol=0, atol=1e-5)
    assert 0.4 < r.mean() < 0.6  # radii spread over (0, 1)


# --- digits and synthetic ---------------------------------------------------------------------


def test_digits_is_sklearns_set_split_by_class():
    from sklearn.datasets import load_digits

    ds = data.load("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.kind == "image" and ds.value_range == (0.0, 1.0) and ds.num_classes == 10
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
    # Stratified: every class has 35-37 test images.
    assert ds.y_test.bincount(minlength=10).tolist() == pytest.approx([36] * 10, abs=1)
    # Together, train and test are exactly scikit-learn's images divided by 16.
    x, y = load_digits(return_X_y=True)
    both = torch.cat([ds.x_train, ds.x_test]).reshape(-1, 64).double()
    torch.testing.assert_close(both.sum(0), torch.as_tensor(x / 16).sum(0), rtol=1e-6, atol=1e-6)
    labels = torch.cat([ds.y_train, ds.y_test])
    assert torch.equal(labels.bincount(), torch.as_tensor(y).bincount())
    _assert_same(data.load("digits", seed=5), data.load("digits", seed=5))
    assert _differs(data.load("digits", seed=5), data.load("digits", seed=6))


def test_synthetic_default_has_100_balanced_classes():
    ds = data.load("synthetic")
    assert ds.num_classes == 100 and ds.input_shape == (1, 28, 28) == data.input_shape("synthetic")
    assert ds.x_train.shape == (2000, 1, 28, 28) and ds.x_test.shape == (500, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert ds.y_train.bincount().tolist() == [20] * 100
    assert ds.y_test.bincount().tolist() == [5] * 100
    assert ds.kind == "image" and ds.value_range == (0.0, 1.0)


def test_synthetic_thousand_classes_is_learnable():
    ds = data.load("synthetic", num_classes=1000, seed=7)
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.y_train.bincount().tolist() == [4] * 1000
    # Nearest class mean of the 4 training images: a learnable set is well separated.
    sums = torch.zeros(1000, 784).index_add_(0, ds.y_train, ds.x_train.flatten(1))
    means = sums / 4
    predicted = torch.cdist(ds.x_test.flatten(1), means).argmin(dim=1)
    assert (predicted == ds.y_test).float().mean() > 0.9
    _assert_same(data.load("synthetic", num_classes=50, seed=7), data.load("synthetic", num_classes=50, seed=7))
    assert _differs(data.load("synthetic", num_classes=50, seed=7), data.load("synthetic", num_classes=50, seed=8))


@pytest.mark.parametrize("bad", [1, 2001, 2.5, True])
def test_synthetic_refuses_bad_class_counts(bad):
    with pytest.raises(ValueError, match="num_classes from 2 to 2000"):
        data.load("synthetic", num_classes=bad)


def test_fixed_sets_ignore_num_classes():
    assert data.load("digits", num_classes=100).num_classes == 10


# --- arguments, metadata, to() ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagenet", "../../etc/passwd", "MNIST", ""])
def test_unknown_names_list_the_known_ones(name):
    with pytest.raises(ValueError, match="known datasets: spirals, moons") as info:
        data.load(name)
    assert all(known in str(info.value) for known in data.DATASETS)
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.input_shape(name)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"noise": -0.1}, "noise"), ({"noise": float("nan")}, "noise")],
)
def test_bad_arguments_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.load("moons", **kwargs)


def test_datasets_is_read_only_and_shapes_are_known_without_loading():
    with pytest.raises(TypeError):
        data.DATASETS["mine"] = "no"  # type: ignore[index]
    assert set(data.DATASETS) >= {"digits", "spirals", "moons", "circles", "xor", "synthetic"}
    assert data.input_shape("cifar10") == (3, 32, 32)
    assert data.input_shape("mnist") == data.input_shape("fashion-mnist") == (1, 28, 28)


def test_to_returns_a_new_dataset_on_the_device():
    ds = data.load("digits")
    moved = ds.to("meta")  # a device every machine has: tensors without storage
    assert moved is not ds and isinstance(moved, data.Dataset)
    assert all(t.device.type == "meta" for t in (moved.x_train, moved.y_train, moved.x_test, moved.y_test))
    assert ds.x_train.device.type == "cpu"  # the original is untouched
    assert moved.x_train.shape == ds.x_train.shape and moved.y_test.dtype == torch.int64
    assert (moved.name, moved.class_names, moved.value_range, moved.kind) == (
        ds.name,
        ds.class_names,
        ds.value_range,
        ds.kind,
    )
    assert data.load("xor", device="meta").x_test.device.type == "meta"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]
    assert "digits" in repr(ds) and len(repr(ds)) < 200  # no tensor dump


# --- torchvision sets from files written here -------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic 0x00000800 + ndim (uint8 data), big-endian sizes, bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, train: int = 12, test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :2] = (0, 255)  # both ends of the pixel range
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


@pytest.mark.parametrize(
    ("name", "folder", "cls"), [("mnist", "MNIST", "MNIST"), ("fashion-mnist", "FashionMNIST", "FashionMNIST")]
)
def test_mnist_style_sets_load_from_idx_files(tmp_path, name, folder, cls):
    arrays = _write_mnist(tmp_path, folder)
    ds = data.load(name, root=tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expected = torch.as_tensor(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.class_names == tuple(getattr(torchvision.datasets, cls).classes)
    assert ds.num_classes == 10 and ds.kind == "image" and ds.value_range == (0.0, 1.0)
    assert ds.input_shape == (1, 28, 28)


def test_data_folder_comes_from_root_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_VARIABLE, raising=False)
    assert data.data_root() == Path.home() / ".cache" / "jacobian-playground"
    monkeypatch.setenv(data.DATA_DIR_VARIABLE, str(tmp_path))
    assert data.data_root() == tmp_path
    assert data.data_root(tmp_path / "other") == tmp_path / "other"
    _write_mnist(tmp_path, "MNIST")
    assert data.load("mnist").x_train.shape == (12, 1, 28, 28)  # found through the variable


def _fail_download(calls: list):
    def fail(*args, **kwargs):
        calls.append(args)
        raise URLError("offline")

    return fail


def test_missing_mnist_names_the_folder(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", _fail_download(calls))
    with pytest.raises(data.DatasetUnavailable) as info:
        data.load("mnist", root=tmp_path)
    assert calls  # the download was tried (and failed) after the local files were missing
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message and "offline" in message
    assert "\n" not in message
    assert isinstance(info.value, RuntimeError)


def test_missing_cifar10_names_the_folder(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", _fail_download(calls))
    with pytest.raises(data.DatasetUnavailable) as info:
        data.load("cifar10", root=tmp_path)
    assert calls
    assert f"in the folder {tmp_path}" in str(info.value)
    assert "cifar-10-python.tar.gz" in str(info.value)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_batches_go_through_torchvisions_class(tmp_path, monkeypatch):
    """Tiny CIFAR batch files in the real format, read by torchvision's CIFAR10 code.

    CIFAR10 checks every file against the md5 of the real download, so the test uses a subclass
    that lists the tiny files' checksums instead (the way torchvision's CIFAR100 overrides
    them); loading, checking, unpickling and the HWC layout all run unchanged."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # R plane, G plane, B plane
        batches[name] = {"data": rows, "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    class TinyCIFAR10(torchvision.datasets.CIFAR10):
        train_list = [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
        test_list = [["test_batch", _md5(folder / "test_batch")]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": _md5(folder / "batches.meta")}

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", TinyCIFAR10)
    ds = data.load("cifar10", root=tmp_path)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.class_names == tuple(names)
    assert ds.x_train.is_contiguous() and ds.x_train.dtype == torch.float32
    expected = torch.as_tensor(batches["test_batch"]["data"]).reshape(3, 3, 32, 32).float() / 255
    torch.testing.assert_close(ds.x_test, expected, rtol=0, atol=0)  # channels first again
    train_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == train_labels and ds.y_train.dtype == torch.int64
