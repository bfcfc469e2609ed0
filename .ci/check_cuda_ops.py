"""CI: the CUDA build registered a CUDA kernel for every hyperfused op that has a CPU kernel."""
import sys

import torch

import hyperfused
from hyperfused.ops import _ext

assert _ext.load_extension(), f"hyperfused._C did not load: {_ext.extension_error()}"
assert _ext.cuda_extension_available(), f"hyperfused._C_cuda did not load: {_ext.cuda_extension_error()}"
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("hyperfused::"))
cpu = [n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")]
missing = [n for n in cpu if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
print(f"hyperfused {hyperfused.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
print(f"ops with a CPU kernel: {cpu}")
if missing or not cpu:
    print(f"FAIL: no CUDA kernel for {missing}" if missing else "FAIL: no hyperfused ops with CPU kernels found")
    sys.exit(1)
print("every op with a CPU kernel has a CUDA kernel registered")
