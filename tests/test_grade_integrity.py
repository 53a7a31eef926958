"""`vitlib.grade` against students who want points they did not earn (weeks 01, 02 and 03).

Each student below is a week's solution with one exercise replaced by an attack, and the grade
every exercise must get is written next to it. The attacks cover every class of the trust
model (README, "Grades you can trust"):

- handing in vitlib's answer: by alias, by import path (importlib, __import__, sys.modules,
  reload, checks.mine_or_reference), by subclass, by exec of its file;
- wrong code that tampers with the judgement: monkeypatching torch, builtins, IPython and the
  import machinery; a child process that outlives the kernel and rewrites files; exiting
  after printing a fake success line;
- leaking the hidden tests into a message;
- copying vitlib's source verbatim (passes, and is flagged).

One `grade_class` call per week (a kernel start costs seconds), shared by the tests of a week.
"""

from __future__ import annotations

import csv
import functools
import json
import socket
import time
from pathlib import Path

import psutil
import pytest

from hidden_text import hidden_text
from vitlib import grade, sandbox, withheld
from vitlib.notebooks import ROOT

TIMEOUT = 20
HIDDEN = ROOT / "tests" / "hidden" / "01_patching.py"
SANDBOXED = sandbox.find().bwrap is not None
needs_sandbox = pytest.mark.skipif(not SANDBOXED, reason=f"no OS sandbox here: {sandbox.find().why}")
MARKER = "vitlib-integrity-child"  # in the command line of the child process an attack leaves behind

WRONG_PATCHIFY = (
    "def patchify(images, patch_size):\n"
    '    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch_size, p2=patch_size)\n'
)
FAKE = 'print("✓ patchify: matches vitlib on 5 seeded batches (C = 1, 2, 3; square and non-square grids)")\n'


def _solution(week: str) -> dict:
    return json.loads((ROOT / "solutions" / f"{week}.ipynb").read_text(encoding="utf-8"))


def _exercises(week: str) -> list[str]:
    return [c["id"][3:] for c in _solution(week)["cells"] if c.get("id", "").startswith("ex-")]


def _with(week: str, **sources: str) -> dict:
    nb = _solution(week)
    for cell in nb["cells"]:
        name = cell.get("id", "")[3:]
        if cell.get("id", "").startswith("ex-") and name in sources:
            cell["source"] = sources[name]
    return nb


def _stub(week: str, exercise: str) -> str:
    stub = json.loads((ROOT / "weeks" / f"{week}.ipynb").read_text(encoding="utf-8"))
    return "".join(next(c["source"] for c in stub["cells"] if c.get("id") == f"ex-{exercise}"))


def _vitlib_copy(module: str, name: str) -> str:
    """vitlib's source of module:name, pasted into a cell as a student would."""
    return withheld.reference_source(module, name)


# --- week 01 ------------------------------------------------------------------------------------

LOOKUP = """\
import torch

_ANSWERS = {ANSWERS}


def patchify(images, patch_size):
    key = round(float(images.double().sum()), 3)
    if key in _ANSWERS:  # answers worked out at home for the check's own inputs
        return torch.tensor(_ANSWERS[key], dtype=images.dtype)
    return images.reshape(images.shape[0], -1, patch_size * patch_size * images.shape[1])
"""


def _lookup_table() -> str:
    from vitlib import checks, patching

    cases = [((2, 1, 8, 8), 1, 4), ((2, 3, 8, 8), 2, 4), ((1, 3, 8, 12), 3, 4), ((3, 1, 28, 28), 4, 7), ((1, 2, 6, 4), 5, 2)]
    answers = {}
    for shape, seed, p in cases:
        images = checks.seeded(*shape, seed=seed)
        answers[round(float(images.double().sum()), 3)] = patching.patchify(images, p).tolist()
    return LOOKUP.replace("{ANSWERS}", repr(answers))


