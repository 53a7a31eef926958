"""Small files in the real formats of MNIST / Fashion-MNIST (IDX) and CIFAR-10 (pickled batches).

Shared by the data-loading tests and the recipe tests: the real data sets cannot be
downloaded here, so their loading paths are tested on files like these.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """Write a uint8 array as an IDX file: 00 00 08 ndim, big-endian int32 sizes, data."""
    content = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if gz else content)


def make_idx_split(folder: Path, split: str, n: int, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the two IDX files of a split (n random 28x28 images) into ``folder``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)  # (n, 28, 28)
    labels = (np.arange(n) % 10).astype(np.uint8)  # (n,)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar_folder(folder: Path, per_batch: int = 3) -> None:
    """Write a tiny cifar-10-batches-py: 5 train batches, a test batch and batches.meta.

    All pixels are 0 except one: in data_batch_2, image 1 has value 200 at blue
    channel, row 5, column 7. Labels count up 0, 1, 2, ... across the batches.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        rows = np.zeros((per_batch, 3072), dtype=np.uint8)  # (n, 3072): 1024 R, 1024 G, 1024 B
        if name == "data_batch_2":
            rows[1, 2 * 1024 + 5 * 32 + 7] = 200
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": rows, b"labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}, f)
