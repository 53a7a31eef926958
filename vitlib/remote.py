"""The judge's side of grading: the student's objects, held at arm's length in another process.

`Link` is one connection to a probe in the student's kernel (`vitlib.probe`). `Remote` stands in
for an object that lives there: calling it, reading an attribute, iterating, `len`, indexing
and `isinstance` each become a request, and what comes back is data (`vitlib.wire`): plain
tensors, numbers, strings, containers, or more references. So vitlib's checks and the hidden
tests run unchanged in the judge on `Remote(patchify)` as they do on `patchify` in the notebook,
and no line of the student's code runs here.

Three things make a remote call behave like a local one:
- tensors the student changes in place are copied back into the judge's arguments;
- a result that is part of an autograd graph comes back wrapped in `_RemoteBackward`, whose
  backward pass asks the kernel for the gradients (the student's parameters get theirs there);
- the global CPU generator travels with each call, so `torch.manual_seed` before a call means
  the same thing as in the notebook.

A request that gets no answer in time raises `KernelLost` (a BaseException: the checks'
`except Exception` does not swallow it); one that meets vitlib's withheld reference raises
`UsesReference`.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import socket
import types
import sys
from typing import Any

import torch

from vitlib import wire

__all__ = ["KernelLost", "UsesReference", "JudgeCannotSend", "Link", "Remote"]


class KernelLost(BaseException):
    """The student's kernel did not answer: `reason` is "timeout" or "died"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UsesReference(BaseException):
    """The student's code called vitlib's reference of the exercise being graded."""


class RemoteError(Exception):
    """An exception of the student's code whose class is not a built-in one."""


_CLASSES: dict[str, type] = {}
MAX_STUDENT_TEXT = 300  # characters of a student's exception message that the judge keeps


def _clip(text: str) -> str:
    return text if len(text) <= MAX_STUDENT_TEXT else text[: MAX_STUDENT_TEXT - 1] + "…"


def _exception_class(name: str, mro: list[str]) -> type[BaseException]:
    """The judge's stand-in for an exception class of the kernel: vitlib's or a built-in one, or one named like it."""
    for qualified in mro:
        module, _, attr = qualified.rpartition(".")
        owner = builtins if module == "builtins" else sys.modules.get(module) if module.split(".")[0] == "vitlib" else None
        base = getattr(owner, attr, None) if owner is not None and "." not in attr else None
        if isinstance(base, type) and issubclass(base, Exception):
            break
    else:
        base = RemoteError
    if base.__name__ == name:
        return base
    key = f"exc:{name}:{base.__module__}.{base.__name__}"
    if key not in _CLASSES:
        _CLASSES[key] = type(name if name.isidentifier() else "StudentError", (base,), {"__module__": "student"})
    return _CLASSES[key]


def _exception(name: str, mro: list[str], message: str, attrs: dict) -> BaseException:
    """The exception, built without running its __init__ (no code of the kernel's), with its data attributes."""
    cls = _exception_class(name, mro)
    error = cls.__new__(cls)
    error.args = (message,)
    for key, value in attrs.items():
        if isinstance(key, str) and key.isidentifier() and type(value) in (int, float, str, bool):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(error, key, value)
    return error


def _class_of(mro: list[str]) -> type:
    """For isinstance: the first class of the object's MRO that is torch's or a built-in one, under the object's name."""
    trusted = []
    for qualified in mro:
        module_name, _, attr = qualified.rpartition(".")
        if module_name == "builtins" or module_name.split(".")[0] == "torch":
            module = sys.modules.get(module_name)
            value = module
            for part in attr.split("."):
                value = getattr(value, part, None)
            if isinstance(value, type):
                trusted.append(value)
    trusted = [c for c in trusted if c is not object][:1]
    name = mro[0].rpartition(".")[2] if mro else "object"
    if trusted and trusted[0].__name__ == name:
        return trusted[0]
    key = f"cls:{name}:{','.join(c.__qualname__ for c in trusted)}"
    if key not in _CLASSES:
        try:
            _CLASSES[key] = type(name if name.isidentifier() else "StudentObject", tuple(trusted), {"__module__": "student"})
        except TypeError:  # a base that cannot be subclassed
            _CLASSES[key] = type(name if name.isidentifier() else "StudentObject", (), {"__module__": "student"})
    return _CLASSES[key]


