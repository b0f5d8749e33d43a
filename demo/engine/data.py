"""Datasets as tensors plus the metadata the rest of the app needs; no DataLoader.

Small sets are generated or read whole and kept as tensors on the training device:
- 2-D point sets like TensorFlow Playground's (`spirals`, `moons`, `circles`, `xor`), generated
  from the seed with Gaussian `noise`: unbounded coordinates of order 1, perturbed in input units.
- scikit-learn's 8x8 `digits` (bundled with scikit-learn, no download).
- `synthetic`: a many-class image set (the forum thread's C ~ 1000 case), one smooth random
  prototype per class plus per-sample noise, generated from the seed.
- `mnist`, `fashion-mnist`, `cifar10` through torchvision's own dataset classes, from a local
  folder, downloaded there when missing and a network is available.

Images are float32 in [0, 1] with shape (N, C, H, W); labels are int64 class indices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetUnavailable",
    "class_count",
    "data_root",
    "input_shape",
    "load",
]

DATASETS = MappingProxyType(
    {
        "spirals": "two interleaved spirals, 2-D points, 2 classes (TensorFlow Playground)",
        "moons": "two interleaving half circles, 2-D points, 2 classes",
        "circles": "a small circle inside a large one, 2-D points, 2 classes",
        "xor": "XOR of the signs of the two coordinates, 2-D points, 2 classes",
        "digits": "scikit-learn's handwritten digits, 8x8 grey images, 10 classes, no download",
        "synthetic": "many-class 28x28 images, a smooth prototype per class plus noise (C ~ 1000)",
        "mnist": "MNIST handwritten digits, 28x28 grey images, 10 classes (torchvision)",
        "fashion-mnist": "Fashion-MNIST clothing, 28x28 grey images, 10 classes (torchvision)",
        "cifar10": "CIFAR-10 objects, 32x32 colour images, 10 classes (torchvision)",
    }
)

_SHAPES = MappingProxyType(
    {
        "spirals": (2,),
        "moons": (2,),
        "circles": (2,),
        "xor": (2,),
        "digits": (1, 8, 8),
        "synthetic": (1, 28, 28),
        "mnist": (1, 28, 28),
        "fashion-mnist": (1, 28, 28),
        "cifar10": (3, 32, 32),
    }
)
# The 2-D point sets (spirals, moons, ...): drawn as fields, attacked at larger epsilons.
POINT_SETS = frozenset(name for name, shape in _SHAPES.items() if shape == (2,))

PIXEL_RANGE = (0.0, 1.0)
DATA_DIR_VARIABLE = "JACOBIAN_DATA_DIR"
DEFAULT_ROOT = Path("~/.cache/jacobian-playground")

# 2-D point sets: sizes like TensorFlow Playground's, a fixed train/test split of one sample.
POINTS_TRAIN, POINTS_TEST = 1000, 500
SPIRAL_TURNS = 1.75  # turns of each spiral arm, as in TensorFlow Playground
XOR_MARGIN = 0.05  # keeps clean points off the axes, where the XOR label flips

DIGITS_TEST_FRACTION = 0.2

# synthetic: prototypes are random 7x7 grids upsampled to 28x28 (smooth, values in [0, 1]).
SYNTHETIC_CLASSES, MIN_CLASSES, MAX_CLASSES = 100, 2, 2000
SYNTHETIC_SIDE, SYNTHETIC_GRID = 28, 7


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not here and could not be downloaded; says where they belong."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test tensors of one dataset, with what a run needs to know about them."""

    name: str
    x_train: Tensor = dataclasses.field(repr=False)  # (N, *input_shape) float32
    y_train: Tensor = dataclasses.field(repr=False)  # (N,) int64 class indices
    x_test: Tensor = dataclasses.field(repr=False)
    y_test: Tensor = dataclasses.field(repr=False)
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...] = dataclasses.field(repr=False)
    value_range: tuple[float, float] | None  # (lo, hi) for images; None: unbounded points
    kind: str  # "points" | "image"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: str | torch.device) -> Dataset:
        """A new Dataset with its tensors on `device` (the same tensors if already there)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


def class_count(name: str, synthetic_classes: int | None = None) -> int:
    """The number of classes of dataset `name`, without loading it (synthetic: as asked)."""
    _check_name(name)
    if name == "synthetic":
        return SYNTHETIC_CLASSES if synthetic_classes is None else synthetic_classes
    return 2 if _SHAPES[name] == (2,) else 10


def input_shape(name: str) -> tuple[int, ...]:
    """The shape of one example of dataset `name` (no batch dim), without loading it."""
    _check_name(name)
    return _SHAPES[name]


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where torchvision datasets live: `root`, else $JACOBIAN_DATA_DIR, else DEFAULT_ROOT."""
    chosen = root if root is not None else os.environ.get(DATA_DIR_VARIABLE) or DEFAULT_ROOT
    return Path(chosen).expanduser()


