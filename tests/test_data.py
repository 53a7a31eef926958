"""Tests of vitlib.data: file formats, where datasets are found, downloads, transforms.

No test touches the network: torchvision's dataset classes are replaced by fakes.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from data_files import CIFAR_CLASSES, make_cifar_folder, make_idx_split, write_idx
from vitlib import data
from vitlib.data import (
    AUGMENTATIONS,
    DATASET_NAMES,
    DatasetNotFoundError,
    ImageDataset,
    eval_transform,
    load_dataset,
    read_cifar10,
    read_idx,
    train_transform,
)

REAL_SYSTEM_DATA_DIRS = dict(data.SYSTEM_DATA_DIRS)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BUNDLED_FOLDER = data.BUNDLED_DIR / "fashion-mnist-small"
BUNDLED_PER_CLASS = {"train": 800, "test": 200}
MAX_BUNDLED_BYTES = 5_000_000


# --------------------------------------------------------------------------------------
# Stand-ins for torchvision's downloaders
# --------------------------------------------------------------------------------------

class FakeTorchvisionDataset:
    """Stands in for torchvision.datasets.X: records its arguments, then fails or "downloads"."""

    calls: list[dict] = []
    writer = None  # None: fail like a machine without network; else writer(root) writes files

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        type(self).calls.append({"root": root, "train": train, "download": download})
        if type(self).writer is None:
            raise urllib.error.URLError("no network")
        type(self).writer(Path(root))


def fake_torchvision(monkeypatch, class_name: str, writer=None) -> type[FakeTorchvisionDataset]:
    fake = type(class_name, (FakeTorchvisionDataset,), {"calls": [], "writer": staticmethod(writer) if writer else None})
    monkeypatch.setattr(torchvision.datasets, class_name, fake)
    return fake


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No VITLIB_DATA, no system copies, an empty cache folder, and no network."""
    monkeypatch.delenv("VITLIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {})
    for class_name in ("MNIST", "FashionMNIST", "CIFAR10"):
        fake_torchvision(monkeypatch, class_name)


# --------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_images_and_labels(tmp_path, gz):
    images, labels = make_idx_split(tmp_path, "train", n=7, gz=gz)
    suffix = ".gz" if gz else ""
    got_images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    got_labels = read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] = 1  # the result is a writable array


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "no-suffix", array, gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "no-suffix"), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "ints-idx1"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + array.tobytes())
    assert read_idx(path).tolist() == [1, -2, 70000]


def test_read_idx_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "bad-magic-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(ValueError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_unsupported_type_code(tmp_path):
    path = tmp_path / "odd-type"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(ValueError, match=r"unsupported IDX type code 0x07.*0x08"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_truncated_payload_names_the_file(tmp_path, gz):
    path = tmp_path / "short-idx3-ubyte"
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    content = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 28, 28) + images.tobytes()[:-100]
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_cut_gzip_file_names_the_file(tmp_path):
    path = tmp_path / "cut.gz"
    write_idx(path, np.zeros((50, 28, 28), dtype=np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="damaged gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_cifar10_shapes_pixel_layout_labels_and_classes(tmp_path):
    make_cifar_folder(tmp_path, per_batch=3)
    images, labels, classes = read_cifar10(tmp_path, "train")
    assert images.dtype == np.uint8 and images.shape == (15, 3, 32, 32)
    assert labels.tolist() == [i % 10 for i in range(15)]
    assert classes == CIFAR_CLASSES
    # data_batch_2, image 1 is image 3 + 1 of the split; blue channel, row 5, column 7.
    assert images[4, 2, 5, 7] == 200
    assert images.sum() == 200  # and nothing else was set
    test_images, test_labels, _ = read_cifar10(tmp_path, "test")
    assert test_images.shape == (3, 3, 32, 32) and test_labels.tolist() == [5, 6, 7]


def test_read_cifar10_wrong_keys_give_clear_error(tmp_path):
    make_cifar_folder(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"images": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"test_batch.*missing key.*b'data'"):
        read_cifar10(tmp_path, "test")


# --------------------------------------------------------------------------------------
# Where load_dataset finds the files
# --------------------------------------------------------------------------------------

def test_explicit_root_wins_over_vitlib_data(tmp_path, monkeypatch):
    make_idx_split(tmp_path / "root", "test", n=5)
    make_idx_split(tmp_path / "env", "test", n=9)
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "env"))
    dataset = load_dataset("fashion-mnist", "test", root=tmp_path / "root")
    assert len(dataset) == 5 and dataset.source == str(tmp_path / "root")