def _trusted(module: str) -> bool:
    """Modules whose classes and functions the kernel may rebuild a copy of: torch's, vitlib's, the standard ones."""
    return module.split(".")[0] in ("torch", "vitlib", "builtins", "math", "collections", "functools")


def _merge(obj: Any, state: dict) -> None:
    """Give the judge's `obj` the state its copy has after the call (dicts of parameters and submodules key by key)."""
    mine = vars(obj)
    for key, new in state.items():
        old = mine.get(key)
        if new is old:
            continue
        if type(old) is dict and type(new) is dict and key.startswith("_"):
            for name in [n for n in old if n not in new]:
                del old[name]
            old.update({n: v for n, v in new.items() if old.get(n) is not v})
        else:
            mine[key] = new


class JudgeCannotSend(BaseException):
    """A check handed the student's code an object the protocol cannot copy: a fault of the grader, not of the student."""


class _RemoteBackward(torch.autograd.Function):
    """A tensor computed in the kernel; its backward pass runs there too."""

    @staticmethod
    def forward(ctx, value, link, graph, dummy, *inputs):
        ctx.link, ctx.graph, ctx.count = link, graph, len(inputs)
        ctx.shapes = [(t.shape, t.dtype) for t in inputs]
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        grads = ctx.link.request("backward", graph=ctx.graph, grad=grad.detach())
        out = []
        for (shape, dtype), g in zip(ctx.shapes, list(grads)[: ctx.count]):
            ok = isinstance(g, torch.Tensor) and g.shape == shape
            out.append(g.to(dtype) if ok else None)
        return (None, None, None, None, *out)


