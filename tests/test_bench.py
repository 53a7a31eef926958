"""The speed benchmark runs (its figures are measured by hand, not asserted here)."""

import pytest

pytest.importorskip("timm")

from vitlib.bench import Case, run  # noqa: E402


def test_bench_runs_both_models_with_the_same_weights_and_reports_ratios():
    case = Case("tiny", "vit_course_28", dict(num_layers=1, hidden_dim=32, num_heads=2, mlp_dim=64), batch_size=8)
    result = run(case, rounds=1, iterations=1)
    for kind in ("train", "infer"):
        assert result[f"{kind}_images_per_s_vitlib"] > 0 and result[f"{kind}_images_per_s_timm"] > 0
        assert result[f"{kind}_ratio_vitlib_over_timm"] > 0
