"""The student's side of grading: answer the judge's calls with data (`python -m vitlib.grade`).

The graded notebook runs in the student's kernel (nbval); after each exercise cell comes a
probe cell:

    import vitlib.probe
    vitlib.probe.answer("patchify", "patchify", globals())

`answer` connects to the judge (the socket in `$VITLIB_JUDGE_SOCKET`), says whether the cell
defined the name, and then only serves: the judge, in its own process, runs the check and the
hidden tests, and each time they touch the student's object (call it, read an attribute, run a
backward pass) it sends a request here; the result goes back as data (`vitlib.wire`). Objects
that are not data stay here and cross as references. Nothing sent back is a verdict: whatever
this module is made to say, the judge compares it with its own reference.

At the end the judge sends which checks passed (for `checks.mine_or_reference`) and vitlib's
reference of the exercise just graded, withheld until then (`vitlib.withheld`).
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import types
from typing import Any

import torch

from vitlib import wire

__all__ = ["ready", "answer"]

_MISSING = object()


def _connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["VITLIB_JUDGE_SOCKET"])
    return sock


_LIFELINE: list[socket.socket] = []


def ready() -> None:
    """Tell the judge that the setup cells have run: the first exercise's clock starts.

    The connection stays open for the kernel's life: when the kernel dies, the judge sees it close.
    """
    sock = _connect()
    wire.send(sock, {"ready": True, "error": _last_error()})
    _LIFELINE.append(sock)


def _last_error() -> str | None:
    """The exception the exercise cell raised (IPython keeps it in sys.last_value), and forget it."""
    error = getattr(sys, "last_value", None)
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    if error is None:
        return None
    return f"{type(error).__name__}: {str(error)[:2000]}"


def _imported(module: str, qualname: str) -> Any:
    """module.qualname, importing the module (the kernel's own vitlib, torch, ...)."""
    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


class _Server:
    """The objects the judge holds references to, and the requests it may make on them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.objects: dict[int, Any] = {}
        self.handles: dict[int, int] = {}  # id(object) -> handle
        self.graphs: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.copies: dict[int, Any] = {}  # this request's copies of the judge's objects (a model, an optimizer)
        self.inputs: list[torch.Tensor] = []  # this request's tensors, as the judge numbered them
        self.by_value, self.sent_back = False, []
        self.params: dict[int, int] = {}  # id(parameter) -> its number, for the judge's one copy of each
        self.kept: list[torch.Tensor] = []  # ... kept alive, so that no id is reused
        self.encoder = wire.Encoder(self.ref)

    # --- what comes in ---------------------------------------------------------------------------

    def resolve(self, node: dict) -> Any:
        t = node.get("t")
        if t == "ref":
            return self.objects[node["id"]]
        if t == "objref":
            return self.copies[node["k"]]
        if t == "global":
            return _imported(node["m"], node["q"])
        if t == "obj":  # a copy of the judge's object: built without running its __init__, then its state
            cls = _imported(node["m"], node["q"])
            obj = cls.__new__(cls)
            self.copies[node["k"]] = obj
            vars(obj).update(self.decoder.decode(node["state"]))
            return obj
        raise ValueError(f"unknown node {t!r}")

    # --- what goes out ---------------------------------------------------------------------------

    def ref(self, value: Any) -> dict:
        for k, copy in self.copies.items():
            if copy is value:
                return {"t": "objref", "k": k}
        if self.by_value and isinstance(value, torch.nn.Module) and type(value).__module__.startswith("torch.nn."):
            for n, sent in enumerate(self.sent_back):  # a torch layer the code put into the judge's object: copied back
                if sent is value:
                    return {"t": "newref", "n": n}
            self.sent_back.append(value)
            state = self.encoder.encode(dict(vars(value)))
            return {"t": "new", "n": len(self.sent_back) - 1, "m": type(value).__module__, "q": type(value).__qualname__, "state": state}
        if isinstance(value, (types.GeneratorType, map, filter, zip, enumerate, reversed)) or type(value).__name__.endswith("iterator"):
            return {"t": "list", "v": [self.encoder.encode(v) for v in value]}
        handle = self.handles.get(id(value))
        if handle is None:
            handle = len(self.objects) + 1
            self.objects[handle], self.handles[id(value)] = value, handle
        mro = [f"{c.__module__}.{c.__qualname__}" for c in type(value).__mro__]
        return {"t": "ref", "id": handle, "mro": mro}

    def alias(self, tensor: torch.Tensor) -> dict | None:
        for i, t in enumerate(self.inputs):
            if t is tensor:
                return {"t": "arg", "i": i}
        return None

    def tag(self, parameter: torch.Tensor) -> int:
        if id(parameter) not in self.params:
            self.params[id(parameter)] = len(self.kept)
            self.kept.append(parameter)
        return self.params[id(parameter)]

    def reply(self, value: Any, before: list[torch.Tensor] = ()) -> None:
        self.encoder = wire.Encoder(self.ref, self.alias, self.tag)
        header: dict[str, Any] = {"ok": self._encode_result(value)}
        header["mutated"] = {
            str(i): self._raw(now)
            for i, (now, then) in enumerate(zip(self.inputs, before))
            if now.shape != then.shape or not torch.equal(now.detach(), then)
        }
        header["flags"] = {str(i): t.requires_grad for i, (t, was) in enumerate(zip(self.inputs, self.flags)) if t.requires_grad != was}
        header["grads"] = {str(i): None if t.grad is None else self.encoder.encode(t.grad) for i, t in enumerate(self.inputs) if t.is_leaf and t.requires_grad}
        self.by_value, self.sent_back = True, []
        try:
            header["objs"] = {str(k): self.encoder.encode(dict(vars(copy))) for k, copy in self.copies.items()}
        finally:
            self.by_value = False
        header["rng"] = self._raw(torch.get_rng_state())
        wire.send(self.sock, header, self.encoder.blobs)

    def _raw(self, tensor: torch.Tensor) -> dict:
        """A tensor's values, even when it is one of the judge's own (a change made in place)."""
        return self.encoder.tensor(tensor.detach().clone())

    def _encode_result(self, value: Any) -> Any:
        """Tensors that are part of a graph keep it here: the judge asks for their backward pass."""
        if isinstance(value, torch.Tensor) and self.alias(value) is None and value.requires_grad and value.grad_fn is not None:
            handle = len(self.graphs) + 1
            leaves = [t for t in self.inputs if t.requires_grad]
            self.graphs[handle] = (value, leaves)
            node = self.encoder.tensor(value)
            node["graph"], node["inputs"] = handle, [i for i, t in enumerate(self.inputs) if t.requires_grad]
            return node
        if type(value) in (tuple, list):
            return {"t": type(value).__name__, "v": [self._encode_result(v) for v in value]}
        return self.encoder.encode(value)

    def error(self, error: BaseException) -> None:
        mro = [f"{c.__module__}.{c.__qualname__}" for c in type(error).__mro__]
        body: dict[str, Any] = {"type": type(error).__name__, "mro": mro, "message": str(error)[:4000]}
        encoder = wire.Encoder()
        try:
            body["attrs"] = encoder.encode({k: v for k, v in vars(error).items() if type(v) in (int, float, str, bool)})
        except (wire.BadMessage, TypeError):
            encoder = wire.Encoder()
        wire.send(self.sock, {"error": body}, encoder.blobs)

    # --- the loop ---------------------------------------------------------------------------------

    def serve(self) -> dict:
        """Answer requests until the judge says it is done; return that last message."""
        while True:
            header, payload = wire.receive(self.sock)
            if header.get("op") == "done":
                return header
            self.copies, self.inputs, self.flags = {}, [], []
            self.decoder = wire.Decoder(payload, header.get("blobs", []), self.resolve)
            try:
                self._handle(header, self.decoder)
            except Exception as error:  # the student's exception, or a bad request: the judge decides
                self.error(error)

    def _handle(self, header: dict, decoder: wire.Decoder) -> None:
        op = header.get("op")
        if op == "backward":
            tensor, leaves = self.graphs[header["graph"]]
            grad = decoder.decode(header["grad"])
            for t in leaves:
                t.grad = None
            torch.autograd.backward(tensor, grad, retain_graph=True)
            self.reply([None if t.grad is None else t.grad.detach() for t in leaves])
            return
        target = self.objects[header["target"]] if "target" in header else None
        if op == "getattr":
            self.reply(getattr(target, header["name"]))
        elif op == "setattr":
            setattr(target, header["name"], decoder.decode(header["value"]))
            self.reply(None)
        elif op in ("len", "bool", "repr", "iter"):
            self.reply({"len": len, "bool": bool, "repr": lambda v: repr(v)[:2000], "iter": list}[op](target))
        elif op == "getitem":
            self.reply(target[decoder.decode(header["key"])])
        elif op == "call":
            self._call(target, header, decoder)
        else:
            raise ValueError(f"unknown request {op!r}")

    def _call(self, target: Any, header: dict, decoder: wire.Decoder) -> None:
        torch.set_rng_state(decoder.decode(header["rng"]))
        args = decoder.decode(header["args"])
        kwargs = decoder.decode(header["kwargs"])
        self.inputs = list(decoder.tensors[1:])  # [0] is the rng state
        before = [t.detach().clone() for t in self.inputs]
        self.flags = [t.requires_grad for t in self.inputs]
        with torch.set_grad_enabled(bool(header.get("grad_enabled", True))):
            result = target(*args, **kwargs)
        self.reply(result, before)


def _reveal(sources: dict[str, str]) -> None:
    """Put vitlib's reference of the graded exercise back, everywhere its withheld stub was bound."""
    for module_name, source in sources.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        old = dict(vars(module))
        exec(compile(source, f"{module.__file__}", "exec"), vars(module))
        swapped = {id(old[k]): v for k, v in vars(module).items() if k in old and old[k] is not v}
        for other in list(sys.modules.values()):
            if other is not None and getattr(other, "__name__", "").startswith("vitlib"):
                for key, value in list(vars(other).items()):
                    if id(value) in swapped:
                        setattr(other, key, swapped[id(value)])


def answer(exercise: str, name: str | None, namespace: dict) -> None:
    """Serve the judge's requests on `namespace[name]`, the student's answer to `exercise`."""
    error = _last_error()
    value = namespace.get(name, _MISSING) if name else _MISSING
    with _connect() as sock:
        server = _Server(sock)
        hello = {"exercise": exercise, "defined": value is not _MISSING, "error": error}
        if value is not _MISSING:
            hello["target"] = server.ref(value)
        wire.send(sock, {"hello": hello})
        done = server.serve()
    try:  # for the fallbacks of the later exercises only: nothing here is judged
        import vitlib.checks

        vitlib.checks._PASSED.update(n for n in done.get("passed", []) if isinstance(n, str))
        _reveal({k: v for k, v in done.get("reveal", {}).items() if isinstance(k, str) and isinstance(v, str)})
    except Exception:  # a kernel whose modules the student's code replaced: its later exercises may fall short
        pass
