"""The microbenchmarks (bench/micro, pytest-benchmark) keep running: `pytest bench/micro` in a subprocess at the
tiny size with --benchmark-disable (every benchmark body runs once), then a few benchmarks timed for real to check
what they record. On CPU tensors (the GPU, if any, hidden): the same cases on every machine, well under a minute."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# on CPU with the C++ extension built: per dtype (float32, bfloat16) 34 op entries (15 ops; torch's counterpart,
# the cpu and the reference backend where each has one) and 28 steps (4 torch baselines, 12 hyperfused
# configurations on cpu and reference)
EXPECTED = 124
OPS = ["hyper_reduce", "hyper_update exact", "hyper_update one-pass (scal_jac)", "nonfinite_count", "multi_tensor_dot",
       "hyper_reduce_tower", "hyper_update_tower", "hyper_tower_plan", "hyper_tower_commit", "agd_sumsq",
       "agd_update", "agd_gv", "agd_gtu", "agd_normalize_rows", "power iteration"]
STEPS = ["torch Adam", "torch AdamW", "torch SGD momentum", "torch SGD", "hf Adam plain (height 0)",
         "hf Adam (lr) exact", "hf Adam (lr, betas) exact", "hf Adam (lr) one-pass", "hf Adam (lr, betas) one-pass",
         "hf SGD (lr) exact", "hf SGD (lr) one-pass", "hf SGD momentum plain (height 0)", "hf SGD momentum (lr) exact",
         "hf SGD momentum (lr) one-pass", "hf AGD frobenius", "hf AGD spectral"]


def _run(args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_MICRO_SIZE="tiny")
    env.pop("HF_MICRO_BACKENDS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--micro-size", "tiny", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_every_microbenchmark_runs_once():
    res = _run(["bench/micro", "-v", "--benchmark-disable"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    passed = re.findall(r"::test_(?:op|step)\[(.+)\] PASSED", res.stdout)
    summary = re.search(r"(\d+) passed", res.stdout)
    assert summary and int(summary.group(1)) == len(passed), out[-3000:]
    assert len(passed) >= EXPECTED, f"{len(passed)} benchmarks ran, expected at least {EXPECTED}"
    assert "skipped" not in res.stdout.splitlines()[-1]
    for dt in ("float32", "bfloat16"):
        for op in OPS:
            assert f"{dt}-{op}-cpu" in passed, (dt, op)
        for op in ("hyper_reduce", "hyper_update exact", "multi_tensor_dot", "power iteration"):
            assert f"{dt}-{op}-torch" in passed and f"{dt}-{op}-reference" in passed, (dt, op)
        for step in STEPS:
            backends = ["torch"] if step.startswith("torch") else ["cpu", "reference"]
            for b in backends:
                assert f"{dt}-{step}-{b}" in passed, (dt, step, b)


def test_microbenchmarks_record_bytes_bandwidth_and_ratio(tmp_path):
    """Timed for real (briefly): the update of Adam learning lr and betas, exact mode, moves 28 B per element on
    the cpu backend (which keeps the gradient tensor as the previous one), 32 B on the reference backend, and
    torch's fused Adam 28 B (docs/MATH.md §6); GB/s and the ratio to torch come from the measured means."""
    ids = [f"bench/micro/test_micro_ops.py::test_op[float32-hyper_update exact-{b}]"
           for b in ("torch", "cpu", "reference")]
    out_json = tmp_path / "bench.json"
    res = _run([*ids, "-q", "--benchmark-only", "--benchmark-max-time", "0.02", f"--benchmark-json={out_json}"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    assert "hyperfused / torch" in res.stdout and "ours/torch" in res.stdout
    rows = {b["extra_info"]["backend"]: b for b in json.loads(out_json.read_text())["benchmarks"]}
    assert set(rows) == {"torch", "cpu", "reference"}
    n = 4096
    assert {b: r["extra_info"]["bytes"] for b, r in rows.items()} == {"torch": 28 * n, "cpu": 28 * n,
                                                                      "reference": 32 * n}
    for b, r in rows.items():
        info, mean = r["extra_info"], r["stats"]["mean"]
        assert r["group"] == "op hyper_update exact [float32]"
        assert abs(info["gbps"] - info["bytes"] / mean / 1e9) <= 1e-9 * info["gbps"]
        if b != "torch":
            assert info["baseline"] == "torch hyper_update exact"
            assert abs(info["vs_torch"] - mean / rows["torch"]["stats"]["mean"]) <= 1e-9 * info["vs_torch"]
        else:
            assert "vs_torch" not in info
