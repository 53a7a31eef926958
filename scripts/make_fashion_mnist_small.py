"""Regenerate vitlib/datasets_bundled/fashion-mnist-small from the full Fashion-MNIST files.

The subset is balanced and deterministic: the first TRAIN_PER_CLASS images of each
class in the training file and the first TEST_PER_CLASS images of each class in the
t10k (test) file, kept in the order they have in the original files. They are written
as gzipped IDX files with the standard names (gzip level 9, mtime 0, so the bytes are
the same on every run with the same zlib), together with LICENSE and README.md.

Usage, from the repository root (the default source is the Debian package
``dataset-fashion-mnist``, installed with ``sudo apt-get install dataset-fashion-mnist``):

    python scripts/make_fashion_mnist_small.py
    python scripts/make_fashion_mnist_small.py --source /path/to/fashion-mnist --out /tmp/small
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing vitlib
from vitlib.data import CLASS_NAMES, IDX_FILES, read_idx  # noqa: E402

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO_ROOT / "vitlib" / "datasets_bundled" / "fashion-mnist-small"
TRAIN_PER_CLASS = 800
TEST_PER_CLASS = 200
MAX_BYTES = 5_000_000

LICENSE_TEXT = """\
The files in this folder are a subset of Fashion-MNIST
(https://github.com/zalandoresearch/fashion-mnist), distributed under the MIT licence:

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a
copy of this software and associated documentation files (the "Software"),
to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense,
and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included
in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

README_TEMPLATE = """\
# fashion-mnist-small

A small, balanced subset of **Fashion-MNIST** that ships with vitlib, so that every
notebook and test runs offline: `vitlib.data.load_dataset("fashion-mnist-small")`.

Source: Han Xiao, Kashif Rasul, Roland Vollgraf (2017), *Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms*, arXiv:1708.07747,
https://github.com/zalandoresearch/fashion-mnist. MIT licence, see `LICENSE`.

| split | images | per class | file |
|-------|-------:|----------:|------|
| train | {n_train} | {train_per_class} | `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz` |
| test  | {n_test} | {test_per_class} | `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz` |

Images are 28x28 grey levels (uint8), 10 classes: {classes}.

How it was made: the first {train_per_class} images of each class in the original
training file and the first {test_per_class} images of each class in the original test
(t10k) file, kept in their original order, written as gzipped IDX files (the original
format; gzip level 9, mtime 0). The source files were those of the Debian package
`dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`). Regenerate with

    python scripts/make_fashion_mnist_small.py --train-per-class {train_per_class} --test-per-class {test_per_class}

SHA-256 of the files written:

{checksums}
"""


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file: 00 00 08 ndim, big-endian sizes, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes(), compresslevel=9, mtime=0))


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, in file order."""
    chosen = []
    for label in range(len(CLASS_NAMES["fashion-mnist"])):
        indices = np.flatnonzero(labels == label)[:per_class]
        if len(indices) < per_class:
            raise SystemExit(f"class {label} has only {len(indices)} examples, {per_class} wanted")
        chosen.append(indices)
    return np.sort(np.concatenate(chosen))


def find_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{folder / name}(.gz) not found; install it with "
                     f"'sudo apt-get install dataset-fashion-mnist' or pass --source")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help=f"folder with the full Fashion-MNIST IDX files (default {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    per_class = {"train": args.train_per_class, "test": args.test_per_class}
    counts = {}
    written = []
    for split, (image_name, label_name) in IDX_FILES.items():
        images = read_idx(find_file(args.source, image_name))  # (N, 28, 28) uint8
        labels = read_idx(find_file(args.source, label_name))  # (N,) uint8
        keep = first_per_class(labels, per_class[split])
        write_idx_gz(args.out / f"{image_name}.gz", images[keep])  # (n, 28, 28)
        write_idx_gz(args.out / f"{label_name}.gz", labels[keep])  # (n,)
        written += [f"{image_name}.gz", f"{label_name}.gz"]
        counts[split] = len(keep)

    checksums = "\n".join(
        f"    {hashlib.sha256((args.out / name).read_bytes()).hexdigest()}  {name}" for name in written)
    (args.out / "LICENSE").write_text(LICENSE_TEXT)
    (args.out / "README.md").write_text(README_TEMPLATE.format(
        n_train=counts["train"], n_test=counts["test"],
        train_per_class=per_class["train"], test_per_class=per_class["test"],
        classes=", ".join(CLASS_NAMES["fashion-mnist"]), checksums=checksums))

    total = sum(path.stat().st_size for path in args.out.iterdir() if path.is_file())
    print(f"wrote {counts['train']} train and {counts['test']} test images to {args.out} ({total} bytes)")
    if total > MAX_BYTES:
        raise SystemExit(f"{args.out} is {total} bytes, more than the {MAX_BYTES} allowed; "
                         f"lower --train-per-class")


if __name__ == "__main__":
    main()