class Link:
    """One probe connection: requests out, data in, with a time limit on each answer."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._proxies: dict[int, Remote] = {}
        self._dummy = torch.zeros((), requires_grad=True)
        self._sent: list[Any] = []  # this request's objects sent by value
        self._received: list[Any] = []  # torch layers of the answer, copied
        self._params: dict[int, torch.nn.Parameter] = {}  # the kernel's parameters: one object each, kept up to date

    def remote(self, node: dict) -> Remote:
        handle = node.get("id")
        if type(handle) is not int:
            raise wire.BadMessage("a reference without an id")
        if handle not in self._proxies:
            mro = [m for m in node.get("mro", []) if type(m) is str][:50]
            cls = _class_of(mro)
            proxy_type = _CLASSES.setdefault(f"proxy:{cls.__name__}", type(cls.__name__, (Remote,), {"__slots__": ()}))
            proxy = object.__new__(proxy_type)
            object.__setattr__(proxy, "_link", self)
            object.__setattr__(proxy, "_id", handle)
            object.__setattr__(proxy, "_cls", cls)
            self._proxies[handle] = proxy
        return self._proxies[handle]

    def _out(self, value: Any, encoder: wire.Encoder) -> dict:
        """What the judge sends for an object that is not data: a reference back, or a copy of its own object."""
        if isinstance(value, Remote) and object.__getattribute__(value, "_link") is self:
            return {"t": "ref", "id": object.__getattribute__(value, "_id")}
        for k, sent in enumerate(self._sent):
            if sent is value:
                return {"t": "objref", "k": k}
        kind = type(value)
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)) and _trusted(value.__module__) and "<" not in value.__qualname__:
            return {"t": "global", "m": value.__module__, "q": value.__qualname__}
        if hasattr(value, "__dict__") and (_trusted(kind.__module__) or dataclasses.is_dataclass(value)) and "<" not in kind.__qualname__:
            self._sent.append(value)  # a model, an optimizer, a config...: copied there, its new state copied back here
            node = {"t": "obj", "k": len(self._sent) - 1, "m": kind.__module__, "q": kind.__qualname__}
            node["state"] = encoder.encode(dict(vars(value)))
            return node
        raise JudgeCannotSend(f"the judge cannot send a {kind.__name__} to the student's kernel")

    def _in(self, node: dict, inputs: list[torch.Tensor], decoder: wire.Decoder) -> Any:
        """A reference in the kernel's answer: to its object, to a tensor the judge sent, or to a copied object."""
        t = node.get("t")
        if t == "ref":
            return self.remote(node)
        if t == "arg" and type(node.get("i")) is int and 0 <= node["i"] < len(inputs):
            return inputs[node["i"]]
        if t == "objref" and type(node.get("k")) is int and 0 <= node["k"] < len(self._sent):
            return self._sent[node["k"]]
        if t == "newref" and type(node.get("n")) is int and 0 <= node["n"] < len(self._received):
            return self._received[node["n"]]
        if t == "new":
            return self._torch_layer(node, decoder)
        raise wire.BadMessage(f"an unknown node {t!r}")

    def _torch_layer(self, node: dict, decoder: wire.Decoder) -> torch.nn.Module:
        """A layer of torch's (nn.Linear, ...) that the student's code put into one of the judge's objects, rebuilt here."""
        module = sys.modules.get(str(node.get("m")))
        cls = getattr(module, str(node.get("q")), None) if str(node.get("m")).startswith("torch.nn.") else None
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise wire.BadMessage("a copied object that is not one of torch's layers")
        layer = cls.__new__(cls)
        self._received.append(layer)
        state = decoder.decode(node.get("state"))
        if type(state) is not dict or not all(type(k) is str for k in state):
            raise wire.BadMessage("a layer's state that is not a dict")
        vars(layer).update(state)
        return layer

    def request(self, op: str, target: Remote | None = None, **fields: Any) -> Any:
        self._sent = []
        encoder = wire.Encoder()
        encoder._ref = lambda value: self._out(value, encoder)
        header: dict[str, Any] = {"op": op}
        if target is not None:
            header["target"] = object.__getattribute__(target, "_id")
        if op == "call":
            header["rng"] = encoder.tensor(torch.get_rng_state())
            header["grad_enabled"] = torch.is_grad_enabled()
        for key, value in fields.items():
            header[key] = value if key == "name" else encoder.encode(value)
        try:
            self.sock.settimeout(self.timeout)
            wire.send(self.sock, header, encoder.blobs)
            reply, payload = wire.receive(self.sock)
        except (socket.timeout, TimeoutError):
            raise KernelLost("timeout", f"no answer within {self.timeout:g} s") from None
        except (ConnectionError, OSError) as error:
            raise KernelLost("died", f"the kernel went away ({type(error).__name__})") from None
        except wire.BadMessage as error:
            raise KernelLost("died", f"the kernel sent a malformed answer: {error}") from None
        return self._answer(op, reply, payload, encoder)

    def _answer(self, op: str, reply: dict, payload: bytes, sent: wire.Encoder) -> Any:
        if "error" in reply:
            error = reply["error"] if type(reply["error"]) is dict else {}
            name, message = str(error.get("type", "Error"))[:100], _clip(str(error.get("message", "")))
            mro = [m for m in error.get("mro", []) if type(m) is str]
            if "vitlib.withheld.ReferenceWithheld" in mro:
                raise UsesReference(message)
            try:
                attrs = wire.Decoder(payload, reply.get("blobs", [])).decode(error.get("attrs"))
            except (wire.BadMessage, TypeError, ValueError, RecursionError):
                attrs = None
            raise _exception(name, mro, message, attrs if type(attrs) is dict else {})
        inputs = sent.tensors[1:] if op == "call" else sent.tensors
        self._received = []
        decoder = wire.Decoder(payload, reply.get("blobs", []), lambda node: self._in(node, inputs, decoder), self._intern)
        try:
            value = self._result(reply.get("ok"), decoder, inputs)
            rng = decoder.decode(reply["rng"]) if op == "call" and "rng" in reply else None
            mutated = {int(k): decoder.decode(v) for k, v in (reply.get("mutated") or {}).items()}
            grads = {int(k): decoder.decode(v) for k, v in (reply.get("grads") or {}).items()}
            flags = {int(k): v for k, v in (reply.get("flags") or {}).items() if type(v) is bool}
            states = {int(k): decoder.decode(v) for k, v in (reply.get("objs") or {}).items()}
        except (wire.BadMessage, KeyError, TypeError, ValueError, RecursionError) as error:
            raise KernelLost("died", f"the kernel sent a malformed answer: {type(error).__name__}") from None
        if isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape:
            torch.set_rng_state(rng)
        self._write_back(inputs, mutated, grads, states, flags)
        return value

    def _intern(self, node: dict, value: torch.Tensor) -> torch.Tensor:
        """The judge's one object for the kernel's parameter `pid`, given its latest value and gradient."""
        known = self._params.get(node["pid"])
        if known is None or not isinstance(value, torch.nn.Parameter):
            if isinstance(value, torch.nn.Parameter):
                self._params[node["pid"]] = value
            return value
        with torch.no_grad():
            known.data = value.data
        known.grad = value.grad
        known.requires_grad_(value.requires_grad)
        return known

    def _write_back(self, inputs: list[torch.Tensor], mutated: dict, grads: dict, states: dict, flags: dict) -> None:
        """What the call changed there, changed here too: tensors in place, gradients, frozen or not, the copied objects' state."""
        for index, flag in flags.items():
            if 0 <= index < len(inputs) and inputs[index].is_leaf and (inputs[index].is_floating_point() or not flag):
                inputs[index].requires_grad_(flag)
        for index, new in mutated.items():
            if 0 <= index < len(inputs) and isinstance(new, torch.Tensor) and new.shape == inputs[index].shape:
                with torch.no_grad():
                    inputs[index].copy_(new.to(inputs[index].dtype))
        for index, grad in grads.items():
            if 0 <= index < len(inputs) and inputs[index].is_leaf and (grad is None or isinstance(grad, torch.Tensor) and grad.shape == inputs[index].shape):
                inputs[index].grad = grad
        for k, state in states.items():
            if 0 <= k < len(self._sent) and type(state) is dict:
                _merge(self._sent[k], state)

    def _result(self, node: Any, decoder: wire.Decoder, inputs: list[torch.Tensor]) -> Any:
        if type(node) is dict and node.get("t") == "tensor" and "graph" in node:
            value = decoder.tensor(node).detach()
            wanted = [inputs[i] for i in node.get("inputs", []) if type(i) is int and 0 <= i < len(inputs)]
            if not torch.is_grad_enabled() or not (value.dtype.is_floating_point or value.dtype.is_complex):
                return value
            return _RemoteBackward.apply(value, self, int(node["graph"]), self._dummy, *wanted)
        if type(node) is dict and node.get("t") in ("tuple", "list") and type(node.get("v")) is list:
            items = [self._result(v, decoder, inputs) for v in node["v"]]
            return tuple(items) if node["t"] == "tuple" else items
        return decoder.decode(node)


class Remote:
    """An object of the student's kernel. Every use is a request over its `Link`."""

    __slots__ = ("_link", "_id", "_cls", "__weakref__")

    @property
    def __class__(self):  # isinstance(remote, nn.Module) answers as for the object itself
        return object.__getattribute__(self, "_cls")

    def _ask(self, op: str, **fields: Any) -> Any:
        return object.__getattribute__(self, "_link").request(op, self, **fields)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._ask("setattr", name=name, value=value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ask("call", args=list(args), kwargs=kwargs)

    def __len__(self) -> int:
        return int(self._ask("len"))

    def __bool__(self) -> bool:
        return bool(self._ask("bool"))

    def __iter__(self):
        return iter(self._ask("iter"))

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key=key)

    def __repr__(self) -> str:
        return str(self._ask("repr"))

    __str__ = __repr__
