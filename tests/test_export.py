"""vitlib.export: ONNX (run by onnxruntime) and TorchScript models give PyTorch's logits (≤ 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

from vitlib.checkpoint import save_checkpoint
from vitlib.configs import create_vit
from vitlib.export import ExportError, export, main, max_difference


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", patch_size=7, hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64)
    with torch.no_grad():
        for p in model.parameters():  # the head starts at zero: perturb so the logits mean something
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path):
    model = small_model()
    save_checkpoint(tmp_path / "run" / "last.pt", model, epoch=1, step=1, history={})
    return tmp_path / "run" / "last.pt", model


@pytest.mark.parametrize("kind, suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_cli_exports_a_model_that_matches_pytorch(kind, suffix, checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "exported" / f"vit.{suffix}"
    assert main([str(path), "--format", kind, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == kind and summary["max_abs_difference"] <= 1e-4
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left
    assert max_difference(model, kind, out, batches=(1, 3, 8)) <= 1e-4  # any batch size


def test_onnx_runs_in_onnxruntime_with_a_dynamic_batch(tmp_path):
    import onnxruntime

    model = small_model(1)
    export(model, "onnx", tmp_path / "vit.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == ["logits"]
    images = torch.randn(4, 1, 28, 28)
    logits = session.run(None, {"images": images.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(logits), model(images).detach(), atol=1e-4, rtol=0)


def test_an_export_that_does_not_match_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ExportError, match="differ from PyTorch's"):
        export(small_model(), "torchscript", tmp_path / "vit.pt", atol=-1.0)  # no difference passes a negative tolerance
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.pt", "--out", "x.onnx"], "no checkpoint at missing.pt"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert main([str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "is not a vitlib checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