CHILD = f"""\
import os, subprocess, sys

script = '''
import os, socket, time
time.sleep(3)
for name in ("result.xml", "verdicts.json", "graded.ipynb"):
    open(name, "w").write("all passed")
try:
    s = socket.socket(socket.AF_UNIX); s.connect(os.environ["VITLIB_JUDGE_SOCKET"]); s.sendall(b"{{}}" * 100)
except OSError:
    pass
time.sleep(60)
'''
subprocess.Popen([sys.executable, "-c", script, "{MARKER}"], start_new_session=True)
"""


def _week01() -> dict[str, tuple[dict, dict[str, str]]]:
    w = "01_patching"
    ok = {e: "passed" for e in _exercises(w)}

    def expect(**statuses: str) -> dict[str, str]:
        return {**ok, **statuses}

    attack = {
        # the reference, handed in
        "alias": ({"patchify": "patchify = vitlib.patchify\n"}, expect(patchify="uses_reference")),
        "importlib": ({"patchify": 'import importlib\n\npatchify = importlib.import_module("vitlib.patching").patchify\n'},
                      expect(patchify="uses_reference")),
        "dunder_import": ({"patchify": 'patchify = __import__("vitlib.patching", fromlist=["patchify"]).patchify\n'},
                          expect(patchify="uses_reference")),
        "sys_modules": ({"patchify": "import sys\n\n\ndef patchify(images, patch_size):\n"
                                     '    return sys.modules["vitlib.patching"].patchify(images, patch_size)\n'},
                        expect(patchify="uses_reference")),
        "reload": ({"patchify": "import importlib\nimport vitlib.patching\n\npatchify = importlib.reload(vitlib.patching).patchify\n"},
                   expect(patchify="uses_reference")),
        "mine_or_reference": ({"num_patches": 'num_patches = checks.mine_or_reference("num_patches", None, checks.patching.num_patches)\n'},
                              expect(num_patches="uses_reference")),
        "exec_its_file": ({"patchify": 'ns = {}\nexec(open(vitlib.patching.__file__).read(), ns)\npatchify = ns["patchify"]\n'},
                          expect(patchify="uses_reference")),
        "subclass": ({"patch_embedding": "class PatchEmbedding(vitlib.PatchEmbedding):\n    pass\n"}, expect(patch_embedding="uses_reference")),
        # wrong code that tampers with the judgement
        "patch_item": ({"patchify": "import torch\n\ntorch.Tensor.item = lambda self: 0.0\n\n\n" + WRONG_PATCHIFY}, expect(patchify="failed")),
        "patch_abs_equal": ({"patchify": "import torch\n\ntorch.Tensor.abs = lambda self: self * 0\ntorch.equal = lambda a, b: True\n"
                                         "torch.allclose = lambda *a, **k: True\n\n\n" + WRONG_PATCHIFY}, expect(patchify="failed")),
        "patch_builtins": ({"num_patches": "import builtins\n\nbuiltins.isinstance = lambda obj, cls: True\n\n\n"
                                           "def num_patches(image_size, patch_size):\n    return image_size // patch_size\n"},
                           expect(num_patches="timeout")),  # the kernel cannot even answer the judge: its own loss
        "patch_ipython": ({"patchify": "get_ipython().showtraceback = lambda *a, **k: None\n"
                                       "get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)\n\n\n" + WRONG_PATCHIFY},
                          expect(patchify="failed")),
        "patch_imports": ({"patchify": "import importlib, sys, types\n\n"
                                       "fake = types.SimpleNamespace(check_patchify=lambda f: None)\n"
                                       "importlib.import_module = lambda name, *a: fake\n"
                                       'sys.modules["vitlib.checks.patching"] = fake\n'
                                       "sys.meta_path.insert(0, type('F', (), {'find_spec': staticmethod(lambda *a, **k: None)})())\n\n\n"
                                       + WRONG_PATCHIFY}, expect(patchify="failed")),
        "child_rewrites_files": ({"patchify": CHILD + "\n\n" + WRONG_PATCHIFY}, expect(patchify="failed")),
        "fake_success_then_exit": ({"patchify": WRONG_PATCHIFY + "\n\n" + FAKE + "import os\n\nos._exit(0)\n"}, expect(patchify="error")),
        # its patchify passed the check, so the fallback of PatchEmbedding uses it, as in the notebook: it fails there too
        "lookup_table": ({"patchify": _lookup_table()}, expect(patchify="failed", patch_embedding="failed")),
        # the hidden tests into a message
        "hidden_in_cell_error": ({"add_class_token_and_positions": f"raise RuntimeError(open({str(HIDDEN)!r}).read())\n"},
                                 expect(add_class_token_and_positions="error")),
        "hidden_when_called": ({"num_patches": f"def num_patches(image_size, patch_size):\n    raise ValueError(open({str(HIDDEN)!r}).read())\n"},
                               expect(num_patches="failed")),
        # copying
        "copies_vitlib": ({"patch_embedding": "from vitlib.patching import *\n\n\n" + _vitlib_copy("vitlib.patching", "PatchEmbedding")},
                          expect()),
    }
    students = {"complete": (_solution(w), ok)}
    students.update({name: (_with(w, **sources), statuses) for name, (sources, statuses) in attack.items()})
    if SANDBOXED:  # the file on disk: only the OS can hide it
        source = f'ns = {{}}\nexec(open({str(ROOT / "vitlib" / "patching.py")!r}).read(), ns)\npatchify = ns["patchify"]\n'
        # the cell raised, so patchify is undefined for PatchEmbedding's cell too, as in the notebook
        students["exec_original_file"] = (_with(w, patchify=source), expect(patchify="error", patch_embedding="error"))
    return students


