"""The benchmark scripts run (tiny configurations): CI proves they are not broken. No timing is asserted."""
import os
import sys

import pytest
import torch

import hyperfused as hf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


def test_cpu_step_benchmark_runs(capsys):
    import bench_cpu_step
    res = bench_cpu_step.main(["--elements", "64K", "--reps", "2", "--warmup", "1"])
    rows = {k: v for k, v in res["64K"].items() if not k.startswith("_")}
    assert set(rows) == set(bench_cpu_step.CONFIGS)
    # make_results.py runs the configurations group by group: every one in exactly one group, baselines included
    grouped = [n for names in bench_cpu_step.GROUPS.values() for n in names]
    assert sorted(grouped) == sorted(bench_cpu_step.CONFIGS)
    for names in bench_cpu_step.GROUPS.values():
        assert all(bench_cpu_step.CONFIGS[n][2] in (None, *names) for n in names)
    for name, r in rows.items():
        assert r["median_ms"] > 0 and r["gbps"] > 0
        if r["baseline"] is not None:
            # the floor charges at least the update's reads at the baseline's rate, plus the read-only passes
            ro, upd = bench_cpu_step.READS[name]
            assert r["floor"] >= upd / bench_cpu_step.READS[r["baseline"]][1]
            assert (r["floor"] > upd / bench_cpu_step.READS[r["baseline"]][1]) == (ro > 0)
    assert {"torch.sum", "torch.dot", "hf pass A, Adam (lr)"} <= set(res["64K"]["_probes"])
    assert "hf Adam (lr, betas) exact" in capsys.readouterr().out


def test_mlp_step_benchmark_runs():
    import bench_mlp_step
    rows = bench_mlp_step.main(["--reps", "1", "--warmup", "1", "--mem-steps", "2"])
    names = [r["config"] for r in rows]
    assert names[:3] == ["torch Adam fused", "hf Adam/SGD exact", "hf Adam/SGD one-pass"]
    assert all(r["peak_growth_mb"] >= 0 for r in rows)


def test_triton_benchmark_runs_and_says_when_no_gpu_numbers_were_taken(capsys):
    import torch
    import bench_triton
    res = bench_triton.main(["--elements", "2K", "--only", "torch Adam fused", "Adam (lr) exact"])
    out = capsys.readouterr().out
    rows = res["results"]["2K"]
    assert "hf Adam (lr) exact [triton]" in rows and "hf Adam (lr) exact [reference]" in rows
    assert all(r["median_ms"] > 0 for r in rows.values())
    if not torch.cuda.is_available():
        assert "NO GPU: no GPU numbers were taken" in out
    # launches per step do not grow with the number of tensors
    counts = res["launches"]
    for mode in ("exact", "one-pass"):
        small, big = counts[f"{mode}, 24 tensors"], counts[f"{mode}, 240 tensors"]
        assert small == big
    assert counts["exact, 240 tensors"]["triton_launches"] == 5      # A, its finish, the tower (2), B


def test_triton_host_benchmark_runs_with_the_launches_stubbed(capsys):
    import bench_triton_host
    from hyperfused.ops.triton import hyper, tower
    from hyperfused.ops.triton import agd
    saved = hyper._launch, tower._launch, agd._launch
    try:
        res = bench_triton_host.main(["--tensors", "3", "7", "--reps", "1", "--warmup", "1"])
    finally:
        hyper._launch, tower._launch, agd._launch = saved
    for n in ("3", "7"):
        rows = res[n]
        assert set(rows) == set(bench_triton_host.CONFIGS)
        assert all(r["median_us"] > 0 for r in rows.values())
        # the launches per step do not grow with the tensor count
        assert rows["hf Adam/SGD exact [triton]"]["launches"] == res["3"]["hf Adam/SGD exact [triton]"]["launches"]
    assert "launches stubbed" in capsys.readouterr().out


def test_cpu_ops_benchmark_runs(capsys):
    import bench_cpu_ops
    res = bench_cpu_ops.main(["--elements", "4K"])
    assert set(res["4K"]) == set(bench_cpu_ops.cases())
    assert all(v > 0 for v in res["4K"].values())
    assert "hf pass A, Adam (lr, betas)" in capsys.readouterr().out


