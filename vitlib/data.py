"""Image classification data that works in a classroom.

Every dataset of the course comes out of :func:`load_dataset` as an
:class:`ImageDataset`: the whole split held in memory as one uint8 tensor
``images`` of shape (N, C, H, W) and one int64 tensor ``labels`` of shape (N,).

Where the files come from (the first place that holds every file of the split wins):

1. the ``root`` argument of :func:`load_dataset`;
2. the folder named by the environment variable ``VITLIB_DATA``;
3. system copies, e.g. the Debian package ``dataset-fashion-mnist`` which puts
   Fashion-MNIST in ``/usr/share/datasets/fashion-mnist`` (see ``SYSTEM_DATA_DIRS``);
4. the cache folder ``$XDG_CACHE_HOME/vitlib/data`` (default ``~/.cache/vitlib/data``);
5. a download through torchvision, into ``root``, else ``VITLIB_DATA``, else the cache
   folder (only with ``download=True``).

Inside each of those folders three layouts are accepted: torchvision's
(``MNIST/raw/``, ``FashionMNIST/raw/``, ``cifar-10-batches-py/``), a subfolder named
after the dataset (``mnist/``, ``fashion-mnist/``, ``cifar10/``) and the files lying
directly in the folder. ``"fashion-mnist-small"`` (8,000 training and 2,000 test
images) ships inside vitlib and never needs the network.

Whatever the source, the files are read by the loaders of this module
(:func:`read_idx`, :func:`read_cifar10`), never by torchvision's, so every source
gives the same tensors. If nothing works, :class:`DatasetNotFoundError` says
everywhere it looked and how to fix it.
"""

from __future__ import annotations

import difflib
import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets
from torch.utils.data import Dataset

from vitlib.augment import BatchTransform

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10", "fashion-mnist-small")
SPLITS = ("train", "test")
AUGMENTATIONS = ("none", "flip", "basic", "digits", "strong")

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}
CLASS_NAMES["fashion-mnist-small"] = CLASS_NAMES["fashion-mnist"]

# Per-channel mean and standard deviation of the full training sets, in [0, 1] units.
# The small subset uses the statistics of the full Fashion-MNIST training set.
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
MEAN_STD["fashion-mnist-small"] = MEAN_STD["fashion-mnist"]

# Datasets whose images mean the same thing mirrored left-right. Not MNIST: a mirrored
# digit is another digit, or no digit at all.
FLIP_SAFE = ("fashion-mnist", "fashion-mnist-small", "cifar10")

# Folders where operating-system packages install datasets. A module-level dict so
# that tests (and unusual machines) can change it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
# The Debian/Ubuntu packages that install them there.
SYSTEM_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

# The subfolder torchvision uses below its root, and the torchvision class that downloads.
TORCHVISION_SUBFOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw",
                          "cifar10": "cifar-10-batches-py"}
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}

BUNDLED_DIR = Path(__file__).resolve().parent / "datasets_bundled"

