"""What crosses between a student's kernel and the grader's judge: data, never objects.

A message is a JSON header and a payload of raw bytes (tensor and array contents), framed by
their lengths. Reading one never unpickles and never imports: JSON gives str, int, float, bool
and None; the payload becomes plain `torch.Tensor`s (exact type), numpy arrays of numeric
dtypes, bytes and PIL images. Containers are rebuilt as list, tuple, dict and set; any other
object stays where it lives and crosses as a reference (`{"t": "ref", "id": ...}`), which the
side that owns it resolves. See `vitlib.probe` (the kernel's side) and `vitlib.remote` (the
judge's side).

    header = {"op": "call", "args": [...]}       # JSON, nodes like {"t": "tensor", "i": 0}
    payload = tensor 0's bytes, tensor 1's, ...  # offsets in header["blobs"]
"""

from __future__ import annotations

import collections
import json
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["MAX_MESSAGE_BYTES", "BadMessage", "Encoder", "Decoder", "send", "receive"]

MAX_MESSAGE_BYTES = 512 * 2**20  # a check's inputs and outputs are far smaller
MAX_DEPTH = 40
_FRAME = struct.Struct("!QQ")  # header length, payload length
_DTYPES = {str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}
_NUMPY_KINDS = set("biuf")  # bool, int, unsigned, float: no objects, no strings, no structs
_PIL_MODES = {"1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "I;16"}


class BadMessage(ValueError):
    """A message that is not what the protocol allows (too large, malformed, an unknown node)."""


class Encoder:
    """Turns values into JSON nodes and payload blobs; `ref(obj)` handles what is not data (or refuses)."""

    def __init__(
        self,
        ref: Callable[[Any], dict] | None = None,
        alias: Callable[[torch.Tensor], dict | None] | None = None,
        tag: Callable[[torch.Tensor], int | None] | None = None,
    ) -> None:
        self.blobs: list[bytes] = []
        self.tensors: list[torch.Tensor] = []  # in the order of their nodes, for the caller's bookkeeping
        self._ref = ref
        self._alias = alias  # a tensor the other side already holds: sent as a reference to it
        self._tag = tag  # a stable number for a parameter, so that the other side keeps one object per parameter
        self._seen: dict[int, int] = {}  # id(tensor) -> its index: the same tensor twice stays one

    def _blob(self, data: bytes) -> int:
        self.blobs.append(data)
        return len(self.blobs) - 1

    def tensor(self, value: torch.Tensor) -> dict:
        if self._alias is not None and (node := self._alias(value)) is not None:
            return node
        if id(value) in self._seen:
            return {"t": "same", "i": self._seen[id(value)]}
        data = value.detach().cpu().contiguous()
        if data.is_quantized or data.is_sparse or data.is_complex() or str(data.dtype).removeprefix("torch.") not in _DTYPES:
            raise BadMessage(f"a tensor of dtype {data.dtype} and layout {data.layout} cannot be sent")
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        node = {"t": "tensor", "b": self._blob(raw), "dtype": str(data.dtype).removeprefix("torch."),
                "shape": list(data.shape), "grad": bool(value.requires_grad)}  # fmt: skip
        if isinstance(value, torch.nn.Parameter):
            node["param"] = True
            if self._tag is not None:
                node["pid"] = self._tag(value)
        if value.is_leaf and value.grad is not None:
            node["g"] = self.tensor(value.grad)
        self._seen[id(value)] = len(self.tensors)
        node["i"] = len(self.tensors)
        self.tensors.append(value)
        return node

    def encode(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise BadMessage("a value nested too deeply")
        kind = type(value)
        if value is None or kind in (bool, int, float, str):
            return value if kind is not float or value == value and abs(value) != float("inf") else {"t": "float", "v": repr(value)}
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if kind in (list, tuple, set, frozenset):
            return {"t": kind.__name__, "v": [self.encode(v, depth + 1) for v in value]}
        if kind is collections.defaultdict and value.default_factory in (dict, list, int, float):
            return {"t": "defaultdict", "f": value.default_factory.__name__, "k": [self.encode(k, depth + 1) for k in value],
                    "v": [self.encode(v, depth + 1) for v in value.values()]}  # fmt: skip
        if kind is dict or (isinstance(value, dict) and type(value).__module__ == "collections"):
            return {"t": "dict", "k": [self.encode(k, depth + 1) for k in value], "v": [self.encode(v, depth + 1) for v in value.values()]}
        if kind in (bytes, bytearray):
            return {"t": "bytes", "b": self._blob(bytes(value))}
        if isinstance(value, torch.dtype):
            return {"t": "dtype", "v": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"t": "device", "v": str(value)}
        if kind is torch.Size:
            return {"t": "size", "v": list(value)}
        if kind is slice:
            return {"t": "slice", "v": [self.encode(v, depth + 1) for v in (value.start, value.stop, value.step)]}
        if value is Ellipsis:
            return {"t": "ellipsis"}
        if kind.__module__ == "torch.return_types":
            return {"t": "structseq", "name": kind.__name__, "v": [self.encode(v, depth + 1) for v in value]}
        numpy = sys.modules.get("numpy")
        if numpy is not None and kind is numpy.ndarray and value.dtype.kind in _NUMPY_KINDS:
            return {"t": "ndarray", "b": self._blob(numpy.ascontiguousarray(value).tobytes()), "dtype": value.dtype.str, "shape": list(value.shape)}
        if numpy is not None and isinstance(value, numpy.generic) and value.dtype.kind in _NUMPY_KINDS:
            return {"t": "npscalar", "dtype": value.dtype.str, "v": value.item()}
        image = sys.modules.get("PIL.Image")
        if image is not None and isinstance(value, image.Image) and value.mode in _PIL_MODES:
            return {"t": "pil", "mode": value.mode, "size": list(value.size), "b": self._blob(value.tobytes())}
        if self._ref is None:
            raise BadMessage(f"a {kind.__name__} is not data and cannot be sent")
        return self._ref(value)


class Decoder:
    """Rebuilds values from nodes; `ref(node)` resolves references, `tensor(t, node)` may wrap tensors."""

    def __init__(
        self,
        payload: bytes,
        blobs: list[int],
        ref: Callable[[dict], Any] | None = None,
        intern: Callable[[dict, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._payload = payload
        self._offsets = [0]
        for size in blobs:
            if not isinstance(size, int) or size < 0:
                raise BadMessage("bad blob sizes")
            self._offsets.append(self._offsets[-1] + size)
        if self._offsets[-1] != len(payload):
            raise BadMessage("the payload does not match its blob sizes")
        self._ref = ref
        self._intern = intern  # the one object that stands for a tagged parameter
        self.tensors: list[torch.Tensor] = []

    def _bytes(self, index: Any) -> bytes:
        if not isinstance(index, int) or not 0 <= index < len(self._offsets) - 1:
            raise BadMessage("a blob index out of range")
        return self._payload[self._offsets[index] : self._offsets[index + 1]]

    def tensor(self, node: dict) -> torch.Tensor:
        dtype = _DTYPES.get(node.get("dtype"))
        shape = node.get("shape")
        if dtype is None or not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise BadMessage("a tensor node without a valid dtype and shape")
        raw = self._bytes(node.get("b"))
        count = 1
        for s in shape:
            count *= s
        if len(raw) != count * torch.empty((), dtype=dtype).element_size():
            raise BadMessage("a tensor whose bytes do not match its shape")
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype) if raw else torch.empty(0, dtype=dtype)
        value = flat.reshape(shape)
        if node.get("param"):
            value = torch.nn.Parameter(value, requires_grad=bool(node.get("grad")))
        elif node.get("grad") is True and (dtype.is_floating_point or dtype.is_complex):
            value.requires_grad_(True)
        if "g" in node:
            grad = self.decode(node["g"])
            if isinstance(grad, torch.Tensor) and grad.shape == value.shape and grad.dtype == value.dtype:
                value.grad = grad
        if self._intern is not None and type(node.get("pid")) is int:
            value = self._intern(node, value)
        self.tensors.append(value)
        return value

    def decode(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise BadMessage("a value nested too deeply")
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is not dict or type(node.get("t")) is not str:
            raise BadMessage("an unknown node")
        t, v = node["t"], node.get("v")
        items = (lambda: [self.decode(x, depth + 1) for x in v]) if type(v) is list else None
        if t == "tensor":
            return self.tensor(node)
        if t == "same":
            index = node.get("i")
            if not isinstance(index, int) or not 0 <= index < len(self.tensors):
                raise BadMessage("a tensor reference out of range")
            return self.tensors[index]
        if t in ("list", "tuple", "set", "frozenset") and items:
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](items())
        if t in ("dict", "defaultdict") and type(node.get("k")) is list and type(v) is list and len(node["k"]) == len(v):
            pairs = zip([self.decode(k, depth + 1) for k in node["k"]], items())
            if t == "defaultdict" and node.get("f") in ("dict", "list", "int", "float"):
                return collections.defaultdict({"dict": dict, "list": list, "int": int, "float": float}[node["f"]], pairs)
            return dict(pairs)
        if t == "float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if t == "bytes":
            return bytes(self._bytes(node.get("b")))
        if t == "dtype" and v in _DTYPES:
            return _DTYPES[v]
        if t == "device" and type(v) is str and len(v) < 40:
            return torch.device(v)
        if t == "size" and items:
            return torch.Size([int(s) for s in v if type(s) is int])
        if t == "slice" and items and len(v) == 3:
            return slice(*items())
        if t == "ellipsis":
            return Ellipsis
        if t == "structseq" and items and hasattr(torch.return_types, str(node.get("name"))):
            return getattr(torch.return_types, node["name"])(items())
        if t in ("ndarray", "npscalar"):
            return self._numpy(node)
        if t == "pil" and node.get("mode") in _PIL_MODES and type(node.get("size")) is list:
            from PIL import Image

            return Image.frombytes(node["mode"], tuple(int(s) for s in node["size"]), self._bytes(node.get("b")))
        if self._ref is not None:  # references: the side that decodes knows what they stand for
            return self._ref(node)
        raise BadMessage(f"an unknown node {t!r}")

    def _numpy(self, node: dict) -> Any:
        import numpy

        dtype = numpy.dtype(str(node.get("dtype")))
        if dtype.kind not in _NUMPY_KINDS:
            raise BadMessage("a numpy dtype that is not numeric")
        if node["t"] == "npscalar":
            return dtype.type(node.get("v"))
        shape = tuple(int(s) for s in node.get("shape", []))
        return numpy.frombuffer(self._bytes(node.get("b")), dtype=dtype).reshape(shape).copy()


def send(sock: socket.socket, header: dict, blobs: list[bytes] = ()) -> None:
    """Write one message: the lengths, the JSON header (with the blob sizes), the payload."""
    body = json.dumps({**header, "blobs": [len(b) for b in blobs]}, separators=(",", ":")).encode()
    sock.sendall(_FRAME.pack(len(body), sum(len(b) for b in blobs)) + body + b"".join(blobs))


def _read(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 2**20))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, limit: int = MAX_MESSAGE_BYTES) -> tuple[dict, bytes]:
    """Read one message: (header, payload). BadMessage if it is too large or not a JSON object."""
    head, size = _FRAME.unpack(_read(sock, _FRAME.size))
    if head + size > limit:
        raise BadMessage(f"a message of {(head + size) / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB limit")
    try:
        header = json.loads(_read(sock, head))
    except (ValueError, RecursionError) as error:
        raise BadMessage(f"a header that is not JSON ({type(error).__name__})") from None
    if type(header) is not dict:
        raise BadMessage("a header that is not a JSON object")
    return header, _read(sock, size)
