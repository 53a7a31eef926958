"""vitlib.latency: the three runtimes compute the same logits, and the table is well formed (not a speed test)."""

from __future__ import annotations

import json

import pytest
import torch

from vitlib.configs import create_vit
from vitlib.export import export
from vitlib.latency import compare, format_table, main, runtimes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latency")
    torch.manual_seed(0)
    model = create_vit("vit_course_28", num_layers=2).eval()
    export(model, "onnx", folder / "m.onnx")
    export(model, "torchscript", folder / "m.pt")
    return model, folder / "m.onnx", folder / "m.pt"


def test_every_runtime_gives_pytorchs_logits(exported):
    model, onnx_path, ts_path = exported
    runners = runtimes(model, onnx_path, ts_path)
    assert list(runners) == ["PyTorch eager", "TorchScript", "onnxruntime"]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    for name, run in runners.items():
        assert (run(x) - expected).abs().max() < 1e-4, name


def test_compare_times_each_runtime_at_each_batch_with_eager_as_the_unit(exported):
    model, onnx_path, _ = exported
    rows = compare(runtimes(model, onnx_path), (1, 28, 28), batch_sizes=(1, 4), rounds=3, progress=False)
    assert [(r.runtime, r.batch) for r in rows] == [("PyTorch eager", 1), ("onnxruntime", 1), ("PyTorch eager", 4), ("onnxruntime", 4)]
    assert all(r.median_ms > 0 and r.p90_ms >= r.median_ms and r.images_per_second > 0 for r in rows)
    assert rows[0].speedup == 1.0 and rows[2].speedup == 1.0
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["runtime", "batch", "median", "ms", "p90", "ms", "images/s", "vs", "eager"]
    assert len(table.splitlines()) == 5
    with pytest.raises(ValueError, match="at least one round"):
        compare(runtimes(model), (1, 28, 28), rounds=0)


def test_the_command_prints_a_table_and_json(capsys):
    assert main(["--config", "vit_course_28", "--batch", "2", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert [row["runtime"] for row in result["rows"]] == ["PyTorch eager", "TorchScript", "onnxruntime"]
    assert lines[0].startswith("vit_course_28 (random weights): 805,130 parameters")


def test_the_command_reports_a_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint at")
