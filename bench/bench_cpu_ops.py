"""The CPU passes one at a time, as torch ops, against torch's fused Adam kernel: nanoseconds per element at
sizes that fit the cache and sizes that do not.

    python bench/bench_cpu_ops.py --threads 2 --elements 256K 1M 16M

One float32 tensor per op (its own arrays, so one op's writes do not feed another), the op called back to back
and the median taken. In cache the passes are bound by arithmetic (the square roots and divisions of the
Jacobians), beyond it by memory: compare the two columns of one op to see which.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hyperfused import ops

from bench_cpu_step import parse_n

# one tensor's scalars: lr, beta1, beta2, raw lr, dsigma1, dsigma2, step, valid, decay (hyperfused.kinds; the
# update's table: column 7 is "write the previous gradient", 0 here; no decoupled decay)
_SCAL = [[1e-3, 0.9, 0.999, 0.0, 0.09, 0.001, 5.0, 0.0, 0.0]]
_SCAL_JAC = [[1e-3, 0.9, 0.999, 0.0, 0.09, 0.001, 4.0, 1.0, 0.0]]


# the read-only ops among the cases: bytes each reads per element (bench_cpu_step's floors use them as probes)
READ_ONLY = {"hf pass A, Adam (lr)": 12, "hf pass A, Adam (lr, betas)": 16, "hf non-finite count": 4}


def cases():
    """name -> function(arrays x, g, m, v, g_prev) returning the call to time."""
    H = torch.ops.hyperfused
    scal = torch.tensor(_SCAL, dtype=torch.float64)
    scal_jac = torch.tensor(_SCAL_JAC, dtype=torch.float64)
    ok = torch.tensor(True)

    def torch_adam(a):
        step = torch.tensor(5.0)
        return lambda: torch._fused_adam_([a[0]], [a[1]], [a[2]], [a[3]], [], [step], lr=1e-3, beta1=0.9,
                                          beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    return {
        "torch fused Adam": torch_adam,
        "hf update, Adam": lambda a: lambda: H.hyper_update(3, 0, False, [1e-8, 0.0], [a[0]], [a[1]], [a[2]], [a[3]], [],
                                                             scal, None, ok),
        "hf update + sums, Adam (lr) one-pass": lambda a: lambda: H.hyper_update(
            3, 1, False, [1e-8, 0.0], [a[0]], [a[1]], [a[2]], [a[3]], [], scal, scal_jac, ok),
        "hf pass A, Adam (lr)": lambda a: lambda: H.hyper_reduce(3, 1, False, [1e-8, 0.0], [a[1]], [a[2]], [a[3]], [],
                                                                  scal_jac),
        "hf pass A, Adam (lr, betas)": lambda a: lambda: H.hyper_reduce(3, 7, False, [1e-8, 0.0], [a[1]], [a[2]], [a[3]],
                                                                         [a[4]], scal_jac),
        "hf non-finite count": lambda a: lambda: H.nonfinite_count([a[1]]),
    }


def run(n: int, min_reps: int = 10):
    reps = max(min_reps, int(4e8 // (n * 16)))
    out = {}
    for name, make in cases().items():
        g = torch.Generator().manual_seed(0)
        arrays = [torch.randn(n, generator=g).abs() * 1e-2 for _ in range(5)]
        f = make(arrays)
        for _ in range(3):
            f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts) * 1e9 / n
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--elements", nargs="+", default=["256K", "1M", "16M"])
    args = ap.parse_args(argv)
    if not ops.extension_available():
        sys.exit("the compiled extension is not built: pip install --no-build-isolation -e .")
    torch.set_num_threads(args.threads)
    sizes = [parse_n(t) for t in args.elements]
    res = {t: run(n) for t, n in zip(args.elements, sizes)}
    print(f"torch {torch.__version__}, {args.threads} threads, ns per element (median)")
    print(f"{'op':<40}" + "".join(f"{t:>10}" for t in args.elements))
    for name in cases():
        print(f"{name:<40}" + "".join(f"{res[t][name]:>10.3f}" for t in args.elements))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
