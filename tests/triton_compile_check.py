"""Compile every Triton kernel launch of a few optimizer steps for a real GPU target (sm_90), without a GPU.

    python tests/triton_compile_check.py          # with whatever Triton is installed; exit 1 on any failure
    python tests/triton_compile_check.py --vector-loads   # the passes' global accesses by vector width (JSON)

The Triton interpreter (how the tests run the kernels without a GPU) never runs Triton's code generator, so a
kernel can pass every interpreted test and still fail to compile on a GPU (seen with Triton 3.6 on an H200). Here a
child process runs steps under the interpreter and records each launch's argument types and compile-time
constants; this process then compiles each distinct launch with triton.compile for sm_90 (front end, LLVM and
ptxas all run; nothing is launched).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

CAPTURE = r'''
import json, torch
import conftest                                   # noqa: F401  (the tests' interpreter fix for Triton 3.6)
import hyperfused as hf
from hyperfused.ops.triton import hyper, tower
seen = {}
orig = hyper._launch
def record(kernel, grid, *args, **kw):
    name = getattr(kernel, "__name__", None) or kernel.fn.__name__
    sig = [["ptr", str(a.dtype)] if isinstance(a, torch.Tensor) else ["val", a] for a in args]
    consts = {k: (str(v) if "triton" in type(v).__module__ else v) for k, v in kw.items()}
    seen.setdefault(json.dumps([name, consts], default=str), [name, sig, consts])
    return orig(kernel, grid, *args, **kw)
hyper._launch = tower._launch = record
towers = [lambda p, o: hf.Adam(p, lr=0.01, hyper=hf.SGD(lr=1e-7), backend="triton", one_pass=o),
          lambda p, o: hf.RMSprop(p, hyper=hf.SGD(lr=1e-7, hyper=hf.SGD(lr=1e-8)), backend="triton", one_pass=o),
          lambda p, o: hf.SGD(p, lr=0.1, momentum=0.9, hyper=hf.Adam(lr=1e-3, hyper=hf.SGD(lr=1e-5)),
                              backend="triton", one_pass=o),
          lambda p, o: hf.SGD(p, lr=0.1, per_tensor=True,
                              hyper=hf.SGD(lr=1e-3, per_tensor=True, hyper=hf.Adagrad(lr=1e-3)), backend="triton",
                              one_pass=o),
          lambda p, o: hf.Adam(p, lr=0.01, backend="triton")]
for dtype in (torch.float32, torch.bfloat16):
    for make in towers:
        for one_pass in (False, True):
            ps = [torch.nn.Parameter(torch.randn(5).to(dtype)), torch.nn.Parameter(torch.randn(3, 2).to(dtype))]
            opt = make(ps, one_pass)
            for _ in range(3):
                for p in ps:
                    p.grad = torch.randn_like(p)
                opt.step()
print(json.dumps(list(seen.values())))
'''

PTR = {"torch.int64": "*i64", "torch.float64": "*fp64", "torch.float32": "*fp32", "torch.int32": "*i32",
       "torch.uint8": "*u8", "torch.bfloat16": "*bf16", "torch.float16": "*fp16", "torch.bool": "*i1"}


def capture() -> list:
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.join(HERE, ".."), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CAPTURE], env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.join(HERE, ".."))
    if out.returncode != 0:
        raise RuntimeError("capturing the launches failed:\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_all(launches) -> list:
    """(kernel name, error or None) for each launch."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hyperfused.ops.triton import hyper, tower
    kernels = {**vars(hyper), **vars(tower)}
    results = []
    for name, sig, consts in launches:
        fn = kernels[name]
        signature = {n: (PTR[v] if kind == "ptr" else ("i64" if isinstance(v, int) else "fp64"))
                     for n, (kind, v) in zip(fn.arg_names, sig)}
        constexprs = {}
        for k, v in consts.items():
            if k in ("num_warps", "num_stages"):
                continue
            if isinstance(v, str) and v in ("fp32", "fp64", "bf16", "fp16"):
                v = {"fp32": tl.float32, "fp64": tl.float64, "bf16": tl.bfloat16, "fp16": tl.float16}[v]
            constexprs[k] = v
            signature[k] = "constexpr"
        try:
            triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": consts.get("num_warps", 4)})
            results.append((name, None))
        except Exception as e:                  # noqa: BLE001 - reported per launch
            results.append((name, f"{type(e).__name__}: {str(e).strip()[-400:]}"))
    return results


def global_accesses(ptx: str) -> dict:
    """Counts of the PTX's global loads and stores by vector width: {"ld.v1": .., "ld.v4": .., "st.v4": ..}."""
    import re
    out: dict = {}
    for m in re.finditer(r"\b(ld|st)\.global(?:\.[a-z0-9:]+)*", ptx):
        width = re.search(r"\.v(\d)", m.group(0))
        key = f"{m.group(1)}.v{width.group(1) if width else 1}"
        out[key] = out.get(key, 0) + 1
    return out


def vector_report() -> list:
    """The hypergradient passes' kernels for sm_90 on 16-byte aligned tensors, Adam learning lr and beta1 (its
    state m, v and the previous gradient): the update reads x, g, m, v (one-pass: and the previous gradient) and
    writes x, m, v and the previous gradient; pass A reads g, m, v and the previous gradient. Float32 and
    bfloat16 parameters, exact and one-pass: [(label, arrays read, arrays written, global accesses by width)]."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hyperfused.ops.triton import hyper
    ptr = {"ptrs": "*i64", "numel_ptr": "*i64", "chunk_tensor_ptr": "*i32", "chunk_start_ptr": "*i64",
           "scal_ptr": "*fp64", "jscal_ptr": "*fp64", "eps_ptr": "*fp64", "ok_ptr": "*u8", "inv_scale_ptr": "*fp64",
           "part_ptr": "*fp64", "n_tensors": "i64"}
    common = dict(KIND=3, LEARN=3, MOMENTUM=0, PREV=2, NS0=True, NS1=True, NS2=True, ALIGNED=True, SCALED=False,
                  BLOCK=1024, CHUNK=65536)
    out = []
    for name, dt in (("float32", tl.float32), ("bfloat16", tl.bfloat16)):
        for fn, label, extra, reads, writes in (
                (hyper._update_kernel, "update", dict(ONE_PASS=False, X_DT=dt), 4, 4),
                (hyper._update_kernel, "update one-pass", dict(ONE_PASS=True, X_DT=dt), 5, 4),
                (hyper._reduce_kernel, "reduce", dict(WITH_JAC=True, G_DT=dt), 4, 0)):
            consts = dict(common, M_DT=tl.float32, **extra)
            sig = {n: ("constexpr" if n in consts else ptr[n]) for n in fn.arg_names}
            k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": 4})
            out.append((f"{label} {name}", reads, writes, global_accesses(k.asm["ptx"])))
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted", file=sys.stderr)
        return 2
    import triton
    if "--vector-loads" in sys.argv[1:]:
        print(json.dumps(vector_report()))
        return 0
    results = compile_all(capture())
    bad = [r for r in results if r[1]]
    for name, err in results:
        print(("FAIL " if err else "ok   ") + name + (f": {err}" if err else ""))
    print(f"triton {triton.__version__}: {len(results) - len(bad)} of {len(results)} launches compile for sm_90")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
