"""Host work of a triton-backend step, without a GPU: the Python around the kernels (the optimizer, the launchers'
argument checks, tables and caches), with every Triton launch replaced by a no-op.

    python bench/bench_triton_host.py --tensors 8 300 1000 --reps 50

On a GPU a step's kernels run asynchronously: what the host spends per step is what this measures (plus the
launches themselves, a few microseconds each, counted here but not timed). It runs on CPU tensors under the
Triton interpreter (TRITON_INTERPRET=1, set here), with tiny tensors (16 elements), so no kernel work is
included; torch's fused Adam on the same CPU tensors is shown for scale (its CPU kernel does the arithmetic, which
at 16 elements is a small part of its time). The outputs of the stubbed kernels are uninitialised: the optimizer's
host path does not read them (the triton backend never reads a device value on the host), so the timed path is
the real one. bench/gpu/bench_gpu.py measures the whole step on a GPU (its `overhead` section).
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")       # before hyperfused defines its kernels

import torch  # noqa: E402

import hyperfused as hf  # noqa: E402
from bench_step_overhead import round_robin  # noqa: E402  (the same timing as the cpu backend's host cost)

CONFIGS = {
    "torch Adam fused (CPU kernel)": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    "hf Adam exact [triton]": lambda ps: hf.Adam(ps, lr=1e-3, backend="triton"),
    "hf Adam/SGD exact [triton]": lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="triton"),
    "hf Adam/SGD one-pass [triton]": lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="triton",
                                                        one_pass=True),
}


def _stub_launches():
    """Replace the Triton launch by a counter; returns the counter."""
    from hyperfused.ops.triton import hyper, tower
    count = {"launches": 0}

    def launch(kernel, grid, *args, **kw):
        count["launches"] += 1
    hyper._launch = launch
    tower._launch = launch
    from hyperfused.ops.triton import agd
    agd._launch = launch
    return count


def run(n_tensors: int, numel: int, reps: int, warmup: int, count) -> dict:
    g = torch.Generator().manual_seed(0)
    opts = {}
    for name, make in CONFIGS.items():
        ps = [torch.nn.Parameter(torch.randn(numel, generator=g)) for _ in range(n_tensors)]
        for p in ps:
            p.grad = torch.randn(numel, generator=g) * 1e-2
        opts[name] = make(ps)
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    launches = {}
    for name, opt in opts.items():
        before = count["launches"]
        opt.step()
        launches[name] = count["launches"] - before
    med = round_robin(opts, reps)
    return {name: {"median_us": m * 1e6, "launches": launches[name]} for name, m in med.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=int, nargs="+", default=[8, 300, 1000])
    ap.add_argument("--numel", type=int, default=16)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if min(args.tensors) < 1 or args.numel < 1 or args.reps < 1 or args.warmup < 1 or args.threads < 1:
        ap.error("--tensors, --numel, --reps, --warmup and --threads must be positive")
    torch.set_num_threads(args.threads)
    count = _stub_launches()
    results = {}
    for n in args.tensors:
        res = results[str(n)] = run(n, args.numel, args.reps, args.warmup, count)
        print(f"{n} tensors x {args.numel} elements, Triton launches stubbed, median of {args.reps} steps")
        for name, r in res.items():
            extra = f"  {r['launches']} launches" if "triton" in name else ""
            print(f"  {name:32s} {r['median_us']:9.1f} us host{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