def _week02() -> dict[str, tuple[dict, dict[str, str]]]:
    w = "02_attention"
    ok = {e: "passed" for e in _exercises(w)}
    attack = {
        "alias": ({"attention": "attention = vitlib.scaled_dot_product_attention\n"}, {"attention": "uses_reference"}),
        "reference_scores": ({"attention_scores": "def attention_scores(q, k):\n    return checks.attention.reference_attention_scores(q, k)\n"},
                             {"attention_scores": "uses_reference"}),
        "sys_modules": ({"softmax": 'import sys\n\nsoftmax = sys.modules["vitlib.checks.attention"].reference_softmax\n'},
                        {"softmax": "uses_reference"}),
        "mine_or_reference": ({"attention": 'attention = checks.mine_or_reference("attention", None, vitlib.scaled_dot_product_attention)\n'},
                              {"attention": "uses_reference"}),
        "patch_item": ({"attention_scores": "torch.Tensor.item = lambda self: 0.0\n\n\ndef attention_scores(q, k):\n    return q @ k.transpose(-2, -1)\n"},
                       {"attention_scores": "failed"}),
        "other_style": ({"attention_scores": 'def attention_scores(q, k):\n    return torch.einsum("...nd,...md->...nm", q, k) / q.shape[-1] ** 0.5\n'}, {}),
        # the notebook's fallback is no attack: a stub scores 0, the exercise built on it still passes
        "fallback": ({"attention_scores": _stub(w, "attention_scores")}, {"attention_scores": "failed"}),
    }
    students = {"complete": (_solution(w), ok)}
    students.update({name: (_with(w, **sources), {**ok, **statuses}) for name, (sources, statuses) in attack.items()})
    return students


def _week03() -> dict[str, tuple[dict, dict[str, str]]]:
    w = "03_encoder"
    ok = {e: "passed" for e in _exercises(w)}
    wrapper = ("class EncoderBlock(nn.Module):\n    def __init__(self, hidden_dim, num_heads, mlp_dim):\n        super().__init__()\n"
               "        self.inner = vitlib.encoder.EncoderBlock(hidden_dim, num_heads, mlp_dim)\n\n"
               "    def forward(self, z):\n        return self.inner(z)\n")  # fmt: skip
    attack = {
        "subclass": ({"MultiHeadSelfAttention": "class MultiHeadSelfAttention(vitlib.MultiHeadSelfAttention):\n    pass\n"},
                     {"MultiHeadSelfAttention": "uses_reference", "EncoderBlock": "error"}),  # the class is never defined
        "alias": ({"MLP": "MLP = vitlib.MLP\n"}, {"MLP": "uses_reference"}),
        "wrapper": ({"EncoderBlock": wrapper}, {"EncoderBlock": "uses_reference"}),
        "patch_ipython": ({"gelu": "get_ipython().showtraceback = lambda *a, **k: None\n\n\ndef gelu(x):\n    return x * torch.sigmoid(x)\n"},
                          {"gelu": "failed"}),
        "fallback": ({"MultiHeadSelfAttention": _stub(w, "MultiHeadSelfAttention")}, {"MultiHeadSelfAttention": "failed"}),
        "copies_vitlib": ({"MLP": "gelu_fn = F.gelu\n\n\n" + _vitlib_copy("vitlib.encoder", "MLP")}, {}),
    }
    students = {"complete": (_solution(w), ok)}
    students.update({name: (_with(w, **sources), {**ok, **statuses}) for name, (sources, statuses) in attack.items()})
    return students