def test_vitlib_data_used_without_root(tmp_path, monkeypatch):
    make_idx_split(tmp_path / "env", "test", n=9)
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "env"))
    dataset = load_dataset("fashion-mnist", "test")
    assert len(dataset) == 9 and dataset.source == str(tmp_path / "env")


def test_incomplete_root_falls_through_to_vitlib_data(tmp_path, monkeypatch):
    make_idx_split(tmp_path / "root", "train", n=5)  # the test split is missing there
    make_idx_split(tmp_path / "env", "test", n=9)
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist", "test", root=tmp_path / "root")) == 9


@pytest.mark.parametrize("name, subfolder", [
    ("fashion-mnist", "FashionMNIST/raw"),  # torchvision's layout
    ("fashion-mnist", "fashion-mnist"),     # a folder named after the dataset
    ("fashion-mnist", ""),                  # the files directly in the folder
    ("mnist", "MNIST/raw"),
    ("mnist", "mnist"),
    ("mnist", ""),
])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_layouts_are_found(tmp_path, name, subfolder, gz):
    images, labels = make_idx_split(tmp_path / subfolder, "train", n=6, gz=gz)
    dataset = load_dataset(name, "train", root=tmp_path)
    assert dataset.images.shape == (6, 1, 28, 28) and dataset.images.dtype == torch.uint8
    assert dataset.labels.dtype == torch.int64
    np.testing.assert_array_equal(dataset.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(dataset.labels.numpy(), labels)
    assert dataset.source == str(tmp_path / subfolder)  # tmp_path / "" is tmp_path
    assert dataset.name == name and dataset.split == "train" and dataset.num_classes == 10


@pytest.mark.parametrize("subfolder", ["cifar-10-batches-py", "cifar10", ""])
def test_cifar10_layouts_are_found(tmp_path, subfolder):
    make_cifar_folder(tmp_path / subfolder, per_batch=2)
    dataset = load_dataset("cifar10", "train", root=tmp_path)
    assert dataset.images.shape == (10, 3, 32, 32)
    assert dataset.classes == CIFAR_CLASSES and dataset.in_channels == 3 and dataset.image_size == 32
    assert dataset.mean == (0.4914, 0.4822, 0.4465)


def test_class_names_and_statistics(tmp_path):
    make_idx_split(tmp_path / "mnist", "test", n=3)
    make_idx_split(tmp_path / "fashion-mnist", "test", n=3)
    mnist = load_dataset("mnist", "test", root=tmp_path)
    fashion = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert mnist.classes == [str(d) for d in range(10)] and mnist.mean == (0.1307,) and mnist.std == (0.3081,)
    assert fashion.classes[:2] == ["T-shirt/top", "Trouser"] and fashion.classes[-1] == "Ankle boot"
    assert fashion.mean == (0.2860,) and fashion.std == (0.3530,)


def test_debian_system_path_is_used(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    make_idx_split(system, "test", n=4)
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", (system,))
    dataset = load_dataset("fashion-mnist", "test", download=False)
    assert len(dataset) == 4 and dataset.source == str(system)


def test_cache_folder_is_used(tmp_path):
    make_idx_split(tmp_path / "xdg-cache" / "vitlib" / "data" / "MNIST" / "raw", "test", n=4)
    assert len(load_dataset("mnist", "test", download=False)) == 4


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_FASHION_MNIST} missing)")
def test_real_debian_fashion_mnist_test_split(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", REAL_SYSTEM_DATA_DIRS)
    dataset = load_dataset("fashion-mnist", "test", download=False)
    assert len(dataset) == 10_000
    assert dataset.images.shape[1:] == (1, 28, 28) and dataset.num_classes == 10
    assert dataset.source == str(DEBIAN_FASHION_MNIST)
    assert dataset.labels.bincount().tolist() == [1000] * 10


# --------------------------------------------------------------------------------------
# Downloads (faked: no test uses the network)
# --------------------------------------------------------------------------------------

def test_failed_download_message_names_every_place_and_the_fix(tmp_path, monkeypatch):
    fake = fake_torchvision(monkeypatch, "CIFAR10")
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("VITLIB_DATA", str(env))
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "test", root=root)
    message = str(info.value)
    for place in (root, env, tmp_path / "xdg-cache" / "vitlib" / "data"):
        assert str(place) in message
    assert "VITLIB_DATA" in message and "root=" in message
    assert "no network" in message and "download" in message
    assert "fashion-mnist-small" in message and "internet" in message
    assert fake.calls == [{"root": str(root), "train": False, "download": True}]
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib traceback
    assert isinstance(info.value, FileNotFoundError)