# The files of each split. IDX files may also carry a ".gz" suffix.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset was found and none could be downloaded.

    The message lists every place that was tried and the ways to fix it.
    """


class ImageDataset(Dataset):
    """One split of an image classification dataset, held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,), values in 0..num_classes-1.
        classes: the class names, ``classes[label]``.
        name: dataset name, e.g. ``"fashion-mnist"``.
        split: ``"train"`` or ``"test"``.
        source: where the data came from (a folder, ``"bundled"`` or ``"download:<root>"``).
        mean, std: per-channel statistics of the training set in [0, 1] units,
            used by :func:`eval_transform` and :func:`train_transform`.
        transform: applied to the uint8 (C, H, W) image in ``__getitem__``, or None.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        classes: list[str],
        *,
        name: str = "custom",
        split: str = "train",
        source: str = "memory",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Check that images, labels, classes and statistics agree, then store them.

        ``mean`` and ``std`` default to the statistics of ``images`` themselves.
        Labels of any integer dtype are converted to int64; images must be uint8.
        """
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name} {split}: images must be a uint8 tensor of shape (N, C, H, W), "
                             f"got {images.dtype} with shape {tuple(images.shape)}")
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise ValueError(f"{name} {split}: labels must be an integer tensor of shape (N,), "
                             f"got {labels.dtype} with shape {tuple(labels.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{name} {split}: {len(images)} images but {len(labels)} labels")
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError(f"{name} {split}: the list of class names is empty")
        labels = labels.to(torch.int64)  # (N,)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{name} {split}: labels must lie in 0..{len(classes) - 1} "
                             f"({len(classes)} classes), found {labels.min()}..{labels.max()}")
        channels = images.shape[1]
        if mean is None:
            mean = tuple((images.float() / 255).mean(dim=(0, 2, 3)).tolist())  # (C,)
        if std is None:
            std = tuple((images.float() / 255).std(dim=(0, 2, 3)).tolist())  # (C,)
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"{name} {split}: images have {channels} channel(s) but mean has "
                             f"{len(mean)} and std has {len(std)} values")
        if min(std) <= 0:
            raise ValueError(f"{name} {split}: std must be positive, got {std}")
        if transform is not None and not callable(transform):
            raise TypeError(f"{name} {split}: transform must be callable or None, got {transform!r}")

        self.images = images  # (N, C, H, W) uint8
        self.labels = labels  # (N,) int64
        self.classes = classes
        self.name = name
        self.split = split
        self.source = source
        self.mean = mean
        self.std = std
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(image, label)``: the transformed image, or float32 (C, H, W) in [0, 1]."""
        image = self.images[index]  # (C, H, W) uint8
        if self.transform is not None:
            return self.transform(image), int(self.labels[index])
        return image.float() / 255, int(self.labels[index])  # (C, H, W) float32

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        height, width = self.images.shape[2:]
        if height != width:
            raise ValueError(f"{self.name}: images are {height}x{width}, not square")
        return height

    @property
    def in_channels(self) -> int:
        """Number of colour channels: 1 for grey images, 3 for RGB."""
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        channels, height, width = self.images.shape[1:]
        return (f"ImageDataset({self.name!r}, split={self.split!r}, {len(self)} images of "
                f"{channels}x{height}x{width}, {self.num_classes} classes, source={self.source!r})")


# --------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------

# IDX type codes (third byte of the magic number) and the big-endian dtypes they stand for.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the format of MNIST and Fashion-MNIST), gzipped or not.

    The format: two zero bytes, a type code byte (0x08 = uint8), a byte giving the
    number of dimensions d, then d big-endian int32 sizes, then the data in C order.
    Gzip compression is recognised by the file's first bytes, whatever its name.

    Returns a numpy array of the stored shape, e.g. (60000, 28, 28) uint8 for images
    and (60000,) uint8 for labels, in native byte order.

    Raises:
        ValueError: naming the file, if it is not IDX, is truncated or has extra bytes.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: damaged gzip file ({err}); copy or download it again") from None

    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}, "
                         f"expected 0000 followed by a type code and a dimension count)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        supported = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise ValueError(f"{path}: unsupported IDX type code 0x{type_code:02X} (supported: {supported})")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions "
                         f"need {header_size})")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header_size
    if found < expected:
        raise ValueError(f"{path}: truncated IDX file: shape {shape} needs {expected} bytes of data, "
                         f"found only {found}; copy or download it again")
    if found > expected:
        raise ValueError(f"{path}: IDX file has {found - expected} unexpected bytes after the data "
                         f"of shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header_size)
    return data.reshape(shape).astype(dtype.newbyteorder("="))  # a writable copy


def _unpickle_dict(path: Path, keys: tuple[bytes, ...]) -> dict:
    """Load one pickled CIFAR batch (a dict with bytes keys) and check it has ``keys``."""
    with open(path, "rb") as f:
        try:
            content = pickle.load(f, encoding="bytes")  # trusted files of a known format
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({type(err).__name__}: {err})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(content).__name__}")
    missing = [key for key in keys if key not in content]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; found keys {sorted(map(repr, content))}")
    return content


def read_cifar10(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split of CIFAR-10 from its python version (``cifar-10-batches-py``).

    ``folder`` holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
    ``batches.meta``. Each batch is a pickled dict: ``b"data"`` is a uint8 array
    (n, 3072) whose rows are 1024 red, then 1024 green, then 1024 blue values, each
    channel a 32x32 image in row-major order; ``b"labels"`` is a list of n ints.

    Returns:
        images uint8 (N, 3, 32, 32), labels int64 (N,), and the 10 class names.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(folder)
    all_images, all_labels = [], []
    for file_name in CIFAR10_FILES[split]:
        path = folder / file_name
        batch = _unpickle_dict(path, (b"data", b"labels"))
        data = np.asarray(batch[b"data"])  # (n, 3072)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)  # (n,)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: b'data' must be uint8 of shape (n, 3072), "
                             f"got {data.dtype} {data.shape}")
        if labels.shape != (len(data),):
            raise ValueError(f"{path}: {len(data)} images but {labels.size} labels")
        all_images.append(data.reshape(-1, 3, 32, 32))  # (n, 3, 32, 32): channel, row, column
        all_labels.append(labels)
    meta = _unpickle_dict(folder / "batches.meta", (b"label_names",))
    classes = [name.decode() if isinstance(name, bytes) else str(name) for name in meta[b"label_names"]]
    images = np.concatenate(all_images)  # (N, 3, 32, 32)
    labels = np.concatenate(all_labels)  # (N,)
    return images, labels, classes


