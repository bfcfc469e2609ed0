"""Phase 1 of the GPU proof: what machine this is. Prints one JSON object (and writes it with --json).

    python bench/gpu/env.py --json OUT/env.json      # also: --arch prints the TORCH_CUDA_ARCH_LIST entry only
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys


def describe() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception as e:                      # noqa: BLE001 - reported, not fatal
        out["triton"] = f"not importable: {e}"
    try:
        from torch.utils.cpp_extension import CUDA_HOME
        out["cuda_home"] = CUDA_HOME
        if CUDA_HOME:
            nvcc = subprocess.run([f"{CUDA_HOME}/bin/nvcc", "--version"], capture_output=True, text=True)
            out["nvcc"] = nvcc.stdout.strip().splitlines()[-1] if nvcc.returncode == 0 else nvcc.stderr.strip()
    except Exception as e:                      # noqa: BLE001
        out["cuda_home"] = f"unknown: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update({"gpu": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                    "multiprocessors": p.multi_processor_count,
                    "l2_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)})
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                              "--format=csv,noheader"], capture_output=True, text=True)
        out["driver"] = smi.stdout.strip() if smi.returncode == 0 else f"nvidia-smi failed: {smi.stderr.strip()}"
    else:
        out["gpu"] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the description here")
    ap.add_argument("--arch", action="store_true", help="print the local GPU's TORCH_CUDA_ARCH_LIST entry (e.g. 9.0)")
    args = ap.parse_args(argv)
    info = describe()
    if args.arch:
        if not info.get("capability"):
            print("no CUDA device: no architecture to build for", file=sys.stderr)
            return 1
        print(info["capability"])
        return 0
    text = json.dumps(info, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