def test_step_overhead_benchmark_runs(capsys):
    import bench_step_overhead
    res = bench_step_overhead.main(["--tensors", "3", "--numel", "10", "--reps", "2", "--warmup", "1"])
    rows = res["3"]
    assert set(rows) == set(bench_step_overhead.configs())
    assert rows["torch Adam fused"]["ratio"] == 1.0
    assert all(r["median_us"] > 0 for r in rows.values())
    # ops per step are counted: torch's fused Adam is a handful; the cpu backend reads some numbers on the host
    assert 0 < rows["torch Adam fused"]["ops"] < 20 and rows["torch Adam fused"]["host_reads"] == 0
    assert rows["hf Adam/SGD exact"]["ops"] > rows["hf Adam/SGD exact"]["host_reads"] > 0
    assert "hf Adam/SGD exact" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_step_overhead.main(["--tensors", "0"])


def test_step_overhead_benchmark_refuses_to_time_skipped_steps(monkeypatch):
    """A step the optimizer skips (here: a non-finite gradient) does less work than a step; the benchmark says so
    instead of reporting its time."""
    import bench_step_overhead

    def skipping(ps):
        ps[0].grad[0] = float("nan")
        return hf.SGD(ps, lr=1e-3, hyper=hf.SGD(lr=1e-9))

    monkeypatch.setattr(bench_step_overhead, "configs", lambda: {
        "torch Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), "hf SGD/SGD exact": skipping})
    with pytest.raises(SystemExit, match="skipped"):
        bench_step_overhead.main(["--tensors", "3", "--numel", "10", "--reps", "2", "--warmup", "2"])


def test_gpu_proof_dry_run(tmp_path):
    """bench/gpu/run.sh --dry-run: argument handling, the phases' summary lines, the environment report, test
    collection of the GPU test files and the benchmark harness on CPU tensors at tiny sizes, with its JSON and
    Markdown writers. A typo in the GPU proof fails here, not on a lent GPU."""
    import json
    import subprocess
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    bad = subprocess.run(["bash", "bench/gpu/run.sh", "--fast"], cwd=root, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
    out = subprocess.run(["bash", "bench/gpu/run.sh", "--dry-run"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for phase in ("env: ok", "build: skipped", "tests: ok", "bench: ok"):
        assert f"phase {phase}" in summary, summary
    assert "test_gpu.py" in (tmp_path / "tests.log").read_text()
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["dry_run"] and res["env"]["torch"]
    sec = res["step"][0]
    assert {"torch Adam fused", "torch AdamW fused", "torch SGD momentum fused"} <= set(sec["rows"])
    hf_rows = [r for r in sec["rows"].values() if r["backend"] != "torch"]
    assert hf_rows and all(r["ratio"] > 0 and r["gbps"] > 0 for r in hf_rows)
    # the bytes model: fp32 Adam learning lr and betas moves 48 B per parameter, bf16 params halve x and g
    assert sec["rows"][f"hf Adam (lr, betas) exact [{hf_rows[0]['backend']}]"]["bytes_per_param"] == 48
    assert res["step"][1]["rows"]["torch Adam fused"]["bytes_per_param"] == 14   # its state is bfloat16 too
    assert all(r["bitwise"] and not r["captured"] for r in res["graph"].values())
    assert res["power"]["warm"]["rel_error"] < 1e-2
    md = (tmp_path / "bench.md").read_text()
    assert "## GPU: no GPU (dry run" in md and "| torch Adam fused |" in md and "### Power iteration" in md


def test_gpu_bench_counts_each_optimizers_own_state_bytes():
    """torch's fused Adam keeps bfloat16 state for bfloat16 parameters, hyperfused float32 state: the GPU
    benchmark's bytes per parameter (and so its bandwidth comparison) counts each one's own."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "gpu"))
    import bench_gpu
    import torch
    # torch's Adam: x read + written, g read, m and v read + written
    assert bench_gpu.stream_bytes((2, 1, 4), torch.bfloat16, "torch") == 3 * 2 + 4 * 2
    assert bench_gpu.stream_bytes((2, 1, 4), torch.float32, "torch") == 7 * 4
    # hyperfused's Adam (lr) exact: x twice, g twice (two passes), six state streams in float32
    assert bench_gpu.stream_bytes((2, 2, 6), torch.bfloat16, "cuda") == 4 * 2 + 6 * 4
    assert bench_gpu.stream_bytes((2, 2, 6), torch.float64, "triton") == 10 * 8