# --------------------------------------------------------------------------------------
# Finding and loading files
# --------------------------------------------------------------------------------------

def _split_files_present(folder: Path, name: str, split: str) -> bool:
    """True if ``folder`` directly holds every file of the split (IDX files raw or .gz)."""
    if name == "cifar10":
        return all((folder / f).is_file() for f in CIFAR10_FILES[split] + ("batches.meta",))
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in IDX_FILES[split])


def _layouts(folder: Path, name: str) -> list[Path]:
    """The places inside ``folder`` where the files may lie, in the order they are tried."""
    return [folder / TORCHVISION_SUBFOLDERS[name], folder / name, folder]


def _find_split(folder: Path, name: str, split: str) -> Path | None:
    """The first layout inside ``folder`` holding the whole split, or None."""
    return next((place for place in _layouts(folder, name) if _split_files_present(place, name, split)), None)


def _read_split(
    folder: Path, name: str, split: str, source: str, transform: Callable[[torch.Tensor], torch.Tensor] | None
) -> ImageDataset:
    """Read the split whose files lie directly in ``folder`` with our own loaders."""
    if name == "cifar10":
        images, labels, classes = read_cifar10(folder, split)  # (N, 3, 32, 32), (N,)
    else:
        image_file, label_file = (folder / f for f in IDX_FILES[split])
        image_file = image_file if image_file.is_file() else image_file.with_name(image_file.name + ".gz")
        label_file = label_file if label_file.is_file() else label_file.with_name(label_file.name + ".gz")
        images = read_idx(image_file)  # (N, H, W)
        labels = read_idx(label_file)  # (N,)
        if images.ndim != 3:
            raise ValueError(f"{image_file}: expected images of shape (N, H, W), got {images.shape}")
        if labels.ndim != 1:
            raise ValueError(f"{label_file}: expected labels of shape (N,), got {labels.shape}")
        images = images[:, None]  # (N, 1, H, W)
        classes = CLASS_NAMES[name]
    mean, std = MEAN_STD[name]
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes,
                        name=name, split=split, source=source, mean=mean, std=std, transform=transform)


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vitlib/data``, or ``~/.cache/vitlib/data``."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "vitlib" / "data"


def _download(name: str, split: str, target: Path) -> None:
    """Let torchvision download the dataset into ``target`` (in torchvision's layout)."""
    dataset_class = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])  # looked up late: tests replace it
    dataset_class(root=str(target), train=(split == "train"), download=True)


def _how_to_fix(name: str, split: str) -> str:
    """The ways out, for the end of a DatasetNotFoundError message."""
    if name == "cifar10":
        wanted = f"{TORCHVISION_SUBFOLDERS[name]}/{{data_batch_1..5, test_batch, batches.meta}}"
    else:
        wanted = " and ".join(f"{TORCHVISION_SUBFOLDERS[name]}/{f}(.gz)" for f in IDX_FILES[split])
    fixes = [f"set VITLIB_DATA=/path/to/folder holding {wanted}",
             "or pass root=/path/to/that/folder to load_dataset"]
    if name in SYSTEM_PACKAGES:
        fixes.append(f"or install the system package: sudo apt-get install {SYSTEM_PACKAGES[name]}")
    fixes += ["or connect to the internet and call load_dataset with download=True",
              "or use 'fashion-mnist-small', which ships with vitlib and needs no download"]
    return "How to fix it:\n" + "\n".join(f"  - {fix}" for fix in fixes)


