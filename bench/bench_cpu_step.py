"""Optimizer step time on CPU: hyperfused's fused kernels against torch's fused optimizers, side by side.

    python bench/bench_cpu_step.py --threads 2 --elements 16M 64M --reps 30

8 float32 tensors totalling N elements (sizes uneven, like a model's), the gradients alternating between two
tensors per parameter as a new one comes from every backward. Every configuration is timed in the
same run, round-robin (one step of each in turn, so machine noise hits all alike), and reported as the
median step time, the ratio to torch's fused optimizer and the effective bandwidth: bytes moved per
parameter (docs/MATH.md §6's model) x N / time.

The same run also times read-only probes (torch.sum, torch.dot, hyperfused's non-finite count) and gives each
configuration a floor: the ratio that an implementation keeping the optimizers' contract cannot beat on this
machine. On a machine where a core's reads are limited by how many cache misses it keeps in flight, write-backs
cost little (an in-place a += b, 8 B read and 4 B written, takes the time of a dot product's 8 B read), so a
pass costs its bytes *read*: the floor is
    (read-only bytes / fastest read-only probe + update bytes read / the baseline's read rate) / baseline time,
with the bytes each pass must read (READS below): exact mode's pass A must finish before anything is written (the
new hyperparameters and the skip decision come from it) and reads the gradient and the state its Jacobian needs;
the update reads what torch's fused update reads (one-pass and plain steps read the gradients once first for the
skip decision). The BW ceiling is the bandwidth ratio that the floor allows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import hyperfused as hf

# bytes per parameter each configuration moves, fp32: docs/MATH.md §6's model, less the 4 B write of the previous
# gradient where the "cpu" backend keeps the gradient tensor itself instead of copying it (Adam learning betas,
# SGD without momentum); the difference is marked in the names.
CONFIGS = {
    # name: (builder, bytes model, baseline name)
    "torch Adam fused": (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), 28, None),
    "hf Adam (lr, betas) exact": (lambda p: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend="cpu"), 44,
                                  "torch Adam fused"),
    "hf Adam (lr) exact": (lambda p: hf.Adam(p, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend="cpu"), 40,
                           "torch Adam fused"),
    "hf Adam (lr) one-pass": (lambda p: hf.Adam(p, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend="cpu",
                                                one_pass=True), 32, "torch Adam fused"),
    "hf Adam (lr, betas) one-pass": (lambda p: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend="cpu",
                                                       one_pass=True), 36, "torch Adam fused"),
    "hf Adam plain (no tower)": (lambda p: hf.Adam(p, lr=1e-3, backend="cpu"), 28, "torch Adam fused"),
    "torch SGD momentum fused": (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True), 20, None),
    "hf SGD (lr) exact": (lambda p: hf.SGD(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend="cpu"), 20,
                          "torch SGD momentum fused"),
    # AdamW: the decay multiplies x inside the update; the dot product sum(g x) for the lr (+8) is its own pass
    "torch AdamW fused": (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True), 28, None),
    "hf AdamW plain (no tower)": (lambda p: hf.AdamW(p, lr=1e-3, weight_decay=1e-2, backend="cpu"), 28,
                                  "torch AdamW fused"),
    "hf AdamW (lr) exact": (lambda p: hf.AdamW(p, lr=1e-3, weight_decay=1e-2, learn=("lr",), hyper=hf.SGD(lr=1e-8),
                                               backend="cpu"), 48, "torch AdamW fused"),
    "hf AdamW (lr) one-pass": (lambda p: hf.AdamW(p, lr=1e-3, weight_decay=1e-2, learn=("lr",),
                                                  hyper=hf.SGD(lr=1e-8), backend="cpu", one_pass=True), 40,
                               "torch AdamW fused"),
    # Lion: torch has none; the baseline is Lion's paper algorithm as torch's foreach ops (x, g, m read; x, m written)
    "foreach Lion": (lambda p: ForeachLion(p, lr=1e-4), 20, None),
    "hf Lion (lr) exact": (lambda p: hf.Lion(p, lr=1e-4, hyper=hf.SGD(lr=1e-10), backend="cpu"), 32,
                           "foreach Lion"),
    "hf Lion (lr) one-pass": (lambda p: hf.Lion(p, lr=1e-4, hyper=hf.SGD(lr=1e-10), backend="cpu", one_pass=True),
                              28, "foreach Lion"),
}


class ForeachLion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023) with torch's multi-tensor (foreach) ops, as a fused-less baseline: the update
    sign(beta1 m + (1 - beta1) g) and m's average, a few passes over x, g, m."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, betas=betas))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            gs = [p.grad for p in ps]
            ms = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in ps]
            b1, b2 = group["betas"]
            c = torch._foreach_mul(ms, b1)
            torch._foreach_add_(c, gs, alpha=1 - b1)
            torch._foreach_sign_(c)
            torch._foreach_add_(ps, c, alpha=-group["lr"])
            torch._foreach_mul_(ms, b2)
            torch._foreach_add_(ms, gs, alpha=1 - b2)


# the configurations in groups that are run (and allocated) together: bench/make_results.py's sections
GROUPS = {"step": ["torch Adam fused", "hf Adam (lr, betas) exact", "hf Adam (lr) exact", "hf Adam (lr) one-pass",
                   "hf Adam (lr, betas) one-pass", "hf Adam plain (no tower)", "torch SGD momentum fused",
                   "hf SGD (lr) exact"],
          "adamw_lion": ["torch AdamW fused", "hf AdamW plain (no tower)", "hf AdamW (lr) exact",
                         "hf AdamW (lr) one-pass", "foreach Lion",
                         "hf Lion (lr) exact", "hf Lion (lr) one-pass"]}


# bytes per parameter each configuration must read: (read-only passes, the update pass); for the baselines the
# update's reads
READS = {
    "torch Adam fused": (0, 16),
    "hf Adam (lr, betas) exact": (16, 16),      # pass A: g, m, v, g_prev; update: x, g, m, v
    "hf Adam (lr) exact": (12, 16),             # pass A: g, m, v
    "hf Adam (lr) one-pass": (4, 16),           # the non-finite read of g; update (+ sums from the old m, v)
    "hf Adam (lr, betas) one-pass": (4, 20),    # ... the update also reads g_prev for the sums
    "hf Adam plain (no tower)": (4, 16),
    "torch SGD momentum fused": (0, 12),
    "hf SGD (lr) exact": (8, 8),                # pass A: g, g_prev; update: x, g
    "torch AdamW fused": (0, 16),
    "hf AdamW plain (no tower)": (4, 16),       # the non-finite read of g; the update (the decay in it)
    "hf AdamW (lr) exact": (20, 16),            # pass A: g, m, v and the dot g, x; the update x, g, m, v
    "hf AdamW (lr) one-pass": (12, 16),         # the non-finite read of g and the dot g, x; the update
    "foreach Lion": (0, 12),                    # x, g, m (what any Lion reads)
    "hf Lion (lr) exact": (8, 12),              # pass A: g, prev_sign; update: x, g, m
    "hf Lion (lr) one-pass": (4, 16),           # the non-finite read of g; update: x, g, m, prev_sign
}

# the targets (ratio to the baseline, measured at 16M and 64M elements)
TARGETS = {"hf Adam (lr, betas) exact": 1.8, "hf Adam (lr) exact": 1.5, "hf Adam (lr) one-pass": 1.2,
           "hf SGD (lr) exact": 1.4}


def probes(n: int):
    """Read-only kernels over n-element float32 tensors: name -> (callable, bytes read per element). Besides
    torch's reductions, hyperfused's own read-only passes (bench_cpu_ops.READ_ONLY: pass A over 3 and 4 streams,
    as in exact mode, and the non-finite count): the floor takes the fastest of them, so it never assumes reads
    slower than this machine has shown."""
    from hyperfused import ops
    g = torch.Generator().manual_seed(1)
    arrays = [torch.randn(n, generator=g).abs() for _ in range(5)]
    a, b = arrays[0], arrays[1]
    out = {"torch.sum": (lambda: a.sum(), 4), "torch.dot": (lambda: torch.dot(a, b), 8)}
    if ops.extension_available():
        import bench_cpu_ops
        calls = bench_cpu_ops.cases()
        out.update({name: (calls[name](arrays), nbytes) for name, nbytes in bench_cpu_ops.READ_ONLY.items()})
    return out


def parse_n(text: str) -> int:
    text = text.upper()
    mult = {"K": 10 ** 3, "M": 2 ** 20}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * mult)


def make_params(n: int, count: int = 8):
    """8 parameters totalling n elements, each with two gradient tensors used on alternate steps: as in
    training, where backward makes a new gradient tensor every step (a previous gradient the optimizer keeps
    then lives in other memory than the current one)."""
    weights = [1 + (i % 3) for i in range(count)]         # uneven sizes
    sizes = [n * w // sum(weights) for w in weights]
    sizes[-1] += n - sum(sizes)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in sizes]
    grads = [(torch.randn(p.shape, generator=g) * 1e-3, torch.randn(p.shape, generator=g) * 1e-3) for p in params]
    return params, grads


def set_grads(params, grads, step: int) -> None:
    for p, pair in zip(params, grads):
        p.grad = pair[step % 2]


def run(n: int, reps: int, warmup: int, names):
    opts = {}
    for name in names:
        build = CONFIGS[name][0]
        params, grads = make_params(n)
        opts[name] = (build(params), params, grads)
    probe = probes(n)
    times = {name: [] for name in list(names) + list(probe)}
    for i in range(warmup):
        for name in names:
            opt, params, grads = opts[name]
            set_grads(params, grads, i)
            opt.step()
        for f, _ in probe.values():
            f()
    for i in range(reps):
        for name in names:
            opt, params, grads = opts[name]
            set_grads(params, grads, warmup + i)
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
        for name, (f, _) in probe.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    read_rate = {name: nbytes * n / statistics.median(times[name]) for name, (_, nbytes) in probe.items()}
    best_read = max(read_rate.values())
    out = {}
    for name in names:
        med = statistics.median(times[name])
        bytes_model, base = CONFIGS[name][1], CONFIGS[name][2]
        out[name] = {"median_ms": 1e3 * med, "gbps": bytes_model * n / med / 1e9, "bytes_per_param": bytes_model,
                     "baseline": base}
    for name in names:
        base = out[name]["baseline"]
        if base in out:
            out[name]["ratio"] = out[name]["median_ms"] / out[base]["median_ms"]
            out[name]["bw_vs_baseline"] = out[name]["gbps"] / out[base]["gbps"]
            ro, upd = READS[name]
            t_base = out[base]["median_ms"] / 1e3
            base_rate = READS[base][1] * n / t_base            # the baseline update's read rate
            floor = (ro * n / best_read + upd * n / base_rate) / t_base
            out[name]["floor"] = floor
            out[name]["bw_ceiling"] = out[name]["bytes_per_param"] / CONFIGS[base][1] / floor
            if name in TARGETS:
                out[name]["target"] = TARGETS[name]
    out["_probes"] = {name: {"median_ms": 1e3 * statistics.median(times[name]), "read_gbps": read_rate[name] / 1e9}
                      for name in probe}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--elements", nargs="+", default=["16M", "64M"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="subset of configurations")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or list(CONFIGS)
    results = {}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.reps} reps (median), round-robin")
    for text in args.elements:
        n = parse_n(text)
        res = run(n, args.reps, args.warmup, names)
        results[text] = res
        print(f"\n{text} float32 elements in 8 tensors")
        print(f"{'configuration':<32} {'B/param':>7} {'median ms':>10} {'GB/s':>7} {'ratio':>6} {'floor':>6} "
              f"{'target':>6} {'BW vs base':>10} {'BW ceiling':>10}")
        for name, r in res.items():
            if name.startswith("_"):
                continue
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
            floor = f"{r['floor']:.2f}x" if "floor" in r else ""
            target = f"{r['target']:.2f}x" if "target" in r else ""
            bw = f"{100 * r['bw_vs_baseline']:.0f}%" if "bw_vs_baseline" in r else ""
            ceil = f"{100 * r['bw_ceiling']:.0f}%" if "bw_ceiling" in r else ""
            print(f"{name:<32} {r['bytes_per_param']:>7} {r['median_ms']:>10.2f} {r['gbps']:>7.2f} {ratio:>6} "
                  f"{floor:>6} {target:>6} {bw:>10} {ceil:>10}")
        for name, r in res["_probes"].items():
            print(f"read-only probe {name:<20} {r['median_ms']:8.2f} ms {r['read_gbps']:6.1f} GB/s read")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "reps": args.reps, "torch": torch.__version__, "results": results},
                      f, indent=1)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
