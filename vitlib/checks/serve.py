"""Checks of week 08: what a model server must do before and after the model runs.

The references are in `vitlib.serve`, the server itself uses them: `validate_upload`
(refuse bad uploads with the right HTTP status), `pad_to_square` (keep the aspect ratio,
as training did) and `top_k_predictions` (the answer a client reads).
"""

from __future__ import annotations

import torch

from vitlib import checks
from vitlib.serve import CONTENT_TYPES, BadImage, pad_to_square, top_k_predictions

__all__ = ["check_validate_upload", "check_pad_to_square", "check_top_k_predictions"]

_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(56))  # 64 bytes that start like a PNG (decoding comes later)

# (what, data, content type, max_bytes, expected status or None, hint when the status is wrong)
_UPLOADS = [
    ("a 64-byte PNG", _PNG, "image/png", 1000, None, "a small PNG is fine: raise only for the three problems above"),
    ("a JPEG", b"\xff\xd8\xff" + b"\x00" * 61, "image/jpeg", 1000, None, "every type in CONTENT_TYPES is allowed, not only image/png"),
    ("a PNG of exactly max_bytes", _PNG, "image/png", 64, None,
     "the limit is inclusive: exactly max_bytes is allowed, one byte more is not (`>`, not `>=`)"),
    ("a PNG one byte over max_bytes", _PNG, "image/png", 63, 413,
     "too large is 413 (Payload Too Large): compare len(data) with max_bytes"),
    ("an empty upload", b"", "image/png", 1000, 400, "nothing was sent: 400 (Bad Request), checked with len(data) == 0"),
    ("a text file", b"hello, server", "text/plain", 1000, 415,
     "text/plain is not an image type: 415 (Unsupported Media Type) unless content_type is in CONTENT_TYPES"),
    ("no content type", _PNG, None, 1000, 415, "a missing content type (None) is not an image type either: 415"),
    ("a PNG sent as application/octet-stream", _PNG, "application/octet-stream", 1000, 415,
     "only the types in CONTENT_TYPES are accepted: 415"),
    ("a PNG with an upper-case type and a parameter", _PNG, "Image/PNG; name=shirt", 1000, None,
     "content types are case-insensitive and may carry parameters after ';': compare "
     "content_type.split(';')[0].strip().lower()"),
]


def _outcome(student_validate, *args) -> BadImage | None:
    try:
        student_validate(*args)
    except BadImage as error:
        return error
    return None


@checks.exercise("validate_upload")
def check_validate_upload(student_validate) -> None:
    """`validate_upload(data, content_type, max_bytes)`: None, or raise BadImage(status, message)."""
    for what, data, content_type, max_bytes, status, hint in _UPLOADS:
        call = f"validate_upload({what}, content_type={content_type!r}, max_bytes={max_bytes})"
        expected = "no error (return None)" if status is None else f"BadImage with status {status}"
        try:
            error = checks.call_student("validate_upload", _outcome, student_validate, data, content_type, max_bytes)
        except checks.CheckFailed as failure:
            cause = failure.__cause__
            if cause is None or status is None:
                raise
            checks.fail(call, expected, f"{type(cause).__name__}: {cause}",
                        f"raise BadImage({status}, 'what is wrong'): the server turns its status into the HTTP answer; "
                        "any other exception becomes a 500 (Internal Server Error)")
        if error is None and status is not None:
            checks.fail(call, expected, "no error", hint)
        if error is not None:
            if status is None:
                checks.fail(call, expected, f"BadImage({error.status}, {str(error)!r})", hint)
            if error.status != status:
                checks.fail(call, expected, f"BadImage with status {error.status}", hint)
            if not str(error).strip():
                checks.fail(call, "a message that tells the user what to fix", "an empty message",
                            "the message is all the user sees: say what was wrong, e.g. 'the upload is empty'")
    checks.passed("validate_upload", f"{len(_UPLOADS)} uploads: right status for each, {len(CONTENT_TYPES)} image types accepted")


def _pad_inputs() -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(8)
    return [
        (torch.randint(1, 255, (1, 4, 7), generator=g, dtype=torch.uint8), 0),  # wide, odd difference
        (torch.randint(1, 255, (3, 9, 4), generator=g, dtype=torch.uint8), 255),  # tall RGB, white fill
        (torch.randint(1, 255, (1, 5, 5), generator=g, dtype=torch.uint8), 17),  # already square
    ]


def _pad_mistakes(image: torch.Tensor, fill: int) -> dict[str, torch.Tensor]:
    C, H, W = image.shape
    S = max(H, W)
    mistakes = {}
    corner = torch.full((C, S, S), fill, dtype=image.dtype)
    corner[:, :H, :W] = image
    mistakes["the image sits in the top-left corner: centre it, top = (S - H + 1) // 2 and left = (S - W + 1) // 2"] = corner
    floor = torch.full((C, S, S), fill, dtype=image.dtype)
    top, left = (S - H) // 2, (S - W) // 2
    floor[:, top : top + H, left : left + W] = image
    mistakes["one pixel off: when S - H is odd the extra row goes on top (as in Fashion-MNIST), "
             "top = (S - H + 1) // 2, left = (S - W + 1) // 2"] = floor
    zeros = torch.zeros((C, S, S), dtype=image.dtype)
    top, left = (S - H + 1) // 2, (S - W + 1) // 2
    zeros[:, top : top + H, left : left + W] = image
    mistakes["the padding is 0, not `fill`: start from torch.full((C, S, S), fill, dtype=image.dtype)"] = zeros
    stretched = torch.nn.functional.interpolate(image[None].float(), size=(S, S), mode="nearest")[0]
    mistakes["that stretches the image to a square: pad it instead, so shapes keep their proportions"] = stretched.to(image.dtype)
    return mistakes


