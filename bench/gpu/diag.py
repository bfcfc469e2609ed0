"""Isolated GPU cases, each in a process of its own (a fault on the device ends that process's CUDA context, not
the run): optimizer steps at growing sizes per backend, and the C++ ops' refusals on CPU tensors. Prints one line
per case: PASS, FAIL with the error's last line, or CRASH with the signal.

    python bench/gpu/diag.py                 # CUDA_LAUNCH_BLOCKING=1 in the children: errors name their launch
    python bench/gpu/diag.py --dry-run       # CPU tensors, cpu backend, tiny sizes (the harness only)
"""
from __future__ import annotations

import os
import subprocess
import sys

CASE = r'''
import sys, torch, hyperfused as hf
dev, backend, kind, total, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
w = [1 + (i % 3) for i in range(count)]
sizes = [total * x // sum(w) for x in w]
sizes[-1] += total - sum(sizes)
ps = [torch.nn.Parameter(torch.randn(s, device=dev) * 0.1) for s in sizes]
make = {"adam": lambda: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=backend),
        "adam-lr": lambda: hf.Adam(ps, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=backend),
        "adam-plain": lambda: hf.Adam(ps, lr=1e-3, backend=backend),
        "sgd": lambda: hf.SGD(ps, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=backend),
        "adam-onepass": lambda: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=backend, one_pass=True)}[kind]
opt = make()
for t in range(3):
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
if dev == "cuda":
    torch.cuda.synchronize()
assert all(bool(torch.isfinite(p).all()) for p in ps), "non-finite weights"
print("lr", opt.hyperparameters()["lr"])
'''

REFUSAL = r'''
import sys, torch, hyperfused as hf
from hyperfused import ops
from hyperfused.kinds import TABLE_COLS
if sys.argv[1] == "with-cuda-ext":
    print("cuda extension loaded:", ops.cuda_extension_available())
else:
    ops.load_extension()
g = [torch.randn(7)]
scal = torch.zeros(1, TABLE_COLS, dtype=torch.float64)
try:
    torch.ops.hyperfused.hyper_reduce(0, 1, False, [0.0, 0.0], g, [torch.randn(7)], [], [], scal,
                                      inv_scale=torch.ones(1, dtype=torch.float32))
    print("no error raised")
except (RuntimeError, ValueError) as e:
    print("refused:", str(e).splitlines()[0][:100])
'''


ROWS = r'''
import torch, hyperfused as hf
from hyperfused.ops import agd
xs = [torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)]
try:
    agd.normalize_rows_(xs, [torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)])
    print("no error raised")
except (RuntimeError, ValueError) as e:
    print("refused:", str(e).splitlines()[0][:100])
'''


def backtrace(code, args, env):
    """A crashing case again under cuda-gdb (the GPU image's debugger also debugs host code): the C++ stack."""
    import shutil
    gdb = shutil.which("cuda-gdb") or "/usr/local/cuda/bin/cuda-gdb"
    if not os.path.exists(gdb):
        return
    with open("/tmp/hf_case.py", "w") as f:
        f.write(code)
    out = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "/tmp/hf_case.py",
                          *map(str, args)], env=env, capture_output=True, text=True, timeout=180)
    frames = [ln for ln in out.stdout.splitlines() if ln.startswith("#")]
    print("      backtrace:\n      " + "\n      ".join(f[:220] for f in frames[:25]), flush=True)


def run(label, code, args, env):
    try:
        out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, *map(str, args)], env=env,
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        print(f"TIMEOUT {label}", flush=True)
        return
    if out.returncode == 0:
        print(f"PASS  {label}: {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''}", flush=True)
    elif out.returncode < 0:
        tail = [ln for ln in out.stderr.splitlines() if "File" in ln][:3]
        print(f"CRASH {label}: signal {-out.returncode}; {' | '.join(t.strip() for t in tail)}", flush=True)
        try:
            backtrace(code, args, env)
        except Exception as e:              # noqa: BLE001 - a diagnosis, not a result
            print(f"      (no backtrace: {e})", flush=True)
    else:
        err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        print(f"FAIL  {label}: {err[-1][:300] if err else out.returncode}", flush=True)


def main() -> int:
    dry = "--dry-run" in sys.argv
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    run("refusal of a C++ op on CPU tensors (CUDA extension loaded)", REFUSAL, ["with-cuda-ext"], env)
    run("refusal of a C++ op on CPU tensors (CPU extension only)", REFUSAL, ["cpu-only"], env)
    run("refusal of a C++ op on CPU tensors, OMP_NUM_THREADS=1", REFUSAL, ["with-cuda-ext"],
        dict(env, OMP_NUM_THREADS="1"))
    run("normalize_rows_ refusal on CPU tensors", ROWS, [], env)
    if dry:
        run("cpu adam 4096 x 8", CASE, ["cpu", "cpu", "adam", 4096, 8], env)
        return 0
    for total in (2 ** 20, 2 ** 22, 2 ** 24, 2 ** 26, 2 ** 28):
        run(f"cuda adam {total} in 8 tensors", CASE, ["cuda", "cuda", "adam", total, 8], env)
    run("cuda adam 2^24 in 1 tensor", CASE, ["cuda", "cuda", "adam", 2 ** 24, 1], env)
    for kind in ("adam-lr", "adam-plain", "sgd", "adam-onepass"):
        run(f"cuda {kind} 2^24 in 8 tensors", CASE, ["cuda", "cuda", kind, 2 ** 24, 8], env)
    run("triton adam 2^26 in 8 tensors", CASE, ["cuda", "triton", "adam", 2 ** 26, 8], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