def _short_reason(err: BaseException) -> str:
    """One line saying why something failed, e.g. "URLError: <urlopen error no network>"."""
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ImageDataset:
    """Load one split of a dataset into memory, from wherever a copy can be found.

    Args:
        name: one of ``DATASET_NAMES``.
        split: ``"train"`` or ``"test"``.
        root: a folder to look in first (and to download into).
        download: if no local copy exists, download one through torchvision.
        transform: stored as ``dataset.transform``, applied in ``__getitem__``.

    The search order is described in the module docstring.

    Raises:
        ValueError: unknown ``name`` or ``split``.
        DatasetNotFoundError: no copy found and none could be downloaded; the
            message says where it looked and how to fix it.
    """
    if name not in DATASET_NAMES:
        close = difflib.get_close_matches(str(name), DATASET_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}.{hint}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")

    if name == "fashion-mnist-small":
        folder = BUNDLED_DIR / name
        if not _split_files_present(folder, name, split):
            raise DatasetNotFoundError(f"the bundled dataset {name!r} is missing from {folder}; "
                                       f"reinstall vitlib (or run scripts/make_fashion_mnist_small.py)")
        return _read_split(folder, "fashion-mnist-small", split, "bundled", transform)

    # 1-4: local copies.
    env_value = os.environ.get("VITLIB_DATA")
    env_dir = Path(env_value).expanduser() if env_value else None
    root_dir = Path(root).expanduser() if root is not None else None
    candidates: list[tuple[str, Path | None]] = []
    if root_dir is not None:
        candidates.append(("root argument", root_dir))
    candidates.append(("VITLIB_DATA", env_dir))
    candidates += [("system copy", Path(folder)) for folder in SYSTEM_DATA_DIRS.get(name, ())]
    candidates.append(("cache folder", _cache_dir()))

    tried: list[str] = []
    for label, folder in candidates:
        if folder is None:
            tried.append(f"{label}: not set")
        elif not folder.is_dir():
            tried.append(f"{label}: {folder} (no such folder)")
        elif (found := _find_split(folder, name, split)) is not None:
            return _read_split(found, name, split, str(found), transform)
        else:
            places = ", ".join(f"{place}/" for place in _layouts(folder, name))
            tried.append(f"{label}: {folder} (no complete {split} split in {places})")

    # 5: download.
    target = root_dir or env_dir or _cache_dir()
    if not download:
        tried.append(f"download into {target}: not attempted (download=False)")
    else:
        try:
            _download(name, split, target)
        except Exception as err:  # any failure becomes one clear message below
            tried.append(f"download into {target}: failed ({_short_reason(err)})")
        else:
            found = _find_split(target, name, split)
            if found is not None:
                return _read_split(found, name, split, f"download:{target}", transform)
            tried.append(f"download into {target}: finished, but the {split} files are not in "
                         f"{target / TORCHVISION_SUBFOLDERS[name]}/")

    message = (f"Could not find the {split} split of {name!r}. Tried, in order:\n"
               + "\n".join(f"  - {line}" for line in tried) + "\n" + _how_to_fix(name, split))
    raise DatasetNotFoundError(message) from None


# --------------------------------------------------------------------------------------
# Transforms: uint8 images (C, H, W) or batches (B, C, H, W) in, normalised float32 out
# --------------------------------------------------------------------------------------

def eval_transform(dataset: ImageDataset) -> BatchTransform:
    """Scale to [0, 1] and normalise with the dataset's training-set mean and std."""
    return BatchTransform(dataset.mean, dataset.std)


def train_transform(dataset: ImageDataset, augment: str = "basic") -> BatchTransform:
    """The training transform: random augmentation, then the same steps as :func:`eval_transform`.

    ``augment`` is one of ``AUGMENTATIONS``:

    - ``"none"``: no augmentation, identical to the evaluation transform;
    - ``"flip"``: only the random horizontal flip, for datasets in ``FLIP_SAFE`` (for
      MNIST it is ``"none"``): the mildest regulariser, it keeps the patch grid;
    - ``"basic"``: a random crop from the image padded with zeros by size // 8 pixels
      (at least 2) on every side, and, for datasets in ``FLIP_SAFE`` (not MNIST),
      a random horizontal flip;
    - ``"digits"``: ``"basic"``'s shift, after a random turn of up to ±10 degrees
      and a zoom of up to ±10%: the small affine distortions of handwriting
      (Simard et al. 2003), for MNIST;
    - ``"strong"``: ``"basic"``, then random erasing of one rectangle in a quarter
      of the images (DeiT's setting). Mixup and cutmix act on labels too: they are
      :class:`vitlib.train.TrainConfig` settings.

    The result is a :class:`vitlib.augment.BatchTransform`: it works on one image or
    on a whole batch, and the training engine applies it batch by batch, on the device.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; known augmentations: {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return eval_transform(dataset)
    return BatchTransform(
        dataset.mean, dataset.std,
        padding=0 if augment == "flip" else max(2, dataset.image_size // 8),  # a shift of up to 3 pixels on 28×28, 4 on 32×32
        flip=dataset.name in FLIP_SAFE,
        erasing=0.25 if augment == "strong" else 0.0,
        rotate=10.0 if augment == "digits" else 0.0,
        scale=0.1 if augment == "digits" else 0.0,
    )