def test_failed_fashion_mnist_download_suggests_the_debian_package(tmp_path, monkeypatch):
    system = tmp_path / "no-system-copy"
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", (system,))
    fake = fake_torchvision(monkeypatch, "FashionMNIST")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "train")
    message = str(info.value)
    assert str(system) in message and "VITLIB_DATA: not set" in message
    assert "apt-get install dataset-fashion-mnist" in message
    cache = tmp_path / "xdg-cache" / "vitlib" / "data"
    assert fake.calls == [{"root": str(cache), "train": True, "download": True}]


def test_download_goes_to_vitlib_data_when_no_root(tmp_path, monkeypatch):
    fake = fake_torchvision(monkeypatch, "MNIST")
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "train")
    assert fake.calls == [{"root": str(tmp_path / "env"), "train": True, "download": True}]


def test_download_false_never_calls_torchvision(tmp_path, monkeypatch):
    fake = fake_torchvision(monkeypatch, "FashionMNIST")
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_dataset("fashion-mnist", "test", root=tmp_path, download=False)
    assert fake.calls == []


def test_successful_download_is_read_with_our_loaders(tmp_path, monkeypatch):
    written = {}

    def write_like_torchvision(root: Path) -> None:  # torchvision extracts the .gz files
        written["test"] = make_idx_split(root / "FashionMNIST" / "raw", "test", n=8, gz=False)

    fake = fake_torchvision(monkeypatch, "FashionMNIST", write_like_torchvision)
    root = tmp_path / "root"
    dataset = load_dataset("fashion-mnist", "test", root=root)
    assert fake.calls == [{"root": str(root), "train": False, "download": True}]
    assert dataset.source == f"download:{root}"
    np.testing.assert_array_equal(dataset.images[:, 0].numpy(), written["test"][0])
    # The next call finds the downloaded copy and does not download again.
    assert load_dataset("fashion-mnist", "test", root=root).source == str(root / "FashionMNIST" / "raw")
    assert len(fake.calls) == 1


def test_successful_cifar10_download(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, "CIFAR10", lambda root: make_cifar_folder(root / "cifar-10-batches-py"))
    dataset = load_dataset("cifar10", "train")
    assert dataset.images.shape == (15, 3, 32, 32)
    assert dataset.source == f"download:{tmp_path / 'xdg-cache' / 'vitlib' / 'data'}"


def test_download_that_writes_nothing_is_reported(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, "MNIST", lambda root: None)
    with pytest.raises(DatasetNotFoundError, match="finished, but"):
        load_dataset("mnist", "test", root=tmp_path)


# --------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------

def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        load_dataset("fashion_mnist")
    message = str(info.value)
    assert all(name in message for name in DATASET_NAMES)
    assert "Did you mean 'fashion-mnist'?" in message


def test_bad_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'val'.*train.*test"):
        load_dataset("fashion-mnist-small", "val")


# --------------------------------------------------------------------------------------
# The bundled subset
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_bundled_fashion_mnist_small_loads_offline(split):
    dataset = load_dataset("fashion-mnist-small", split)
    per_class = BUNDLED_PER_CLASS[split]
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (10 * per_class, 1, 28, 28)
    assert dataset.labels.dtype == torch.int64
    assert dataset.labels.bincount(minlength=10).tolist() == [per_class] * 10
    assert dataset.source == "bundled" and dataset.classes[0] == "T-shirt/top"
    assert 0.2 < dataset.images.float().mean().item() / 255 < 0.4  # real clothes, not noise
    for class_name in ("MNIST", "FashionMNIST", "CIFAR10"):
        assert getattr(torchvision.datasets, class_name).calls == []


def test_bundled_folder_is_small_and_licensed():
    total = sum(os.path.getsize(os.path.join(folder, f))
                for folder, _, files in os.walk(BUNDLED_FOLDER) for f in files)
    assert total <= MAX_BUNDLED_BYTES, f"{BUNDLED_FOLDER} is {total} bytes"
    license_text = (BUNDLED_FOLDER / "LICENSE").read_text()
    assert "Zalando" in license_text and "Permission is hereby granted" in license_text
    assert "scripts/make_fashion_mnist_small.py" in (BUNDLED_FOLDER / "README.md").read_text()


