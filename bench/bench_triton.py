"""GPU step benchmark of every hypergradient backend against torch.optim.Adam(fused=True), and the launch count.

    python bench/bench_triton.py                          # on a CUDA machine: 16M and 64M float32 elements
    python bench/bench_triton.py --elements 16M --reps 200

On a CUDA machine every configuration is timed on every backend that runs there (triton; cuda when the CUDA
extension is built; reference) in the same run, round-robin, with CUDA events, and reported as the median step
time, the ratio to torch's fused Adam (or fused SGD with momentum) and the effective bandwidth: the bytes
model of docs/MATH.md §6 (bytes per parameter, fp32) x N / time.

Without CUDA it runs a tiny smoke configuration on CPU tensors under the Triton interpreter (so CI proves the
script works) and says plainly that no GPU numbers were taken: interpreter times mean nothing for a GPU.

Both ways it prints the launch count per step: Triton kernel launches and all ATen ops (the small device-side
ops of the tower's scalar step and the argument tables) for a model of 24 tensors and one of 240, the same
optimizer, to show that the count does not grow with the number of tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")     # before the kernels are defined

import hyperfused as hf  # noqa: E402
from hyperfused import ops  # noqa: E402

# name: (builder(params, backend), bytes per param (docs/MATH.md §6, fp32), baseline, backends it runs on)
CONFIGS = {
    "torch Adam fused": (lambda p, b: torch.optim.Adam(p, lr=1e-3, fused=True), 28, None, (None,)),
    "torch SGD momentum fused": (lambda p, b: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True), 20, None,
                                 (None,)),
    "Adam (lr, betas) exact": (lambda p, b: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b), 48,
                               "torch Adam fused", "all"),
    "Adam (lr) exact": (lambda p, b: hf.Adam(p, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=b), 40,
                        "torch Adam fused", "all"),
    "Adam (lr) one-pass": (lambda p, b: hf.Adam(p, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=b,
                                                one_pass=True), 32, "torch Adam fused", "all"),
    "Adam (lr, betas) one-pass": (lambda p, b: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b,
                                                       one_pass=True), 40, "torch Adam fused", "all"),
    "SGD (lr) exact": (lambda p, b: hf.SGD(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b), 24,
                       "torch SGD momentum fused", "all"),
}


def parse_n(text: str) -> int:
    text = text.upper()
    mult = {"K": 10 ** 3, "M": 2 ** 20}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * mult)


def backends():
    out = []
    if ops.triton_available():
        out.append("triton")
    if GPU and ops.cuda_extension_available():
        out.append("cuda")
    out.append("reference")
    return out


def make_params(n: int, device, count: int = 8):
    weights = [1 + (i % 3) for i in range(count)]
    sizes = [n * w // sum(weights) for w in weights]
    sizes[-1] += n - sum(sizes)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(device)) for s in sizes]
    grads = [((torch.randn(p.shape, generator=g) * 1e-3).to(device), (torch.randn(p.shape, generator=g) * 1e-3)
              .to(device)) for p in params]
    return params, grads


def _timer():
    if GPU:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        return lambda: (end.record(), end.synchronize(), start.elapsed_time(end) / 1e3)[2]
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def run(n: int, reps: int, warmup: int, names, device):
    rows = {}
    for name in names:
        build, _, _, where = CONFIGS[name]
        for b in (backends() if where == "all" else where):
            params, grads = make_params(n, device)
            rows[name if b is None else f"hf {name} [{b}]"] = (name, build(params, b), params, grads)
    times = {k: [] for k in rows}
    for i in range(warmup + reps):
        for key, (_, opt, params, grads) in rows.items():
            for p, pair in zip(params, grads):
                p.grad = pair[i % 2]
            stop = _timer()
            opt.step()
            dt = stop()
            if i >= warmup:
                times[key].append(dt)
    out = {}
    for key, (name, *_rest) in rows.items():
        med = statistics.median(times[key])
        bytes_model, base = CONFIGS[name][1], CONFIGS[name][2]
        out[key] = {"median_ms": 1e3 * med, "gbps": bytes_model * n / med / 1e9, "bytes_per_param": bytes_model,
                    "baseline": base}
    for r in out.values():
        if r["baseline"] in out:
            r["ratio"] = r["median_ms"] / out[r["baseline"]]["median_ms"]
            r["bw_vs_baseline"] = r["gbps"] / out[r["baseline"]]["gbps"]
    return out


VIEWS = {"detach", "alias", "view", "_unsafe_view", "expand", "select", "slice", "unsqueeze", "squeeze", "t",
         "as_strided", "permute", "reshape", "unbind", "split", "split_with_sizes", "lift_fresh"}


def launch_counts(device):
    """Triton launches and ATen ops per step, for 24 and 240 tensors (Adam/SGD exact and one-pass)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from hyperfused.ops.triton import hyper

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # views and aliases launch nothing; the interpreter's handling of kernel arguments is not the step's
            if func.overloadpacket.__name__ not in VIEWS and not hyper.LAUNCHES["inside"]:
                self.n += 1
            return func(*args, **(kwargs or {}))

    out = {}
    for one_pass in (False, True):
        for count in (24, 240):
            params = [torch.nn.Parameter(torch.randn(16, device=device)) for _ in range(count)]
            opt = hf.Adam(params, lr=1e-3, hyper=hf.SGD(lr=1e-6), backend="triton", one_pass=one_pass)
            for step in range(2):
                for p in params:
                    p.grad = torch.randn_like(p)
                before = hyper.LAUNCHES["count"]
                with Count() as c:
                    opt.step()
            out[f"{'one-pass' if one_pass else 'exact'}, {count} tensors"] = {
                "triton_launches": hyper.LAUNCHES["count"] - before, "aten_ops": c.n}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", nargs="+", default=None, help="default: 16M 64M on a GPU, 4K without one")
    ap.add_argument("--reps", type=int, default=None, help="default: 100 on a GPU, 1 without one")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--only", nargs="*", help="subset of configurations")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    device = "cuda" if GPU else "cpu"
    elements = args.elements or (["16M", "64M"] if GPU else ["4K"])
    reps = args.reps or (100 if GPU else 1)
    warmup = args.warmup if args.warmup is not None else (10 if GPU else 1)
    names = args.only or list(CONFIGS)
    if GPU:
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, {reps} reps (median), round-robin")
    else:
        print("NO GPU: no GPU numbers were taken. This is a smoke run on CPU tensors under the Triton interpreter "
              "(TRITON_INTERPRET=1): it proves the script and the kernels run; its times mean nothing for a GPU.")
    print(f"backends: {', '.join(backends())}")
    results = {}
    for text in elements:
        n = parse_n(text)
        res = run(n, reps, warmup, names, device)
        results[text] = res
        print(f"\n{text} float32 elements in 8 tensors")
        print(f"{'configuration':<44} {'B/param':>7} {'median ms':>10} {'GB/s':>8} {'ratio':>7} {'BW vs base':>10}")
        for key, r in res.items():
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
            bw = f"{100 * r['bw_vs_baseline']:.0f}%" if "bw_vs_baseline" in r else ""
            print(f"{key:<44} {r['bytes_per_param']:>7} {r['median_ms']:>10.3f} {r['gbps']:>8.2f} {ratio:>7} {bw:>10}")
    counts = launch_counts(device) if ops.triton_available() else {}
    if counts:
        print("\nlaunches per step, hf.Adam/SGD on backend='triton'")
        for key, c in counts.items():
            print(f"  {key:<26} Triton kernels {c['triton_launches']:>2}   ATen ops (scalar tower, tables) {c['aten_ops']:>4}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name() if GPU else None, "reps": reps,
                       "torch": torch.__version__, "results": results, "launches": counts}, f, indent=1)
    return {"gpu": GPU, "results": results, "launches": counts}


if __name__ == "__main__":
    main(sys.argv[1:])
