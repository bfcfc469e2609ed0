"""The benchmark scripts run (tiny configurations): CI proves they are not broken. No timing is asserted."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


def test_cpu_step_benchmark_runs(capsys):
    import bench_cpu_step
    res = bench_cpu_step.main(["--elements", "64K", "--reps", "2", "--warmup", "1"])
    assert set(res["64K"]) == set(bench_cpu_step.CONFIGS)
    for r in res["64K"].values():
        assert r["median_ms"] > 0 and r["gbps"] > 0
    assert "hf Adam (lr, betas) exact" in capsys.readouterr().out


def test_mlp_step_benchmark_runs():
    import bench_mlp_step
    rows = bench_mlp_step.main(["--reps", "1", "--warmup", "1", "--mem-steps", "2"])
    names = [r["config"] for r in rows]
    assert names[:3] == ["torch Adam fused", "hf Adam/SGD exact", "hf Adam/SGD one-pass"]
    assert all(r["peak_growth_mb"] >= 0 for r in rows)