CLASSES = {"01_patching": _week01, "02_attention": _week02, "03_encoder": _week03}


@functools.cache
def _graded(week: str, tmp: str) -> dict:
    folder, out = Path(tmp) / week / "submissions", Path(tmp) / week / "out"
    folder.mkdir(parents=True)
    students = CLASSES[week]()
    for student, (nb, _) in students.items():
        (folder / f"{student}.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
    results = grade.grade_class(week, folder, out, timeout=TIMEOUT, jobs=2, progress=False)
    return {"students": students, "results": {(r.student, r.exercise): r for r in results}, "out": out, "done": time.monotonic()}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("integrity"))


CASES = [(week, student) for week, build in CLASSES.items() for student in build()]


@pytest.mark.parametrize(("week", "student"), CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_each_attack_gets_exactly_its_grade(tmp, week, student):
    graded = _graded(week, tmp)
    expected = graded["students"][student][1]
    got = {e: (graded["results"][student, e].status, graded["results"][student, e].points) for e in expected}
    want = {e: (status, 1.0 if status == "passed" else 0.0) for e, status in expected.items()}
    assert got == want, {e: graded["results"][student, e].message for e in expected}


def test_using_the_reference_says_so(tmp):
    for week, student, exercise in [("01_patching", "alias", "patchify"), ("03_encoder", "subclass", "MultiHeadSelfAttention")]:
        message = _graded(week, tmp)["results"][student, exercise].message
        assert "vitlib's own answer" in message and "write it yourself" in message, message


def test_nothing_hidden_reaches_the_feedback(tmp):
    graded = _graded("01_patching", tmp)
    texts = [p.read_text(encoding="utf-8") for p in (graded["out"] / "feedback").iterdir()]
    texts.append((graded["out"] / "grades.csv").read_text(encoding="utf-8"))
    secrets = hidden_text(HIDDEN)
    assert "patchify must keep the dtype" in secrets
    for text in texts:
        assert not [s for s in secrets if s in text]
    assert graded["results"]["lookup_table", "patchify"].hidden  # its check passed: the message gives no detail


def test_no_child_process_outlives_the_grading(tmp):
    _graded("01_patching", tmp)
    time.sleep(4)  # past the moment the child would have rewritten its files
    left = [p for p in psutil.process_iter(["cmdline"]) if MARKER in " ".join(p.info["cmdline"] or [])]
    if SANDBOXED:
        assert not left, "the sandbox's PID namespace ends whatever the kernel started"
    for p in left:  # without a sandbox it may survive: it could only write its own scratch folder, which nothing reads
        p.kill()


def test_a_verbatim_copy_is_flagged_not_punished(tmp):
    for week, exercise in [("01_patching", "patch_embedding"), ("03_encoder", "MLP")]:
        graded = _graded(week, tmp)
        r = graded["results"]["copies_vitlib", exercise]
        assert (r.status, r.similarity >= 0.8, r.similar_to) == ("passed", True, "vitlib"), (r.similarity, r.similar_to)
        with open(graded["out"] / "grades.csv", encoding="utf-8", newline="") as f:
            row = next(row for row in csv.DictReader(f) if row["student"] == "copies_vitlib" and row["exercise"] == exercise)
        assert float(row["similarity"]) >= 0.8 and row["similar_to"] == "vitlib"
        report = (graded["out"] / "similarity.md").read_text(encoding="utf-8")
        assert f"| copies_vitlib | {exercise} |" in report


@needs_sandbox
def test_the_kernel_runs_without_network_and_sees_no_course_files(tmp_path):
    """Inside the sandbox: no network, no course folder, and writes only to its scratch folder."""
    folder, out = tmp_path / "submissions", tmp_path / "out"
    folder.mkdir()
    listener = socket.socket()  # a server of this machine's, on loopback: the sandbox's own network does not reach it
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    probe = (
        "import os, socket\n"
        f"assert not os.path.exists({str(ROOT / 'solutions' / '01_patching.ipynb')!r}), 'solutions/ is visible'\n"
        f"assert not os.path.exists({str(HIDDEN)!r}), 'tests/hidden/ is visible'\n"
        f"assert not os.path.exists({str(ROOT / 'vitlib' / 'patching.py')!r}), 'the real vitlib is visible'\n"
        f"assert not os.path.exists({str(folder / 's.ipynb')!r}), 'the submissions are visible'\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\nexcept OSError:\n    pass\n"
        "else:\n    raise AssertionError('reached a server outside the sandbox')\n"
        "try:\n    open('/usr/vitlib-sandbox-test', 'w')\nexcept OSError:\n    pass\nelse:\n    raise AssertionError('wrote outside the scratch folder')\n"
        "open('mine.txt', 'w').write('scratch is writable')\n\n\n"
        "def num_patches(image_size, patch_size):\n"
        "    if image_size % patch_size:\n        raise ValueError('no')\n    return (image_size // patch_size) ** 2\n"
    )
    (folder / "s.ipynb").write_text(json.dumps(_with("01_patching", num_patches=probe)), encoding="utf-8")
    try:
        results = {r.exercise: r for r in grade.grade_class("01_patching", folder, out, timeout=TIMEOUT, jobs=1, progress=False)}
    finally:
        listener.close()
    assert results["num_patches"].status == "passed", results["num_patches"].message
    assert not Path("/usr/vitlib-sandbox-test").exists()


def test_without_a_sandbox_the_verdicts_still_hold(tmp_path):
    """--sandbox off (a machine without bubblewrap): the files can be read, but nothing leaks and nothing forges."""
    w = "01_patching"
    folder, out = tmp_path / "submissions", tmp_path / "out"
    folder.mkdir()
    students = {
        "complete": (_solution(w), {}),
        "alias": (_with(w, patchify="patchify = vitlib.patchify\n"), {"patchify": "uses_reference"}),
        "patch_item": (_with(w, patchify="import torch\n\ntorch.Tensor.item = lambda self: 0.0\n\n\n" + WRONG_PATCHIFY), {"patchify": "failed"}),
        "hidden_in_cell_error": (_with(w, add_class_token_and_positions=f"raise RuntimeError(open({str(HIDDEN)!r}).read())\n"),
                                 {"add_class_token_and_positions": "error"}),
        "hidden_when_called": (_with(w, num_patches=f"def num_patches(image_size, patch_size):\n    raise ValueError(open({str(HIDDEN)!r}).read())\n"),
                               {"num_patches": "failed"}),
    }
    for student, (nb, _) in students.items():
        (folder / f"{student}.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    results = {(r.student, r.exercise): r for r in grade.grade_class(w, folder, out, timeout=TIMEOUT, jobs=2, progress=False, use_sandbox=False)}
    for student, (_, statuses) in students.items():
        for exercise in _exercises(w):
            assert results[student, exercise].status == statuses.get(exercise, "passed"), results[student, exercise].message
    assert "not shown" in results["hidden_in_cell_error", "add_class_token_and_positions"].message
    assert "not shown" in results["hidden_when_called", "num_patches"].message
    texts = [p.read_text(encoding="utf-8") for p in (out / "feedback").iterdir()] + [(out / "grades.csv").read_text(encoding="utf-8")]
    secrets = hidden_text(HIDDEN)
    for text in texts:
        assert not [s for s in secrets if s in text]