# --------------------------------------------------------------------------------------
# ImageDataset and transforms
# --------------------------------------------------------------------------------------

def tiny_dataset(name: str = "fashion-mnist", n: int = 20, channels: int = 1, size: int = 28) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)  # (N, C, H, W)
    labels = torch.arange(n) % 10  # (N,)
    mean, std = data.MEAN_STD.get(name, ((0.5,) * channels, (0.25,) * channels))
    return ImageDataset(images, labels, [str(i) for i in range(10)], name=name, mean=mean, std=std)


def test_getitem_without_transform_gives_float_in_unit_range():
    dataset = tiny_dataset()
    image, label = dataset[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert isinstance(label, int) and label == 3
    assert torch.equal(image, dataset.images[3].float() / 255)
    assert len(dataset) == 20 and dataset.image_size == 28 and dataset.in_channels == 1
    assert dataset.num_classes == 10 and "20 images of 1x28x28" in repr(dataset)


def test_getitem_applies_the_transform():
    dataset = tiny_dataset()
    dataset.transform = eval_transform(dataset)
    image, _ = dataset[0]
    assert torch.allclose(image, (dataset.images[0].float() / 255 - 0.2860) / 0.3530, atol=1e-5)


def test_image_dataset_validates_its_inputs():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ImageDataset(images, torch.zeros(3, dtype=torch.int64), ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), torch.zeros(4, dtype=torch.int64), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        ImageDataset(images, torch.tensor([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="1 channel"):
        ImageDataset(images, torch.zeros(4, dtype=torch.int64), ["a", "b"], mean=(0.5, 0.5, 0.5), std=(1, 1, 1))


def test_eval_transform_normalises():
    dataset = load_dataset("fashion-mnist-small", "test")
    normalised = eval_transform(dataset)(dataset.images)  # (N, 1, 28, 28) float32
    assert normalised.dtype == torch.float32 and normalised.shape == dataset.images.shape
    assert abs(normalised.mean().item()) < 0.1
    assert abs(normalised.std().item() - 1) < 0.1


@pytest.mark.parametrize("name, channels, size", [("fashion-mnist", 1, 28), ("cifar10", 3, 32), ("mnist", 1, 28)])
def test_train_transform_keeps_shape_and_augments(name, channels, size):
    dataset = tiny_dataset(name, channels=channels, size=size)
    image = dataset.images[0]  # (C, H, W) uint8
    evaluated = eval_transform(dataset)(image)
    assert torch.equal(train_transform(dataset, "none")(image), evaluated)
    augment = train_transform(dataset, "basic")
    outputs = []
    for seed in range(10):
        torch.manual_seed(seed)
        outputs.append(augment(image))
    assert all(out.shape == (channels, size, size) and out.dtype == torch.float32 for out in outputs)
    assert any(not torch.equal(out, evaluated) for out in outputs)
    assert augment.flip == (name != "mnist")  # a mirrored digit is another digit
    assert augment.padding >= 2 and augment.erasing == 0
    assert train_transform(dataset, "strong").erasing > 0
    assert augment.rotate == augment.scale == 0


def test_digits_augmentation_shifts_turns_and_zooms_but_never_flips():
    digits = train_transform(tiny_dataset("mnist"), "digits")
    assert (digits.padding, digits.rotate, digits.scale, digits.flip, digits.erasing) == (3, 10.0, 0.1, False, 0.0)


def test_unknown_augment_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        train_transform(tiny_dataset(), "heavy")
    assert all(name in str(info.value) for name in AUGMENTATIONS)


# --- the real MNIST, where this machine has it --------------------------------------------------------

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_MD5 = {  # of the unzipped files: the canonical MNIST checksums (../shared/data/README.md)
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no real MNIST in {SHARED_MNIST} (our machines have it; a clone does not need it)")
def test_the_real_mnist_loads_with_its_counts_and_checksums():
    import hashlib

    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5(gzip.decompress((SHARED_MNIST / name).read_bytes())).hexdigest() == md5, name
    train, test = (load_dataset("mnist", split, root=SHARED_MNIST) for split in ("train", "test"))
    assert (len(train), len(test)) == (60_000, 10_000)
    assert tuple(train.images.shape[1:]) == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.classes == [str(d) for d in range(10)]
    assert (int(train.labels[0]), int(test.labels[0])) == (5, 7)  # the first digits of each split, as everyone sees them
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
