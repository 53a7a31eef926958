"""`vitlib.similarity`: copies are found through renaming and reformatting; short and different answers are not flagged."""

from __future__ import annotations

from vitlib import similarity, withheld
from vitlib.grade import Result
from vitlib.judge import load_exercises

MLP_COPY = withheld.reference_source("vitlib.encoder", "MLP")
RENAMED = (
    MLP_COPY.replace("fc1", "first").replace("fc2", "second").replace("hidden_dim", "width").replace("x", "inp")
    .replace("    ", "  ")  # re-indented
)  # fmt: skip
OWN = '''class MLP(nn.Module):
    """The MLP block of eq. 3."""

    def __init__(self, hidden_dim, mlp_dim):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_dim)

    def forward(self, tokens):
        hidden = self.fc1(tokens)
        hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / 2 ** 0.5))
        out = self.fc2(hidden)
        assert out.shape == tokens.shape
        return out
'''


def _scored(week: str, exercise: str, sources: dict[str, str]) -> dict[str, Result]:
    w = load_exercises(week)
    graded = {s: [Result(s, e.name, 1.0, 1.0, "passed") for e in w.exercises] for s in sources}
    similarity.score(w, {s: {exercise: code} for s, code in sources.items()}, graded)
    return {s: next(r for r in rs if r.exercise == exercise) for s, rs in graded.items()}


def test_a_copy_of_vitlib_is_found_through_renaming_and_reformatting():
    rows = _scored("03_encoder", "MLP", {"copy": MLP_COPY, "renamed": RENAMED, "own": OWN})
    assert rows["copy"].similarity >= 0.8 and rows["copy"].similar_to == "vitlib"
    assert rows["renamed"].similarity >= 0.8 and rows["renamed"].similar_to in ("vitlib", "student:copy")


def test_an_answer_of_ones_own_is_not_flagged():
    rows = _scored("03_encoder", "MLP", {"own": OWN, "copy": MLP_COPY})
    assert rows["own"].similarity < 0.8, (rows["own"].similarity, rows["own"].similar_to)


def test_a_one_line_answer_is_too_short_to_score():
    line = 'def patchify(images, patch_size):\n    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)\n'
    rows = _scored("01_patching", "patchify", {"a": line, "b": line})
    assert (rows["a"].similarity, rows["a"].similar_to) == (0.0, "")


def test_the_report_lists_the_flagged_rows_only():
    rows = _scored("03_encoder", "MLP", {"copy": MLP_COPY, "own": OWN})
    report = similarity.report("03_encoder", list(rows.values()), 0.8)
    assert "| copy | MLP |" in report and "| own | MLP |" not in report
    assert "No row is flagged." in similarity.report("03_encoder", [rows["own"]], 0.8)