@checks.exercise("pad_to_square")
def check_pad_to_square(student_pad) -> None:
    """`pad_to_square(image, fill)`: (C, H, W) -> (C, S, S), S = max(H, W), the image centred."""
    for image, fill in _pad_inputs():
        what = f"pad_to_square(image of shape {tuple(image.shape)}, fill={fill})"
        original = image.clone()
        got = checks.expect_tensor(what, checks.call_student("pad_to_square", student_pad, image, fill))
        if not torch.equal(image, original):
            checks.fail(what, "the input left as it was", "the input changed", "write into a new tensor, not into `image`")
        expected = pad_to_square(image, fill)  # (C, S, S)
        mistakes = _pad_mistakes(image, fill)
        if tuple(got.shape) != tuple(expected.shape):
            C, H, W = image.shape
            checks.fail(f"{what}: wrong shape", f"shape {tuple(expected.shape)}", f"shape {tuple(got.shape)}",
                        f"S = max(H, W) = {max(H, W)}, channels first: (C, S, S); keep C = {C}")
        if got.dtype != expected.dtype:
            checks.fail(f"{what}: wrong dtype", f"dtype {expected.dtype}", f"dtype {got.dtype}",
                        "keep the image's dtype (uint8): torch.full(..., dtype=image.dtype)")
        if not torch.equal(got, expected):
            known = checks.diagnose(got.float(), {h: m.float() for h, m in mistakes.items()}, tol=1e-9)
            checks.fail(f"{what}: wrong values", expected, got,
                        known or "the square should hold `fill` everywhere except the image, centred")
    checks.passed("pad_to_square", f"matches vitlib on {len(_pad_inputs())} images (wide, tall, square)")


def _topk_inputs() -> list[tuple[torch.Tensor, list[str], int]]:
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return [
        (checks.seeded(10, seed=3) * 2, names, 3),
        (torch.tensor([2.0, -1.0, 0.5, 3.0]), ["a", "b", "c", "d"], 2),
        (torch.tensor([0.3, 1.2, -0.4]), ["x", "y", "z"], 5),  # k > K: every class
    ]


@checks.exercise("top_k_predictions")
def check_top_k_predictions(student_top_k) -> None:
    """`top_k_predictions(logits, classes, k)`: logits (K,) -> [{"label", "probability"}, ...], best first."""
    for logits, classes, k in _topk_inputs():
        what = f"top_k_predictions(logits of shape {tuple(logits.shape)}, {len(classes)} classes, k={k})"
        expected = top_k_predictions(logits, classes, k)
        got = checks.call_student("top_k_predictions", student_top_k, logits.clone(), list(classes), k)
        if not isinstance(got, list) or not all(isinstance(row, dict) for row in got):
            checks.fail(what, 'a list of dicts: [{"label": "Coat", "probability": 0.83}, ...]', repr(got)[:120],
                        "the server sends this list as JSON: one dict per class, with keys label and probability")
        if len(got) != len(expected):
            hint = (f"k = {k} is more than the {len(classes)} classes: return all of them (min(k, K))"
                    if k > len(classes) else f"return the k = {k} most probable classes")
            checks.fail(what, f"{len(expected)} entries", f"{len(got)} entries", hint)
        if any(set(row) != {"label", "probability"} for row in got):
            checks.fail(what, "keys label and probability", f"keys {sorted(got[0])}", 'each entry is {"label": name, "probability": p}')
        labels = [row["label"] for row in got]
        if labels != [row["label"] for row in expected]:
            probabilities = logits.softmax(-1)
            if all(isinstance(label, int) for label in labels):
                hint = "those are class indices: look them up, classes[i]"
            elif labels == [classes[i] for i in probabilities.topk(len(got), largest=False).indices.tolist()]:
                hint = "those are the least probable classes: most probable first (largest=True, or sort descending)"
            elif sorted(labels) == sorted(row["label"] for row in expected):
                hint = "the right classes in the wrong order: most probable first"
            else:
                hint = "take the k largest probabilities (probabilities.topk(k)) and their indices"
            checks.fail(what, [row["label"] for row in expected], labels, hint)
        got_p = [row["probability"] for row in got]
        if not all(isinstance(p, float) for p in got_p):
            checks.fail(what, "probabilities as Python floats (JSON cannot hold a tensor)",
                        f"{type(next(p for p in got_p if not isinstance(p, float))).__name__}",
                        "use .tolist() or .item() on the probabilities")
        want_p = torch.tensor([row["probability"] for row in expected], dtype=torch.float64)
        if checks.rel_error(torch.tensor(got_p, dtype=torch.float64), want_p) > 1e-5:
            top_logits = logits.topk(len(got)).values.double()
            hint = ("those are logits: turn them into probabilities, softmax over the K classes"
                    if checks.rel_error(torch.tensor(got_p, dtype=torch.float64), top_logits) < 1e-5
                    else "probabilities are softmax(logits) over all K classes, taken before choosing the top k")
            checks.fail(f"{what}: probabilities", [round(p, 4) for p in want_p.tolist()], [round(p, 4) for p in got_p], hint)
    checks.passed("top_k_predictions", f"matches vitlib on {len(_topk_inputs())} sets of logits")