def load(
    name: str,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    noise: float = 0.1,
    num_classes: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Dataset `name` (a key of DATASETS) as tensors on `device`.

    seed: draws the generated sets (points, synthetic) and the digits train/test split; the
    torchvision sets have fixed official splits. noise: standard deviation of the Gaussian noise
    of the generated sets, in input units. num_classes: classes of `synthetic` (default 100,
    2 to 2000); the other datasets have a fixed number and ignore it. root: folder of the
    torchvision sets (see data_root). Raises ValueError for bad arguments and
    DatasetUnavailable when a torchvision set is missing and cannot be downloaded.
    """
    _check_name(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number from 0 to 2**32 - 1, got {seed!r}.")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number, 0 or more, got {noise!r}.")
    if name in _POINT_SETS:
        dataset = _points(name, seed, float(noise))
    elif name == "digits":
        dataset = _digits(seed)
    elif name == "synthetic":
        dataset = _synthetic(seed, float(noise), num_classes)
    else:
        dataset = _torchvision(name, data_root(root))
    return dataset.to(device)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.")


# --- 2-D point sets ---------------------------------------------------------------------------


def _spirals(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    r = rng.uniform(0.0, 1.0, n)  # radius grows with the angle along each arm
    t = 2 * np.pi * SPIRAL_TURNS * r + np.pi * y  # the second arm is the first turned by pi
    x = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)  # (n, 2) within the unit disc
    return x + noise * rng.standard_normal((n, 2)), y


def _xor(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, 2))
    x += np.sign(x) * XOR_MARGIN  # (n, 2), |coordinates| in [0.05, 1.05]
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # label from the clean point, then noise
    return x + noise * rng.standard_normal((n, 2)), y


def _moons(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    return x - np.array([0.5, 0.25]), y  # centre the two half circles on the origin


def _circles(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles

    return make_circles(n_samples=n, noise=noise, factor=0.5, random_state=seed)


_POINT_SETS = MappingProxyType({"spirals": _spirals, "moons": _moons, "circles": _circles, "xor": _xor})


def _points(name: str, seed: int, noise: float) -> Dataset:
    x, y = _POINT_SETS[name](POINTS_TRAIN + POINTS_TEST, noise, seed)
    # Balanced classes, shuffled with the seed so the split takes both evenly (on average).
    order = np.random.default_rng([seed, 1]).permutation(len(y))  # a stream apart from x's
    x = torch.as_tensor(x[order], dtype=torch.float32)  # (N, 2)
    y = torch.as_tensor(y[order], dtype=torch.int64)  # (N,)
    return Dataset(
        name=name,
        x_train=x[:POINTS_TRAIN],
        y_train=y[:POINTS_TRAIN],
        x_test=x[POINTS_TRAIN:],
        y_test=y[POINTS_TRAIN:],
        input_shape=(2,),
        class_names=("class 0", "class 1"),
        value_range=None,
        kind="points",
    )


# --- images generated or bundled --------------------------------------------------------------


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # (1797, 64) grey levels 0..16, (1797,)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=seed)

    def images(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)

    return Dataset(
        name="digits",
        x_train=images(x_tr),
        y_train=torch.as_tensor(y_tr, dtype=torch.int64),
        x_test=images(x_te),
        y_test=torch.as_tensor(y_te, dtype=torch.int64),
        input_shape=(1, 8, 8),
        class_names=tuple(str(d) for d in range(10)),
        value_range=PIXEL_RANGE,
        kind="image",
    )


def _synthetic(seed: int, noise: float, num_classes: int | None) -> Dataset:
    c = SYNTHETIC_CLASSES if num_classes is None else num_classes
    if isinstance(c, bool) or not isinstance(c, int) or not MIN_CLASSES <= c <= MAX_CLASSES:
        raise ValueError(f"synthetic needs num_classes from {MIN_CLASSES} to {MAX_CLASSES}, got {c!r}.")
    gen = torch.Generator().manual_seed(seed)
    side = SYNTHETIC_SIDE
    coarse = torch.rand(c, 1, SYNTHETIC_GRID, SYNTHETIC_GRID, generator=gen)
    # Bilinear upsampling is a convex combination: smooth prototypes that stay in [0, 1].
    prototypes = F.interpolate(coarse, size=(side, side), mode="bilinear")  # (C, 1, 28, 28)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) % c)[torch.randperm(n, generator=gen)]  # balanced, shuffled
        x = prototypes[y] + noise * torch.randn(n, 1, side, side, generator=gen)
        return x.clamp_(*PIXEL_RANGE), y

    x_train, y_train = draw(max(2000, 4 * c))  # a few examples per class
    x_test, y_test = draw(max(500, c))
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_shape=(1, side, side),
        class_names=tuple(f"class {i}" for i in range(c)),
        value_range=PIXEL_RANGE,
        kind="image",
    )


# --- torchvision datasets ---------------------------------------------------------------------


@dataclass(frozen=True)
class _TorchvisionSet:
    class_name: str  # in torchvision.datasets, looked up at load time
    title: str
    folder: tuple[str, ...]  # where torchvision looks for the files, under the root
    files: str  # what to put there, for the message


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (as downloaded, or unzipped)"
)
_TORCHVISION = MappingProxyType(
    {
        "mnist": _TorchvisionSet("MNIST", "MNIST", ("MNIST", "raw"), _MNIST_FILES),
        "fashion-mnist": _TorchvisionSet("FashionMNIST", "Fashion-MNIST", ("FashionMNIST", "raw"), _MNIST_FILES),
        "cifar10": _TorchvisionSet(
            "CIFAR10",
            "CIFAR-10",
            (),
            "cifar-10-python.tar.gz (or the folder cifar-10-batches-py it unpacks to)",
        ),
    }
)


def _torchvision(name: str, root: Path) -> Dataset:
    import torchvision.datasets

    source = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, source.class_name)
    train, test = _open(cls, root, source)
    x_train, y_train = _as_tensors(train)
    x_test, y_test = _as_tensors(test)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_shape=tuple(x_train.shape[1:]),
        class_names=tuple(train.classes),
        value_range=PIXEL_RANGE,
        kind="image",
    )


def _open(cls: type, root: Path, source: _TorchvisionSet) -> tuple:
    """The train and test sets of torchvision class `cls`: local files first, then download."""
    try:
        return cls(root, train=True), cls(root, train=False)
    except RuntimeError:
        pass  # torchvision's "Dataset not found or corrupted": try to download the files
    try:
        return cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as err:  # no network, a refused mirror, a broken archive: all one answer
        folder = root.joinpath(*source.folder)
        reason = " ".join(str(err).split()) or type(err).__name__  # one line
        raise DatasetUnavailable(
            f"{source.title} is not in {folder} and could not be downloaded there. "
            f"Put {source.files} in the folder {folder}, or point {DATA_DIR_VARIABLE} "
            f"(or root=) to a folder that has them. The download failed with: {reason}"
        ) from err


def _as_tensors(ds: object) -> tuple[Tensor, Tensor]:
    """torchvision's `.data` (uint8, (N, H, W) or (N, H, W, C)) -> (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    x = x.contiguous().to(torch.float32).div_(255.0)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)  # MNIST: a tensor; CIFAR: a list
    return x, y
