"""Week 08 checks pass on right code and fail, with expected / got / hint, on the classic mistakes."""

from __future__ import annotations

import re

import pytest
import torch
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub

from vitlib.checks.serve import (
    check_pad_to_square,
    check_top_k_predictions,
    check_validate_upload,
)
from vitlib.serve import (
    CONTENT_TYPES,
    BadImage,
    pad_to_square,
    top_k_predictions,
    validate_upload,
)

# --- validate_upload ------------------------------------------------------------------------------


def test_validate_upload_passes_on_the_reference(capsys):
    check_validate_upload(validate_upload)
    assert capsys.readouterr().out == "✓ validate_upload: 9 uploads: right status for each, 5 image types accepted\n"


def test_validate_upload_passes_on_another_order_of_the_rules(capsys):
    def mine(data, content_type, max_bytes):
        if (content_type or "").lower().partition(";")[0].strip() not in CONTENT_TYPES:
            raise BadImage(415, "not an image type")
        if not data:
            raise BadImage(400, "empty")
        if len(data) > max_bytes:
            raise BadImage(413, "too large")

    check_validate_upload(mine)
    assert capsys.readouterr().out.startswith("✓ validate_upload")


def _validator(size_op=">", empty=400, too_large=413, wrong_type=415, normalise=True, types=CONTENT_TYPES,
               exception=BadImage, message="bad"):
    def validate(data, content_type, max_bytes):
        big = len(data) > max_bytes if size_op == ">" else len(data) >= max_bytes
        if big:
            raise exception(too_large, message)
        if len(data) == 0:
            raise exception(empty, message)
        kind = content_type if not normalise or content_type is None else content_type.split(";")[0].strip().lower()
        if kind not in types:
            raise exception(wrong_type, message)

    return validate


class _HTTPError(Exception):
    def __init__(self, status, message):
        super().__init__(message)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_validator(size_op=">="), r"the limit is inclusive"),
        (_validator(too_large=400), r"too large is 413"),
        (_validator(empty=413), r"nothing was sent: 400"),
        (_validator(wrong_type=400), r"415 \(Unsupported Media Type\)"),
        (_validator(normalise=False), r"case-insensitive"),
        (_validator(types=("image/png",)), r"every type in CONTENT_TYPES"),
        (_validator(exception=_HTTPError), r"raise BadImage\(413"),
        (_validator(message=""), r"say what was wrong"),
        (lambda data, content_type, max_bytes: None, r"compare len\(data\) with max_bytes"),
        (lambda data, content_type, max_bytes: (_ for _ in ()).throw(BadImage(400, "no")), r"a small PNG is fine"),
    ],
)
def test_validate_upload_mistakes(wrong, hint):
    _fails(check_validate_upload, wrong, hint)


def test_validate_upload_stub_says_not_written_yet():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_validate_upload(_stub)


def test_validate_upload_reference_statuses():
    with pytest.raises(BadImage) as info:
        validate_upload(b"x" * 11, "image/png", max_bytes=10)
    assert info.value.status == 413
    assert validate_upload(b"x" * 10, " IMAGE/JPEG ; q=1", max_bytes=10) is None


# --- pad_to_square --------------------------------------------------------------------------------


def test_pad_to_square_passes_on_the_reference(capsys):
    check_pad_to_square(pad_to_square)
    assert capsys.readouterr().out == "✓ pad_to_square: matches vitlib on 3 images (wide, tall, square)\n"


def test_pad_to_square_passes_with_torch_nn_functional_pad(capsys):
    def mine(image, fill):
        C, H, W = image.shape
        S = max(H, W)
        bottom, right = (S - H) // 2, (S - W) // 2
        return torch.nn.functional.pad(image, (S - W - right, right, S - H - bottom, bottom), value=fill)

    check_pad_to_square(mine)
    assert capsys.readouterr().out.startswith("✓ pad_to_square")


def _corner(image, fill):
    C, H, W = image.shape
    out = torch.full((C, max(H, W), max(H, W)), fill, dtype=image.dtype)
    out[:, :H, :W] = image
    return out


