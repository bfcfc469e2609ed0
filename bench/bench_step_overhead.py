"""The step of a small model, where the time goes to dispatch and Python rather than to memory: a few float32
tensors of 1000 elements each, every optimizer stepped round-robin, medians of many steps.

    python bench/bench_step_overhead.py --threads 2 --tensors 8 64 --reps 400

At these sizes torch's fused Adam is a handful of microseconds of arithmetic and the rest is its own dispatch;
the hypergradient optimizers add their passes' set-up (the per-tensor scalar table, the skip decision, the
tower of levels above). Ratios are against torch.optim.Adam(fused=True) measured in the same run. Also counted,
outside the timing: the ops one step dispatches (torch's and hyperfused's), and how many of them are host reads
of CPU tensors (the C++ kernels' scalar table is filled from host numbers; on a GPU no step reads the device).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import hyperfused as hf


def configs():
    """name -> function(params) returning the optimizer."""
    return {
        "torch Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "torch Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "torch SGD momentum fused": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "hf Adam exact": lambda ps: hf.Adam(ps, lr=1e-3),
        "hf Adam one-pass": lambda ps: hf.Adam(ps, lr=1e-3, one_pass=True),
        # (the levels above learn slowly: every step sees the same gradients, whose hypergradient grows with the
        # number of elements; a faster lr there drives level 0's lr up until steps are skipped, which are not the
        # step being measured)
        "hf Adam/SGD exact": lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-9)),
        "hf SGD exact": lambda ps: hf.SGD(ps, lr=1e-3),
        "hf SGD/SGD exact": lambda ps: hf.SGD(ps, lr=1e-3, hyper=hf.SGD(lr=1e-9)),
    }


def _setup(n_tensors: int, numel: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(numel, generator=g)) for _ in range(n_tensors)]
    for p in ps:
        p.grad = torch.randn(numel, generator=g) * 1e-2
    return ps


def _ops_per_step(opt):
    """(ops dispatched by one step, of which host reads of CPU tensors): torch's and hyperfused's ops, as a
    TorchDispatchMode sees them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            Count.reads += str(func) == "aten._local_scalar_dense.default"
            return func(*args, **(kwargs or {}))

    with Count():
        opt.step()
    return Count.n, Count.reads


def round_robin(opts, reps: int) -> dict:
    """name -> median seconds of ``opt.step()`` over ``reps`` steps, the optimizers stepped round-robin (each sees
    the same machine state)."""
    times = {name: [] for name in opts}
    for _ in range(reps):
        for name, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(n_tensors: int, numel: int, reps: int, warmup: int):
    opts = {name: make(_setup(n_tensors, numel, i)) for i, (name, make) in enumerate(configs().items())}
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    counts = {name: _ops_per_step(opt) for name, opt in opts.items()}
    med = round_robin(opts, reps)
    skipped = {name: opt.skipped_steps for name, opt in opts.items() if getattr(opt, "skipped_steps", 0)}
    if skipped:
        raise SystemExit(f"bench_step_overhead: steps were skipped (non-finite or negative hyperparameters), so their "
                         f"times are not those of a step: {skipped} at {n_tensors} tensors")
    base = med["torch Adam fused"]
    return {name: {"median_us": m * 1e6, "ratio": m / base, "ops": counts[name][0], "host_reads": counts[name][1]}
            for name, m in med.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tensors", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--numel", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.numel < 1 or args.reps < 1 or args.warmup < 0 or min(args.tensors) < 1:
        ap.error("--threads, --numel, --reps and --tensors must be positive (--warmup >= 0)")
    torch.set_num_threads(args.threads)
    results = {}
    for n in args.tensors:
        res = results[str(n)] = run(n, args.numel, args.reps, args.warmup)
        print(f"{n} tensors x {args.numel} elements, {args.threads} threads, median of {args.reps} steps")
        for name, r in res.items():
            print(f"  {name:28s} {r['median_us']:9.1f} us  {r['ratio']:5.2f}x torch Adam fused  "
                  f"{r['ops']:5d} ops ({r['host_reads']} host reads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
