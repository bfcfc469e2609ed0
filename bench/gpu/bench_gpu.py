"""Phase 4 of the GPU proof: hyperfused's GPU backends against torch's fused optimizers, side by side.

    python bench/gpu/bench_gpu.py --out gpu-out            # on a GPU: 2^28 elements, float32 and bfloat16
    python bench/gpu/bench_gpu.py --out gpu-out --quick    # fewer repetitions
    python bench/gpu/bench_gpu.py --out gpu-out --dry-run  # no GPU: CPU tensors, tiny sizes (proves the harness)

Sections, each timed round-robin in one process (one call of each configuration in turn, so drifts of clock and
temperature hit all alike), CUDA events around each call, medians:
1. copy: a device-to-device copy of N float32 (bytes read + written over time): the bandwidth ceiling.
2. step: 8 tensors of N elements in all (uneven sizes, like a model's), float32 then bfloat16, two gradient
   tensors per parameter used on alternate steps (backward makes a new one each step). torch's fused Adam,
   AdamW and SGD with momentum, and hyperfused's configurations on each GPU backend (cuda, triton), all on the
   same parameters and gradients. Ratio to the baseline, effective bandwidth = the bytes the configuration must
   move (the bytes model: each stream read or written once per pass) over time, as a share of the baseline's
   and of the copy's bandwidth.
3. graph: a step captured in a CUDA graph and replayed vs the eager step (64 small tensors, where launches
   matter), and whether the replayed trajectory equals the eager one bitwise.
4. agd: hf.AGD Frobenius and spectral steps on ResNet-18-shaped bias-free weights, per backend.
5. power: the warm-started power iteration vs torch.linalg.matrix_norm(ord=2) on a 4096x4096 matrix.
6. overhead: the host cost of a step by tensor count (8, 300, 1000 tensors of 4096 elements, where launches and
   Python, not memory, make the time): steps issued back to back, one synchronisation per round, per step, torch's
   fused Adam against hf.Adam and hf.Adam/SGD on each backend (target: 1.5x at 1000 tensors).
7. gtu: AGD's g^T u pass alone on a 4096x4096 matrix and a 50257x768 embedding (few column blocks: their rows
   are split into ranges), the gradient's bytes over the time against torch's u @ g on the same matrix.
Writes bench.json (everything) and bench.md (tables for bench/RESULTS.md, labelled with the device). Targets
missed are printed as MISSED with the measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before the Triton kernels are defined

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import hyperfused as hf  # noqa: E402
from hyperfused import ops  # noqa: E402

GPU = torch.cuda.is_available() and not DRY
DEV = "cuda" if GPU else "cpu"

# --------------------------------------------------------------------------------------------- configurations
# name: (builder(params, backend), streams (param read+write, gradient reads, float32-state reads+writes),
#        baseline). A stream counts once per pass that must touch it; see the module docstring.
BASELINES = {
    "torch Adam fused": (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), (2, 1, 4)),
    "torch AdamW fused": (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True), (2, 1, 4)),
    "torch SGD momentum fused": (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True), (2, 1, 2)),
}
HF = {
    # pass A reads g, m, v, g_prev; pass B reads x, g, m, v and writes x, m, v, g_prev
    "Adam (lr, betas) exact": (lambda p, b: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b), (2, 2, 8),
                               "torch Adam fused"),
    # pass A reads g, m, v; pass B as torch's
    "Adam (lr) exact": (lambda p, b: hf.Adam(p, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=b),
                        (2, 2, 6), "torch Adam fused"),
    # the non-finite read of g, then torch's update, the sums taken from the old m, v in the same read
    "Adam (lr) one-pass": (lambda p, b: hf.Adam(p, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=b,
                                                one_pass=True), (2, 2, 4), "torch Adam fused"),
    "Adam (lr, betas) one-pass": (lambda p, b: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b,
                                                       one_pass=True), (2, 2, 6), "torch Adam fused"),
    # height 0: the non-finite read of g, then torch's update
    "Adam plain (height 0)": (lambda p, b: hf.Adam(p, lr=1e-3, backend=b), (2, 2, 4), "torch Adam fused"),
    # AdamW at height 0: the decay rides in the update, as in torch's fused AdamW
    "AdamW plain (height 0)": (lambda p, b: hf.AdamW(p, lr=1e-3, weight_decay=1e-2, backend=b), (2, 2, 4),
                               "torch AdamW fused"),
    # pass A reads g, g_prev; pass B reads x, g and writes x, g_prev
    "SGD (lr) exact": (lambda p, b: hf.SGD(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b), (2, 2, 2),
                       "torch SGD momentum fused"),
}
# ratio to the baseline that each configuration should meet (the targets, from the bytes model)
TARGETS = {"Adam (lr, betas) exact": 1.8, "Adam (lr) exact": 1.5, "Adam (lr) one-pass": 1.2, "SGD (lr) exact": 1.3}
BW_TARGET = 0.85            # effective bandwidth >= 85% of torch fused Adam's
TRITON_VS_CUDA = 1.15       # Triton within 1.15x of the CUDA backend
SPECTRAL_VS_FRO = 2.0       # spectral AGD <= 2x Frobenius
POWER_VS_NORM = 100.0       # power iteration >= 100x faster than matrix_norm(ord=2)
OVERHEAD_AT_MOST = 1.5      # host cost of a step at the largest tensor count <= 1.5x torch fused Adam's
OVERHEAD_COUNTS = (8, 300, 1000)
GTU_SHAPES = ((4096, 4096), (50257, 768))

RESNET18 = ([(64, 3, 7, 7)] + [(64, 64, 3, 3)] * 4 + [(128, 64, 3, 3)] + [(128, 128, 3, 3)] * 3 + [(128, 64, 1, 1)]
            + [(256, 128, 3, 3)] + [(256, 256, 3, 3)] * 3 + [(256, 128, 1, 1)] + [(512, 256, 3, 3)]
            + [(512, 512, 3, 3)] * 3 + [(512, 256, 1, 1)] + [(1000, 512)])


ONLY = []          # --backends: a subset


def backends() -> list:
    """The compiled backends that run on this device (dry run: the CPU kernels stand in for cuda)."""
    if ONLY:
        return list(ONLY)
    out = []
    if GPU and ops.cuda_extension_available():
        out.append("cuda")
    if not GPU and ops.extension_available():
        out.append("cpu")
    if ops.triton_available():
        out.append("triton")
    return out


def state_dtype(dtype, backend: str) -> torch.dtype:
    """The dtype of the optimizer's element-wise state for parameters of ``dtype``: torch's fused optimizers keep
    it in the parameters' dtype (bfloat16 state for bfloat16 parameters), hyperfused in float32 (float64 for
    float64 parameters)."""
    if backend == "torch":
        return dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def stream_bytes(streams, dtype, backend: str = "hf") -> int:
    p_rw, g_r, s_rw = streams
    item = torch.empty((), dtype=dtype).element_size()
    state = torch.empty((), dtype=state_dtype(dtype, backend)).element_size()
    return (p_rw + g_r) * item + s_rw * state


# --------------------------------------------------------------------------------------------- timing
def _sync():
    if GPU:
        torch.cuda.synchronize()


class _Clock:
    """Seconds of one call: CUDA events on a GPU (the stream's time from start to end, host gaps included),
    the host clock otherwise."""

    def __enter__(self):
        if GPU:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if GPU:
            self.b.record()
            self.b.synchronize()
            self.s = self.a.elapsed_time(self.b) / 1e3
        else:
            self.s = time.perf_counter() - self.t0


def round_robin(calls: dict, reps: int, warmup: int, before=None) -> dict:
    """name -> median seconds. ``before(name, i)`` runs untimed before call i of each name."""
    times = {k: [] for k in calls}
    for i in range(warmup + reps):
        for name, fn in calls.items():
            if before is not None:
                before(name, i)
            with _Clock() as c:
                fn()
            if i >= warmup:
                times[name].append(c.s)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------------------------- sections
def copy_bandwidth(n: int, reps: int) -> dict:
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    t = round_robin({"copy": lambda: dst.copy_(src)}, reps, 3)["copy"]
    return {"elements": n, "median_ms": 1e3 * t, "gbps": 8 * n / t / 1e9}


def make_params(n: int, dtype, count: int = 8):
    weights = [1 + (i % 3) for i in range(count)]
    sizes = [n * w // sum(weights) for w in weights]
    sizes[-1] += n - sum(sizes)
    g = torch.Generator(device=DEV).manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g, device=DEV) * 0.1).to(dtype)) for s in sizes]
    grads = [tuple((torch.randn(s, generator=g, device=DEV) * 1e-3).to(dtype) for _ in range(2)) for s in sizes]
    return params, grads


def step_section(n: int, dtype, reps: int, warmup: int, copy_gbps: float) -> dict:
    params, grads = make_params(n, dtype)
    opts, meta = {}, {}
    for name, (build, streams) in BASELINES.items():
        opts[name] = build(params)
        meta[name] = {"streams": streams, "baseline": None, "config": name, "backend": "torch"}
    for b in backends():
        for name, (build, streams, base) in HF.items():
            key = f"hf {name} [{b}]"
            opts[key] = build(params, b)
            meta[key] = {"streams": streams, "baseline": base, "config": name, "backend": b}

    def before(_name, i):
        for p, pair in zip(params, grads):
            p.grad = pair[i % 2]

    med = round_robin({k: o.step for k, o in opts.items()}, reps, warmup, before)
    rows = {}
    for key, m in meta.items():
        nbytes = stream_bytes(m["streams"], dtype, m["backend"])
        rows[key] = dict(m, median_ms=1e3 * med[key], bytes_per_param=nbytes, gbps=nbytes * n / med[key] / 1e9)
        rows[key]["of_copy"] = rows[key]["gbps"] / copy_gbps
    for key, r in rows.items():
        base = rows.get(r["baseline"])
        if base is not None:
            r["ratio"] = r["median_ms"] / base["median_ms"]
            r["bw_vs_baseline"] = r["gbps"] / base["gbps"]
            if r["config"] in TARGETS:
                r["target"] = TARGETS[r["config"]]
                r["met"] = r["ratio"] <= r["target"]
        if r["backend"] == "triton" and f"hf {r['config']} [cuda]" in rows:
            r["vs_cuda"] = r["median_ms"] / rows[f"hf {r['config']} [cuda]"]["median_ms"]
    del opts, params, grads
    _sync()
    if GPU:
        torch.cuda.empty_cache()
    return {"elements": n, "dtype": str(dtype).replace("torch.", ""), "rows": rows}


def graph_section(reps: int, count: int = 64, size: int = 16384) -> dict:
    """Eager step vs the same step captured once in a CUDA graph and replayed, on `count` small tensors, and
    whether K replays give the eager trajectory bitwise. Without a GPU the 'replay' is an eager step (the
    harness runs; nothing is measured)."""
    out = {}
    for b in backends():
        def build():
            g = torch.Generator(device=DEV).manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(size, generator=g, device=DEV) * 0.1) for _ in range(count)]
            for p in ps:
                p.grad = torch.zeros_like(p)
            return ps, hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-6), backend=b)

        def grads(t, ps):
            g = torch.Generator(device=DEV).manual_seed(100 + t)
            return [torch.randn(p.shape, generator=g, device=DEV) * 1e-2 for p in ps]

        p_e, o_e = build()
        p_g, o_g = build()
        side = torch.cuda.Stream() if GPU else None
        with (torch.cuda.stream(side) if GPU else contextlib.nullcontext()):
            if GPU:
                side.wait_stream(torch.cuda.current_stream())
            for t in range(3):                                   # state created outside the capture
                for ps, o in ((p_e, o_e), (p_g, o_g)):
                    for p, gr in zip(ps, grads(t, ps)):
                        p.grad.copy_(gr)
                    o.step()
        if GPU:
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                o_g.step()
            replay = graph.replay
        else:
            replay = o_g.step
        for t in range(3, 13):                                   # the trajectories, step by step
            for p, gr in zip(p_e, grads(t, p_e)):
                p.grad.copy_(gr)
            o_e.step()
            for p, gr in zip(p_g, grads(t, p_g)):
                p.grad.copy_(gr)
            replay()
        _sync()
        bitwise = all(torch.equal(a, c) for a, c in zip(p_e, p_g)) and \
            [lv.hyperparameters() for lv in o_e.levels] == [lv.hyperparameters() for lv in o_g.levels]
        max_diff = max(float((a - c).abs().max()) for a, c in zip(p_e, p_g))
        med = round_robin({"eager": o_e.step, "graph": replay}, reps, 3)
        out[b] = {"eager_ms": 1e3 * med["eager"], "graph_ms": 1e3 * med["graph"],
                  "speedup": med["eager"] / med["graph"], "bitwise": bitwise, "max_abs_diff": max_diff,
                  "tensors": count, "elements": count * size, "captured": GPU}
    return out


def agd_section(reps: int, shapes) -> dict:
    g = torch.Generator(device=DEV).manual_seed(0)

    def grad_like(shape):
        # a few dominant directions per slice (rank 4) plus noise, as minibatch gradients have
        S = 1 if len(shape) == 2 else shape[2] * shape[3]
        low = torch.randn(S, shape[0], 4, generator=g, device=DEV) @ torch.randn(S, 4, shape[1], generator=g,
                                                                                   device=DEV)
        mat = low + 0.1 * torch.randn(S, shape[0], shape[1], generator=g, device=DEV)
        return ((mat[0] if len(shape) == 2 else mat.permute(1, 2, 0).reshape(shape)) * 1e-3).contiguous()

    ps = [torch.nn.Parameter(torch.randn(*s, generator=g, device=DEV) * 0.01) for s in shapes]
    for p in ps:
        p.grad = grad_like(p.shape)
    calls = {}
    for b in backends():
        for norm in ("frobenius", "spectral"):
            calls[f"{norm} [{b}]"] = hf.AGD(ps, norm=norm, backend=b).step
    med = round_robin(calls, reps, 3)
    out = {"parameters": sum(p.numel() for p in ps), "tensors": len(ps),
           "rows": {k: {"median_ms": 1e3 * v} for k, v in med.items()}}
    for b in backends():
        fro, spec = out["rows"].get(f"frobenius [{b}]"), out["rows"].get(f"spectral [{b}]")
        spec["vs_frobenius"] = spec["median_ms"] / fro["median_ms"]
        spec["met"] = spec["vs_frobenius"] <= SPECTRAL_VS_FRO
    return out


def power_section(reps: int, dim: int) -> dict:
    g = torch.Generator(device=DEV).manual_seed(0)
    A = (torch.randn(dim, 8, generator=g, device=DEV) @ torch.randn(8, dim, generator=g, device=DEV)) * 0.1 \
        + torch.randn(dim, dim, generator=g, device=DEV) * 0.01
    B = A + 1e-4 * torch.randn(dim, dim, generator=g, device=DEV)     # the next step's gradient: a small change
    u0 = torch.nn.functional.normalize(torch.randn(dim, generator=g, device=DEV), dim=0)
    v0 = torch.nn.functional.normalize(torch.randn(dim, generator=g, device=DEV), dim=0)
    _, (u,), (v,), _ = hf.ops.power_iteration([A], [u0], [v0], tol=1e-6, max_iter=200)   # settled on A
    exact = float(torch.linalg.matrix_norm(B.double(), ord=2))
    res = {}

    def warm():
        res["warm"] = hf.ops.power_iteration([B], [u], [v], tol=1e-3, max_iter=20)

    def cold():
        res["cold"] = hf.ops.power_iteration([B], [u0], [v0], tol=1e-3, max_iter=20)

    med = round_robin({"warm": warm, "cold": cold}, reps, 2)
    # an SVD of 4096x4096 takes long: a few repetitions are enough for a median
    med.update(round_robin({"matrix_norm": lambda: torch.linalg.matrix_norm(B, ord=2)}, min(reps, 5), 1))
    out = {"dim": dim, "matrix_norm_ms": 1e3 * med["matrix_norm"]}
    for k in ("warm", "cold"):
        (s,), _, _, (iters,) = res[k]
        out[k] = {"median_ms": 1e3 * med[k], "speedup": med["matrix_norm"] / med[k], "iterations": iters,
                  "rel_error": abs(float(s) - exact) / exact}
    out["met"] = out["warm"]["speedup"] >= POWER_VS_NORM
    return out


def overhead_section(rounds: int, steps: int, counts, size: int) -> dict:
    """Per tensor count: the time of a step of small tensors (launches and Python), `steps` steps issued back to
    back with one synchronisation at the end (as a training loop issues them), the median over `rounds` rounds
    taken round-robin over the configurations."""
    out = {}
    for count in counts:
        def build(make, seed=count):
            g = torch.Generator(device=DEV).manual_seed(seed)
            ps = [torch.nn.Parameter(torch.randn(size, generator=g, device=DEV) * 0.1) for _ in range(count)]
            for p in ps:
                p.grad = torch.randn(size, generator=g, device=DEV) * 1e-3
            return make(ps)
        makers = {"torch Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)}
        for b in backends():
            makers[f"hf Adam [{b}]"] = lambda ps, b=b: hf.Adam(ps, lr=1e-3, backend=b)
            makers[f"hf Adam/SGD [{b}]"] = lambda ps, b=b: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b)
        opts = {name: build(make) for name, make in makers.items()}
        for o in opts.values():                        # state made, kernels compiled, caches filled
            for _ in range(3):
                o.step()
        _sync()
        times = {name: [] for name in opts}
        for _ in range(rounds):
            for name, o in opts.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    o.step()
                _sync()
                times[name].append((time.perf_counter() - t0) / steps)
        base = statistics.median(times["torch Adam fused"])
        out[str(count)] = {name: {"us": 1e6 * statistics.median(v), "ratio": statistics.median(v) / base}
                           for name, v in times.items()}
        del opts
    return out


def gtu_section(reps: int, shapes) -> dict:
    """AGD's g^T u alone (float32 gradient, float64 u), per backend, against torch's u @ g (a gemv)."""
    out = {}
    g_ = torch.Generator(device=DEV).manual_seed(0)
    for shape in shapes:
        g = torch.randn(*shape, generator=g_, device=DEV)
        u = torch.randn(1, shape[0], generator=g_, device=DEV, dtype=torch.float64)
        u32 = u[0].float()
        calls = {"torch u @ g": lambda: u32 @ g}
        for b in backends():
            kern = ops.backends.get(b).agd_power_kernels([g])
            if kern is not None:
                calls[f"agd_gtu [{b}]"] = lambda k=kern[1]: k([g], [u])
        med = round_robin(calls, reps, 3)
        gb = g.numel() * g.element_size() / 1e9
        out["x".join(map(str, shape))] = {k: {"median_ms": 1e3 * v, "gbps": gb / v} for k, v in med.items()}
    return out


# --------------------------------------------------------------------------------------------- reports
def _x(v, fmt="{:.2f}x"):
    return fmt.format(v) if v is not None else ""


def markdown(res: dict) -> str:
    env = res["env"]
    dev = env.get("gpu") or "no GPU (dry run on CPU tensors: these times mean nothing for a GPU)"
    lines = [f"## GPU: {dev}, {res['date']}", "",
             f"`bash bench/gpu/run.sh{' --quick' if res['quick'] else ''}`: torch {env['torch']}, triton "
             f"{env.get('triton')}, CUDA {env.get('torch_cuda')}, driver {env.get('driver')}, {res['reps']} "
             f"repetitions round-robin, CUDA events, medians.", "",
             f"Device-to-device copy: {res['copy']['gbps']:.0f} GB/s (read + write, {res['copy']['elements']} "
             "float32).", ""]
    for sec in res["step"]:
        lines += [f"### Step, {sec['elements']} {sec['dtype']} elements in 8 tensors", ""]
        if sec["dtype"] in ("torch.bfloat16", "torch.float16", "bfloat16", "float16"):
            lines += ["State dtypes differ: torch's fused optimizers keep their state in the parameters' dtype "
                      f"({sec['dtype']}, 2 B an element), hyperfused in float32 (4 B); B/param counts each one's "
                      "own, so `BW vs baseline` compares bandwidth, and `ratio` the time for different work.", ""]
        lines += [
                  "| configuration | B/param | median ms | ratio | target | GB/s | BW vs baseline | of copy | "
                  "triton/cuda |", "|---|---|---|---|---|---|---|---|---|"]
        for key, r in sec["rows"].items():
            tgt = ""
            if "target" in r:
                tgt = f"{r['target']:.2f}x " + ("met" if r["met"] else "**MISSED**")
            lines.append(f"| {key} | {r['bytes_per_param']} | {r['median_ms']:.3f} | {_x(r.get('ratio'))} | {tgt} | "
                         f"{r['gbps']:.4g} | {_x(r.get('bw_vs_baseline'), '{:.0%}')} | {r['of_copy']:.0%} | "
                         f"{_x(r.get('vs_cuda'))} |")
        lines.append("")
    g = res.get("graph", {})
    if g:
        lines += ["### CUDA graph: hf.Adam/SGD exact, 64 tensors of 16K", "",
                  "| backend | eager ms | replay ms | speedup | trajectory bitwise | max abs diff |",
                  "|---|---|---|---|---|---|"]
        for b, r in g.items():
            lines.append(f"| {b} | {r['eager_ms']:.3f} | {r['graph_ms']:.3f} | {r['speedup']:.2f}x | "
                         f"{'yes' if r['bitwise'] else '**NO**'} | {r['max_abs_diff']:.3g} |")
        lines.append("")
    a = res.get("agd")
    if a:
        lines += [f"### AGD step, {a['tensors']} ResNet-18-shaped weights ({a['parameters']} parameters)", "",
                  "| step | median ms | spectral / Frobenius |", "|---|---|---|"]
        for k, r in a["rows"].items():
            vs = ""
            if "vs_frobenius" in r:
                vs = f"{r['vs_frobenius']:.2f}x (target {SPECTRAL_VS_FRO}x: {'met' if r['met'] else '**MISSED**'})"
            lines.append(f"| {k} | {r['median_ms']:.3f} | {vs} |")
        lines.append("")
    pw = res.get("power")
    if pw:
        lines += [f"### Power iteration, {pw['dim']}x{pw['dim']} (tol 1e-3)", "",
                  "| | median ms | vs matrix_norm(ord=2) | iterations | rel. error |", "|---|---|---|---|---|",
                  f"| torch.linalg.matrix_norm(ord=2) | {pw['matrix_norm_ms']:.3f} | 1x | | |"]
        for k in ("warm", "cold"):
            r = pw[k]
            lines.append(f"| power iteration, {k} start | {r['median_ms']:.3f} | {r['speedup']:.0f}x faster | "
                         f"{r['iterations']} | {r['rel_error']:.1e} |")
        lines += ["", f"Target: warm start >= {POWER_VS_NORM:.0f}x: {'met' if pw['met'] else '**MISSED**'}.", ""]
    ov = res.get("overhead")
    if ov:
        counts = list(ov)
        lines += ["### Host cost of a step by tensor count (4096-element float32 tensors; us per step, back to back)",
                  "", "| configuration | " + " | ".join(f"{c} tensors | vs torch" for c in counts) + " |",
                  "|---|" + "---|---|" * len(counts)]
        for name in ov[counts[0]]:
            lines.append(f"| {name} | " + " | ".join(f"{ov[c][name]['us']:.0f} | {ov[c][name]['ratio']:.2f}x"
                                                   for c in counts) + " |")
        lines += ["", f"Target: at most {OVERHEAD_AT_MOST}x torch's fused Adam at {counts[-1]} tensors.", ""]
    gt = res.get("gtu")
    if gt:
        lines += ["### AGD g^T u alone (float32 gradient)", "", "| matrix | call | median ms | GB/s of the gradient |",
                  "|---|---|---|---|"]
        for shape, rows in gt.items():
            for k, r in rows.items():
                lines.append(f"| {shape} | {k} | {r['median_ms']:.3f} | {r['gbps']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def missed(res: dict) -> list:
    out = []
    for sec in res["step"]:
        for key, r in sec["rows"].items():
            if r.get("met") is False:
                out.append(f"{sec['dtype']} {key}: {r['ratio']:.2f}x > {r['target']}x")
            if r["config"] in TARGETS and r.get("bw_vs_baseline", 1) < BW_TARGET and sec["dtype"] == "float32":
                out.append(f"{sec['dtype']} {key}: bandwidth {r['bw_vs_baseline']:.0%} of the baseline's < "
                           f"{BW_TARGET:.0%}")
            if r.get("vs_cuda", 0) > TRITON_VS_CUDA:
                out.append(f"{sec['dtype']} {key}: triton {r['vs_cuda']:.2f}x cuda > {TRITON_VS_CUDA}x")
    for b, r in res.get("graph", {}).items():
        if not r["bitwise"]:
            out.append(f"graph [{b}]: replay differs from eager (max abs diff {r['max_abs_diff']:.3g})")
    for k, r in res.get("agd", {}).get("rows", {}).items():
        if r.get("met") is False:
            out.append(f"agd {k}: {r['vs_frobenius']:.2f}x Frobenius > {SPECTRAL_VS_FRO}x")
    if res.get("power") and not res["power"]["met"]:
        out.append(f"power iteration: {res['power']['warm']['speedup']:.0f}x < {POWER_VS_NORM:.0f}x")
    ov = res.get("overhead")
    if ov:
        last = list(ov)[-1]
        for name, r in ov[last].items():
            if name.startswith("hf") and r["ratio"] > OVERHEAD_AT_MOST:
                out.append(f"host cost at {last} tensors, {name}: {r['ratio']:.2f}x torch fused Adam > "
                           f"{OVERHEAD_AT_MOST}x")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-out")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--dry-run", action="store_true", help="CPU tensors, tiny sizes: the harness only")
    ap.add_argument("--elements", type=int, default=None, help="elements per step benchmark (default 2^28)")
    ap.add_argument("--sections", default="copy,step,graph,agd,power,overhead,gtu")
    ap.add_argument("--backends", default="", help="comma-separated subset of the backends (default: all here)")
    args = ap.parse_args(argv)
    ONLY[:] = [b for b in args.backends.split(",") if b]
    if not GPU and not args.dry_run:
        print("bench_gpu.py: no CUDA device; use --dry-run to exercise the harness on CPU", file=sys.stderr)
        return 2
    import env as env_mod
    os.makedirs(args.out, exist_ok=True)
    sections = set(args.sections.split(","))
    n = args.elements or (2 ** 28 if GPU else 4096)
    reps = 2 if args.dry_run else (15 if args.quick else 40)
    res = {"env": env_mod.describe(), "date": datetime.date.today().isoformat(), "quick": args.quick,
           "dry_run": args.dry_run, "reps": reps, "backends": backends(), "step": [], "missed": []}
    print(f"device {res['env'].get('gpu')}, backends {res['backends']}, {n} elements, {reps} reps", flush=True)
    t0 = time.time()

    def save(done: str):
        """After each section: the files as they stand (a run cut off keeps what it measured)."""
        res["missed"] = missed(res)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(markdown(res) + "\n")
        print(f"{done}: done [{time.time() - t0:.0f} s]", flush=True)

    res["copy"] = copy_bandwidth(n, reps)
    save(f"copy {res['copy']['gbps']:.0f} GB/s")
    if "step" in sections:
        for dtype in (torch.float32, torch.bfloat16):
            res["step"].append(step_section(n, dtype, reps, 5 if GPU else 1, res["copy"]["gbps"]))
            save(f"step {dtype}")
    if "graph" in sections:
        res["graph"] = graph_section(reps, *((64, 16384) if GPU else (3, 64)))
        save("graph")
    if "agd" in sections:
        res["agd"] = agd_section(reps, RESNET18 if GPU else [(16, 8), (8, 4, 3, 3)])
        save("agd")
    if "power" in sections:
        res["power"] = power_section(reps, 4096 if GPU else 64)
        save("power")
    if "overhead" in sections:
        res["overhead"] = overhead_section(3 if args.quick or not GPU else 5, 20 if GPU else 2,
                                           OVERHEAD_COUNTS if GPU else (2, 6), 4096 if GPU else 64)
        save("overhead")
    if "gtu" in sections:
        res["gtu"] = gtu_section(reps, GTU_SHAPES if GPU else ((300, 4), (64, 64)))
        save("gtu")
    print(markdown(res))
    print("targets missed:" if res["missed"] else "targets: all met")
    for m in res["missed"]:
        print("  MISSED", m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