def _floor(image, fill):
    C, H, W = image.shape
    S = max(H, W)
    out = torch.full((C, S, S), fill, dtype=image.dtype)
    top, left = (S - H) // 2, (S - W) // 2
    out[:, top : top + H, left : left + W] = image
    return out


def _in_place(image, fill):
    image.zero_()
    return pad_to_square(image, fill)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_corner, r"top-left corner"),
        (_floor, r"one pixel off: when S - H is odd the extra row goes on top"),
        (lambda image, fill: pad_to_square(image, 0), r"the padding is 0"),
        (lambda image, fill: torch.nn.functional.interpolate(image[None].float(), size=(max(image.shape[1:]),) * 2,
                                                             mode="nearest")[0].to(image.dtype), r"stretches the image"),
        (lambda image, fill: pad_to_square(image, fill)[0], r"channels first: \(C, S, S\)"),
        (lambda image, fill: pad_to_square(image, fill).float(), r"keep the image's dtype"),
        (_in_place, r"write into a new tensor"),
        (lambda image, fill: pad_to_square(image, fill).flip(-1), r"centred"),
    ],
)
def test_pad_to_square_mistakes(wrong, hint):
    _fails(check_pad_to_square, wrong, hint)


def test_pad_to_square_stub_says_not_written_yet():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_pad_to_square(_stub)


# --- top_k_predictions ----------------------------------------------------------------------------


def test_top_k_passes_on_the_reference(capsys):
    check_top_k_predictions(top_k_predictions)
    assert capsys.readouterr().out == "✓ top_k_predictions: matches vitlib on 3 sets of logits\n"


def test_top_k_passes_on_a_sort(capsys):
    def mine(logits, classes, k):
        p = torch.softmax(logits, dim=0)
        order = sorted(range(len(classes)), key=lambda i: -p[i].item())[:k]
        return [{"label": classes[i], "probability": p[i].item()} for i in order]

    check_top_k_predictions(mine)
    assert capsys.readouterr().out.startswith("✓ top_k_predictions")


def _top(logits, classes, k, *, soft=True, largest=True, index=False, as_float=True, cap=True, reverse=False):
    values = logits.softmax(-1) if soft else logits
    top = values.topk(min(k, len(classes)) if cap else k, largest=largest)
    rows = [{"label": i if index else classes[i], "probability": p if as_float else torch.tensor(p)}
            for p, i in zip(top.values.tolist(), top.indices.tolist())]
    return rows[::-1] if reverse else rows


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda logits, classes, k: _top(logits, classes, k, soft=False), r"those are logits"),
        (lambda logits, classes, k: _top(logits, classes, k, largest=False), r"least probable classes"),
        (lambda logits, classes, k: _top(logits, classes, k, index=True), r"class indices"),
        (lambda logits, classes, k: _top(logits, classes, k, as_float=False), r"Python floats"),
        (lambda logits, classes, k: _top(logits, classes, k)[:1], r"return the k = 3 most probable"),
        (lambda logits, classes, k: _top(logits, classes, k, reverse=True), r"wrong order"),
        (lambda logits, classes, k: [{"label": c, "probability": p} for c, p in zip(classes[:k], logits.softmax(-1).tolist())],
         r"the k largest probabilities"),
        (lambda logits, classes, k: [(r["label"], r["probability"]) for r in _top(logits, classes, k)], r"a list of dicts"),
        (lambda logits, classes, k: [{"label": classes[i], "probability": p} for p, i in
                                     zip(logits.topk(min(k, len(classes))).values.softmax(-1).tolist(),
                                         logits.topk(min(k, len(classes))).indices.tolist())],
         r"softmax\(logits\) over all K classes"),
    ],
)
def test_top_k_mistakes(wrong, hint):
    _fails(check_top_k_predictions, wrong, hint)


def test_top_k_when_k_exceeds_the_classes_names_the_cap():
    def truncated_wrong(logits, classes, k):
        return _top(logits, classes, k)[: max(1, min(k, len(classes)) - 1)] if k > len(classes) else _top(logits, classes, k)

    message = _fails(check_top_k_predictions, truncated_wrong, r"more than the 3 classes")
    assert re.search(r"min\(k, K\)", message)


def test_top_k_stub_says_not_written_yet():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_top_k_predictions(_stub)
